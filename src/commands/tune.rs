//! `xray tune --config FILE [--set key=value]... [--trials N] [--strategy grid|random|tpe]
//! [--out DIR] [--time-budget MINUTES] [--seed N]
//! [--storage postgres://… [--search NAME] [--worker NAME] [--heartbeat-timeout S] [--report]]`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::config::{Config, Strategy};
use crate::tune::{best_trial, tune, TuneOptions};

/// Arguments of `xray tune`.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// TOML config file with a `[tune]` section (`[tune.space]` lists the searched keys).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config key, e.g. `--set train.epochs=5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Trials to run (default `tune.trials`: the whole grid, or 20).
    #[arg(long)]
    pub trials: Option<usize>,
    /// Search strategy (default `tune.strategy`, "tpe").
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// Search folder; running the same command again carries an interrupted search on
    /// (default tune/<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start no new trial after this many minutes of trials (default `tune.time_budget_minutes`).
    #[arg(long, value_name = "MINUTES")]
    pub time_budget: Option<f64>,
    /// Seed of the sampler (default `tune.seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share the search through PostgreSQL: every worker started with the same config and
    /// URL (on any machine) claims trials from it. Without it the search lives in --out.
    #[arg(long, value_name = "postgres://USER@HOST/DB")]
    pub storage: Option<String>,
    /// The search's name in the database (default the config's `name`).
    #[arg(long, requires = "storage")]
    pub search: Option<String>,
    /// This worker's name in the database (default HOST-PID).
    #[arg(long, requires = "storage")]
    pub worker: Option<String>,
    /// Seconds without a heartbeat after which a running trial's worker counts as dead and
    /// another worker takes the trial over.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 60.0,
        requires = "storage"
    )]
    pub heartbeat_timeout: f64,
    /// Write trials.csv, best.toml and trials.png from the database into --out and print the
    /// table; run no trial.
    #[arg(long, requires = "storage")]
    pub report: bool,
}

impl TuneArgs {
    /// Runs the command.
    pub fn execute(self) -> Result<()> {
        let config = Config::load(&self.config, &self.overrides)?;
        let outcome = tune(
            &config,
            &TuneOptions {
                out: self.out,
                trials: self.trials,
                strategy: self.strategy,
                time_budget_minutes: self.time_budget,
                seed: self.seed,
                storage: self.storage,
                search: self.search,
                worker: self.worker,
                heartbeat_timeout: Duration::from_secs_f64(
                    self.heartbeat_timeout.clamp(1.0, 86_400.0),
                ),
                report_only: self.report,
            },
        )?;
        let monitor = outcome.monitor;
        let mut ranked: Vec<_> = outcome
            .trials
            .iter()
            .filter(|t| t.value.is_some())
            .collect();
        let lower_better = !monitor.higher_is_better();
        ranked.sort_by(|a, b| {
            let (x, y) = (a.score(monitor), b.score(monitor));
            y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal)
        });
        println!(
            "{} trial(s) of {} finished ({} run now){}; best first{}:",
            outcome.trials.len(),
            outcome.planned,
            outcome.ran,
            if outcome.out_of_time {
                ", stopped by the time budget"
            } else {
                ""
            },
            if lower_better {
                ", lower is better"
            } else {
                ""
            }
        );
        let shown: Vec<_> = ranked.iter().take(10).collect();
        let widths: Vec<usize> = outcome
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
        println!(
            "{:>5}  {:>8}  {:>8}  {:>6}  {}",
            "trial",
            monitor.as_str(),
            "status",
            "epochs",
            cells(&outcome.keys)
        );
        for t in shown {
            println!(
                "{:>5}  {:>8.4}  {:>8}  {:>6}  {}",
                t.id,
                t.value.unwrap_or(f64::NAN),
                t.status.as_str(),
                t.epochs,
                cells(&t.values)
            );
        }
        if let Some(best) = best_trial(&outcome.trials, monitor) {
            println!(
                "best: trial {} ({monitor} {:.4}); its config: {}",
                best.id,
                best.value.unwrap_or(f64::NAN),
                outcome.out.join("best.toml").display()
            );
        }
        println!(
            "results: {} and {}",
            outcome.out.join("trials.csv").display(),
            outcome.out.join("trials.png").display()
        );
        Ok(())
    }
}
