//! `xray tune`: hyperparameter search over the keys of a training config.
//!
//! Each trial is an ordinary training run (`OUT/trials/NNNN/`) of the config with the trial's
//! values set; the search keeps `OUT/trials.csv` (one row per finished trial), `OUT/best.toml`
//! (the best trial's complete config, ready for `xray train`) and `OUT/trials.png` current
//! after every trial, so a search killed at any moment loses at most the trial in flight, and
//! running the same command again skips the finished trials and resumes that one from its last
//! epoch. Trials are numbered, and trial `i` draws its values from a generator seeded with
//! `(tune.seed, i)` and the finished trials before it, so a resumed search proposes what an
//! uninterrupted one would have.
//!
//! With `--storage postgres://…` ([`storage`]) the search lives in a database instead, and any
//! number of workers on any number of machines run it together: each claims the next trial
//! atomically, and a dead worker's trial is taken over by another.

mod folder;
pub mod pgtls;
mod postgres_worker;
pub mod prune;
mod search;
pub mod space;
pub mod storage;
mod summary;
pub mod tpe;
mod trial;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::config::{Config, Monitor, Strategy};
use search::Search;
use space::Point;

/// What the command line may override of `[tune]`.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    /// The search folder (default `tune/<name>`).
    pub out: Option<PathBuf>,
    /// Overrides `tune.trials`.
    pub trials: Option<usize>,
    /// Overrides `tune.strategy`.
    pub strategy: Option<Strategy>,
    /// Overrides `tune.time_budget_minutes`.
    pub time_budget_minutes: Option<f64>,
    /// Overrides `tune.seed`.
    pub seed: Option<u64>,
    /// A shared search in PostgreSQL (`postgres://…`) instead of the folder's files.
    pub storage: Option<String>,
    /// The search's name in the database (default the config's `name`).
    pub search: Option<String>,
    /// This worker's name in the database (default `HOST-PID`).
    pub worker: Option<String>,
    /// A running trial whose heartbeat is older than this is taken over by another worker.
    pub heartbeat_timeout: Duration,
    /// Only write trials.csv, best.toml and trials.png from the database; run no trial.
    pub report_only: bool,
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Trained every epoch (or stopped by the config's own early stopping).
    Complete,
    /// Stopped by the pruner.
    Pruned,
    /// Training failed; the error was printed.
    Failed,
}

impl Status {
    /// The word trials.csv uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Pruned => "pruned",
            Status::Failed => "failed",
        }
    }

    /// The status trials.csv names `s`.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "complete" => Some(Status::Complete),
            "pruned" => Some(Status::Pruned),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// One finished trial: a row of trials.csv.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Trial number, from 0.
    pub id: usize,
    /// How it ended.
    pub status: Status,
    /// The monitored metric at its best epoch, as training reports it (`val_loss` lower is
    /// better); `None` for a failed trial.
    pub value: Option<f64>,
    /// Its best epoch.
    pub best_epoch: usize,
    /// Epochs it ran.
    pub epochs: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Its values, as trials.csv shows them, in the space's key order.
    pub values: Vec<String>,
    /// Its point in the space.
    pub point: Point,
    /// Best monitored value so far (higher is better) after each epoch: what the pruner
    /// compares.
    pub curve: Vec<f64>,
}

impl Trial {
    /// The value with higher always better (the loss negated).
    pub fn score(&self, monitor: Monitor) -> Option<f64> {
        self.value.map(|v| monitor.to_score(v))
    }
}

/// A finished (or budget-stopped) search.
#[derive(Debug)]
pub struct TuneOutcome {
    /// The search folder.
    pub out: PathBuf,
    /// The monitored metric (`train.monitor`).
    pub monitor: Monitor,
    /// The space's keys, in trials.csv's order.
    pub keys: Vec<String>,
    /// Every finished trial, by number.
    pub trials: Vec<Trial>,
    /// Trials run by this invocation (the rest were found finished).
    pub ran: usize,
    /// Trials the search was asked for.
    pub planned: usize,
    /// Whether the time budget stopped the search early.
    pub out_of_time: bool,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            out: None,
            trials: None,
            strategy: None,
            time_budget_minutes: None,
            seed: None,
            storage: None,
            search: None,
            worker: None,
            heartbeat_timeout: Duration::from_secs(60),
            report_only: false,
        }
    }
}

/// Runs (or resumes) the search that `config`'s `[tune]` section describes: in its folder's
/// files, or shared through the database that `opts.storage` names.
pub fn tune(config: &Config, opts: &TuneOptions) -> Result<TuneOutcome> {
    let search = Search::new(config, opts)?;
    match &opts.storage {
        Some(url) => postgres_worker::tune_shared(search, url, opts),
        None => folder::tune_in_folder(search),
    }
}

/// The best finished trial: complete ones first, a pruned one only when none completed.
pub fn best_trial(trials: &[Trial], monitor: Monitor) -> Option<&Trial> {
    let pick = |status: Status| {
        trials
            .iter()
            .filter(|t| t.status == status)
            .filter_map(|t| t.score(monitor).map(|s| (s, t)))
            .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.id.cmp(&a.1.id)))
            .map(|(_, t)| t)
    };
    pick(Status::Complete).or_else(|| pick(Status::Pruned))
}
