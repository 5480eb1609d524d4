//! `xray tune --config FILE [--set key=value]... [--trials N] [--strategy grid|random|tpe]
//! [--out DIR] [--time-budget MINUTES] [--seed N]
//! [--storage postgres://… [--search NAME] [--worker NAME] [--heartbeat-timeout S] [--report]]`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::config::{Config, Strategy};
use crate::tune::{tune, TuneOptions};

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
        println!("{}", outcome.summary(10));
        Ok(())
    }
}
