//! Running one trial: an ordinary training run in `OUT/trials/NNNN`, resumed when a killed
//! search left it unfinished, its best-so-far curve shown to the pruner after each epoch.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::space::Point;
use super::{Status, Trial};
use crate::config::{Config, Monitor};
use crate::progress;
use crate::run::{read_metrics_csv, EpochMetrics, RunState};
use crate::train::Hooks;

pub(super) struct TrialValues {
    pub(super) values: Vec<String>,
    pub(super) point: Point,
}

/// Trains one trial in `dir`, resuming it when an earlier worker was killed during it;
/// `keep_going` sees the best-so-far curve after each epoch and may stop the trial (pruned).
pub(super) fn run_trial(
    config: &Config,
    dir: &Path,
    id: usize,
    tv: TrialValues,
    keep_going: &mut dyn FnMut(&[f64]) -> bool,
) -> Trial {
    let started = Instant::now();
    let monitor = config.train.monitor;
    let mut after_epoch =
        |history: &[EpochMetrics]| -> bool { keep_going(&best_so_far(monitor, history)) };
    let hooks = Hooks {
        after_epoch: Some(&mut after_epoch),
        update_latest: false,
    };
    let earlier = earlier_seconds(dir);
    progress::set_quiet(true);
    let result = if earlier.is_some() {
        crate::train::resume_with(dir, hooks)
    } else {
        let _ = std::fs::remove_dir_all(dir);
        crate::train::train_with(config, Some(dir), hooks)
    };
    progress::set_quiet(false);
    let seconds = started.elapsed().as_secs_f64() + earlier.unwrap_or(0.0);
    match result {
        Ok(o) => Trial {
            id,
            status: if o.stopped_by_hook {
                Status::Pruned
            } else {
                Status::Complete
            },
            value: o.best.monitored(monitor),
            best_epoch: o.best.epoch,
            epochs: o.history.len(),
            seconds,
            values: tv.values,
            point: tv.point,
            curve: best_so_far(monitor, &o.history),
        },
        Err(e) => {
            eprintln!("trial {id} failed: {e:#}");
            Trial {
                id,
                status: Status::Failed,
                value: None,
                best_epoch: 0,
                epochs: 0,
                seconds,
                values: tv.values,
                point: tv.point,
                curve: Vec::new(),
            }
        }
    }
}

/// For a trial folder left by a killed search, the seconds of its finished epochs when it can
/// be resumed (state.json present and unfinished); `None` when it must start over.
pub(super) fn earlier_seconds(dir: &Path) -> Option<f64> {
    let state = RunState::read(dir).ok()??;
    if state.finished || state.epochs_done == 0 {
        return None;
    }
    Some(read_history(dir).iter().map(|m| m.seconds).sum())
}

/// A trial folder's epochs so far; none when it has no readable metrics.csv.
pub(super) fn read_history(dir: &Path) -> Vec<EpochMetrics> {
    read_metrics_csv(&dir.join("metrics.csv")).unwrap_or_default()
}

/// The best monitored value (higher is better) after each epoch.
pub(super) fn best_so_far(monitor: Monitor, history: &[EpochMetrics]) -> Vec<f64> {
    let mut best = f64::NEG_INFINITY;
    history
        .iter()
        .map(|m| {
            best = best.max(m.monitored_score(monitor).unwrap_or(f64::NEG_INFINITY));
            best
        })
        .collect()
}

/// Where trial `id` of the search in `out` trains: `OUT/trials/NNNN`.
pub(super) fn trial_dir(out: &Path, id: usize) -> PathBuf {
    out.join("trials").join(format!("{id:04}"))
}

/// The line printed when a trial ends.
pub(super) fn trial_line(trial: &Trial, label: &str, monitor: Monitor) -> String {
    let id = trial.id;
    match (trial.status, trial.value) {
        (Status::Failed, _) => format!("trial {id:>3}  {label}  failed"),
        (status, Some(v)) => format!(
            "trial {id:>3}  {label}  {monitor} {v:.4} (epoch {}/{}, {:.1}s){}",
            trial.best_epoch,
            trial.epochs,
            trial.seconds,
            if status == Status::Pruned {
                "  pruned"
            } else {
                ""
            }
        ),
        (_, None) => format!("trial {id:>3}  {label}"),
    }
}
