//! What `xray tune` prints at the end: the finished trials ranked, the best ten as a table, and
//! where the results are.

use std::fmt::Write;

use super::{best_trial, Trial, TuneOutcome};

impl TuneOutcome {
    /// The trials with a value, best first (by the monitored metric, whichever way is better).
    pub fn ranked(&self) -> Vec<&Trial> {
        let monitor = self.monitor;
        let mut ranked: Vec<&Trial> = self.trials.iter().filter(|t| t.value.is_some()).collect();
        ranked.sort_by(|a, b| {
            let (x, y) = (a.score(monitor), b.score(monitor));
            y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal)
        });
        ranked
    }

    /// The summary: a heading, the `top` best trials as a table, the best one's config and the
    /// result files.
    pub fn summary(&self, top: usize) -> String {
        let monitor = self.monitor;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} trial(s) of {} finished ({} run now){}; best first{}:",
            self.trials.len(),
            self.planned,
            self.ran,
            if self.out_of_time {
                ", stopped by the time budget"
            } else {
                ""
            },
            if monitor.higher_is_better() {
                ""
            } else {
                ", lower is better"
            }
        );
        let shown: Vec<&Trial> = self.ranked().into_iter().take(top).collect();
        let widths: Vec<usize> = self
            .keys
            .iter()
            .enumerate()
            .map(|(k, key)| {
                shown
                    .iter()
                    .map(|t| t.values[k].len())
                    .chain([key.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let cells = |values: &[String]| -> String {
            values
                .iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:>w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let _ = writeln!(
            s,
            "{:>5}  {:>8}  {:>8}  {:>6}  {}",
            "trial",
            monitor.as_str(),
            "status",
            "epochs",
            cells(&self.keys)
        );
        for t in shown {
            let _ = writeln!(
                s,
                "{:>5}  {:>8.4}  {:>8}  {:>6}  {}",
                t.id,
                t.value.unwrap_or(f64::NAN),
                t.status.as_str(),
                t.epochs,
                cells(&t.values)
            );
        }
        if let Some(best) = best_trial(&self.trials, monitor) {
            let _ = writeln!(
                s,
                "best: trial {} ({monitor} {:.4}); its config: {}",
                best.id,
                best.value.unwrap_or(f64::NAN),
                self.out.join("best.toml").display()
            );
        }
        let _ = write!(
            s,
            "results: {} and {}",
            self.out.join("trials.csv").display(),
            self.out.join("trials.png").display()
        );
        s
    }
}
