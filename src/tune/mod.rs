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

pub mod pgtls;
pub mod prune;
pub mod space;
pub mod storage;
pub mod tpe;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{set_path, Config, Monitor, Prune, Strategy, TuneConfig};
use crate::error::Error;
use crate::progress;
use crate::run::{read_metrics_csv, EpochMetrics, RunState};
use crate::train::Hooks;
use space::{render, Point, Space};

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

/// What every mode of the search needs: the resolved settings, the space, the base config.
struct Search {
    resolved: Config,
    settings: TuneConfig,
    space: Space,
    planned: usize,
    base_table: toml::Table,
    out: PathBuf,
    monitor: Monitor,
}

impl Search {
    fn new(config: &Config, opts: &TuneOptions) -> Result<Search> {
        let resolved = with_options(config, opts)?;
        let settings = resolved.tune.clone();
        let space = Space::parse(&settings.space)?;
        let planned = planned_trials(&settings, &space)?;
        let mut base = config.clone();
        base.tune = TuneConfig::default();
        let base_table = toml::Table::try_from(&base).context("the config as TOML")?;
        check_space(&space, &base_table)?;
        let out = opts
            .out
            .clone()
            .unwrap_or_else(|| Path::new("tune").join(&config.name));
        std::fs::create_dir_all(out.join("trials"))
            .with_context(|| format!("cannot create {}", out.display()))?;
        Ok(Search {
            monitor: config.train.monitor,
            resolved,
            settings,
            space,
            planned,
            base_table,
            out,
        })
    }

    /// Trial `id`'s values (rendered as trials.csv shows them), its point read back from them,
    /// its config, and its label for progress lines.
    fn trial_setup(&self, rendered: Vec<String>) -> Result<(TrialValues, Config, String)> {
        let point = self
            .space
            .parse_point(&rendered.iter().map(String::as_str).collect::<Vec<_>>())
            .context("the proposed values are outside the space")?;
        let mut table = self.base_table.clone();
        for (key, value) in self.space.values(&point) {
            set_path(&mut table, &key, value).map_err(Error::usage)?;
        }
        let trial_config = Config::from_table(table)?;
        let label = self
            .space
            .params
            .iter()
            .zip(&rendered)
            .map(|(p, v)| format!("{}={v}", p.key))
            .collect::<Vec<_>>()
            .join(" ");
        Ok((
            TrialValues {
                values: rendered,
                point,
            },
            trial_config,
            label,
        ))
    }

    /// Trial `id`'s rendered values: [`propose`]d, avoiding the points in `taken`.
    fn propose(&self, id: usize, done: &[Trial], taken: &[Vec<String>]) -> Vec<String> {
        propose(&self.space, &self.settings, id, done, self.monitor, taken)
    }

    fn outcome(self, trials: Vec<Trial>, ran: usize, out_of_time: bool) -> TuneOutcome {
        TuneOutcome {
            keys: self.space.params.iter().map(|p| p.key.clone()).collect(),
            out: self.out,
            monitor: self.monitor,
            trials,
            ran,
            planned: self.planned,
            out_of_time,
        }
    }
}

/// Runs (or resumes) the search that `config`'s `[tune]` section describes: in its folder's
/// files, or shared through the database that `opts.storage` names.
pub fn tune(config: &Config, opts: &TuneOptions) -> Result<TuneOutcome> {
    let search = Search::new(config, opts)?;
    match &opts.storage {
        Some(url) => tune_shared(search, url, opts),
        None => tune_in_folder(search),
    }
}

/// The single-machine search, kept in `OUT`'s files.
fn tune_in_folder(search: Search) -> Result<TuneOutcome> {
    let Search {
        ref resolved,
        ref settings,
        ref space,
        planned,
        ref base_table,
        ref out,
        monitor,
    } = search;
    check_same_search(out, resolved)?;
    let mut trials = read_trials(out, space, monitor)?;
    let found = trials.len();

    let pruner = pruner(settings);
    let bar = progress::bar(planned as u64, "trials");
    bar.set_position(trials.iter().filter(|t| t.id < planned).count() as u64);
    let say = |line: String| bar.suspend(|| eprintln!("{line}"));
    if found > 0 {
        say(format!(
            "{}: {found} finished trial(s) found, carrying on",
            out.display()
        ));
    }
    let budget_s = settings.time_budget_minutes * 60.0;
    let mut ran = 0;
    let mut out_of_time = false;
    for id in 0..planned {
        if trials.iter().any(|t| t.id == id) {
            continue;
        }
        let spent: f64 = trials.iter().map(|t| t.seconds).sum();
        if budget_s > 0.0 && spent >= budget_s {
            out_of_time = true;
            say(format!(
                "time budget of {} min spent ({:.0} s of trials): no new trials",
                settings.time_budget_minutes, spent
            ));
            break;
        }
        let earlier: Vec<Trial> = trials.iter().filter(|t| t.id < id).cloned().collect();
        let taken: Vec<Vec<String>> = earlier.iter().map(|t| t.values.clone()).collect();
        let rendered = search.propose(id, &earlier, &taken);
        let (tv, trial_config, label) = search.trial_setup(rendered)?;
        bar.set_message(format!("trial {id}: {label}"));
        let mut keep_going = |curve: &[f64]| !prunes(pruner.as_ref(), curve, &trials);
        let trial = run_trial(
            &trial_config,
            &trial_dir(&search.out, id),
            id,
            tv,
            &mut keep_going,
        );
        say(trial_line(&trial, &label, monitor));
        trials.push(trial);
        trials.sort_by_key(|t| t.id);
        ran += 1;
        bar.inc(1);
        write_results(out, space, monitor, base_table, &trials)?;
    }
    bar.finish_and_clear();
    if ran == 0 {
        // A search that ran nothing new still leaves its files current.
        write_results(out, space, monitor, base_table, &trials)?;
    }
    Ok(search.outcome(trials, ran, out_of_time))
}

/// This worker's default name: the host's name and the process id.
fn default_worker() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer it is given.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "host".to_string()
    };
    format!("{host}-{}", std::process::id())
}

/// One worker of a search shared through PostgreSQL: claims trials until none is left,
/// waiting while other workers' trials run (so that a dead worker's trial is taken over),
/// then writes the search's files from the database into `OUT`.
fn tune_shared(search: Search, url: &str, opts: &TuneOptions) -> Result<TuneOutcome> {
    let name = opts
        .search
        .clone()
        .unwrap_or_else(|| search.resolved.name.clone());
    let worker = opts.worker.clone().unwrap_or_else(default_worker);
    // Workers join the search whose config matches theirs, except for what only says how this
    // machine runs a trial (its device, threads, decoding cache, prefetch and whether images
    // are augmented on the device: the same draws either way) and the budget.
    let mut comparable = search.resolved.clone();
    comparable.tune.trials = 0;
    comparable.tune.time_budget_minutes = 0.0;
    let defaults = Config::default();
    comparable.device = defaults.device;
    comparable.threads = defaults.threads;
    comparable.data.cache = defaults.data.cache;
    comparable.data.prefetch = defaults.data.prefetch;
    comparable.data.on_device = defaults.data.on_device;
    let mut db = storage::SharedSearch::open(
        url,
        &name,
        &comparable.to_toml()?,
        &worker,
        opts.heartbeat_timeout,
    )?;
    let (space, monitor, planned) = (&search.space, search.monitor, search.planned);
    let write =
        |trials: &[Trial]| write_results(&search.out, space, monitor, &search.base_table, trials);
    if opts.report_only {
        let trials = db.trials(space)?;
        write(&trials)?;
        return Ok(search.outcome(trials, 0, false));
    }
    // search.toml tells a later plain `xray tune` in this folder which search it holds.
    crate::fsutil::write_atomic(
        &search.out.join("search.toml"),
        search.resolved.to_toml()?.as_bytes(),
    )?;
    let bar = progress::bar(planned as u64, "trials");
    let say = |line: String| bar.suspend(|| eprintln!("{line}"));
    say(format!(
        "worker {worker}: search `{name}` in {}",
        storage::redact(url)
    ));
    let budget_s = search.settings.time_budget_minutes * 60.0;
    let pruner = pruner(&search.settings);
    // A waiting worker asks again every second at most (one small query): the search ends
    // soon after its last trial, and a dead worker's trial is taken over soon after it expires.
    let poll =
        (opts.heartbeat_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(1));
    let mut ran = 0;
    let mut waiting = false;
    let out_of_time = loop {
        let claim = db.claim(planned, budget_s, space, |id, done, taken| {
            search.propose(id, done, taken)
        })?;
        let (id, params, claims) = match claim {
            storage::Claim::Done { out_of_time } => break out_of_time,
            storage::Claim::Wait => {
                if !waiting {
                    say(format!(
                        "every trial is claimed; waiting for {} running elsewhere (a dead \
                         worker's trial is taken over after {:.0} s without a heartbeat)",
                        db.running()?,
                        opts.heartbeat_timeout.as_secs_f64()
                    ));
                    waiting = true;
                }
                std::thread::sleep(poll);
                continue;
            }
            storage::Claim::Trial { id, params, claims } => (id, params, claims),
        };
        waiting = false;
        let (tv, trial_config, label) = search.trial_setup(params)?;
        let dir = trial_dir(&search.out, id);
        if claims > 1 {
            say(format!(
                "trial {id}: taken over from a worker that stopped ({})",
                if earlier_seconds(&dir).is_some() {
                    "resuming from its last checkpoint"
                } else {
                    "its folder is not here, starting it again"
                }
            ));
        }
        bar.set_message(format!("trial {id}: {label}"));
        let heartbeat = db.heartbeat(id)?;
        let mut failure = None;
        let mut step = |curve: &[f64]| -> Result<bool> {
            if !db.record_curve(id, curve)? {
                return Ok(false);
            }
            if pruner.is_none() {
                return Ok(true);
            }
            Ok(!prunes(pruner.as_ref(), curve, &db.trials(space)?))
        };
        let mut keep_going = |curve: &[f64]| -> bool {
            step(curve).unwrap_or_else(|e| {
                failure = Some(e);
                false
            })
        };
        let trial = run_trial(&trial_config, &dir, id, tv, &mut keep_going);
        let lost = heartbeat.lost();
        drop(heartbeat);
        if let Some(e) = failure {
            return Err(e.context(format!("trial {id}: the database")));
        }
        if lost || !db.finish(&trial)? {
            say(format!(
                "trial {id}: another worker took it over while it ran; its result is dropped"
            ));
            continue;
        }
        say(trial_line(&trial, &label, monitor));
        ran += 1;
        bar.inc(1);
        write(&db.trials(space)?)?;
    };
    bar.finish_and_clear();
    let trials = db.trials(space)?;
    write(&trials)?;
    Ok(search.outcome(trials, ran, out_of_time))
}

/// Where trial `id` of the search in `out` trains: `OUT/trials/NNNN`.
fn trial_dir(out: &Path, id: usize) -> PathBuf {
    out.join("trials").join(format!("{id:04}"))
}

/// Whether `pruner` stops a trial whose best-so-far curve is `curve`, compared with the
/// finished `trials`' curves (false without a pruner).
fn prunes(pruner: Option<&prune::Median>, curve: &[f64], trials: &[Trial]) -> bool {
    let Some(p) = pruner else { return false };
    let curves: Vec<&[f64]> = trials.iter().map(|t| t.curve.as_slice()).collect();
    let completed = trials
        .iter()
        .filter(|t| t.status == Status::Complete)
        .count();
    p.should_prune(curve, &curves, completed)
}

/// The median pruner the settings ask for.
fn pruner(settings: &TuneConfig) -> Option<prune::Median> {
    (settings.prune == Prune::Median).then(|| prune::Median {
        after_epochs: settings.prune_after_epochs.max(1),
        startup_trials: settings.prune_after_trials,
    })
}

/// `config` with the command line's overrides of `[tune]` applied, validated.
fn with_options(config: &Config, opts: &TuneOptions) -> Result<Config> {
    let mut resolved = config.clone();
    let settings = &mut resolved.tune;
    if let Some(s) = opts.strategy {
        settings.strategy = s;
    }
    if let Some(n) = opts.trials {
        settings.trials = n;
    }
    if let Some(m) = opts.time_budget_minutes {
        settings.time_budget_minutes = m;
    }
    if let Some(s) = opts.seed {
        settings.seed = s;
    }
    resolved.validate()?;
    Ok(resolved)
}

/// Trials the search runs: `tune.trials`, at most the grid's size for a grid; 0 means the
/// whole grid, or 20.
fn planned_trials(settings: &TuneConfig, space: &Space) -> Result<usize> {
    Ok(match settings.strategy {
        Strategy::Grid => {
            let size = space.grid_size()?;
            if settings.trials == 0 {
                size
            } else {
                settings.trials.min(size)
            }
        }
        _ if settings.trials == 0 => 20,
        _ => settings.trials,
    })
}

/// The line printed when a trial ends.
fn trial_line(trial: &Trial, label: &str, monitor: Monitor) -> String {
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

/// Trial `id`'s values, rendered: the grid's `id`-th point, a uniform draw, or TPE's
/// suggestion once `startup_trials` trials have finished. A random or TPE point that renders
/// like one in `taken` (claimed by another trial) is drawn again, up to 64 times, then
/// replaced by a uniform draw that is not taken, so that workers sharing a search do not train
/// the same point twice (a space with every point taken repeats one).
fn propose(
    space: &Space,
    settings: &TuneConfig,
    id: usize,
    done: &[Trial],
    monitor: Monitor,
    taken: &[Vec<String>],
) -> Vec<String> {
    let render_point = |point: &Point| -> Vec<String> {
        space.values(point).iter().map(|(_, v)| render(v)).collect()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(
        settings
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(id as u64),
    );
    let history: Vec<(Point, f64)> = if settings.strategy == Strategy::Tpe {
        tpe_history(done, monitor)
    } else {
        Vec::new()
    };
    let draw = |rng: &mut ChaCha8Rng| -> Point {
        match settings.strategy {
            Strategy::Grid => space.grid_point(id),
            Strategy::Random => space.sample_uniform(rng),
            Strategy::Tpe if history.len() < settings.startup_trials.max(2) => {
                space.sample_uniform(rng)
            }
            Strategy::Tpe => {
                let tpe = tpe::Tpe {
                    multivariate: settings.multivariate,
                    ..tpe::Tpe::default()
                };
                tpe.suggest(space, &history, rng)
            }
        }
    };
    let mut values = render_point(&draw(&mut rng));
    if settings.strategy != Strategy::Grid {
        for _ in 0..64 {
            if !taken.contains(&values) {
                return values;
            }
            values = render_point(&draw(&mut rng));
        }
        // TPE sure of one region keeps proposing its taken points: any untaken point then.
        for _ in 0..1024 {
            let uniform = render_point(&space.sample_uniform(&mut rng));
            if !taken.contains(&uniform) {
                return uniform;
            }
        }
    }
    values
}

/// TPE's history: each scored trial's point and score, every pruned trial ranked below every
/// complete one (as Optuna does), keeping their order among themselves.
fn tpe_history(done: &[Trial], monitor: Monitor) -> Vec<(Point, f64)> {
    let scored: Vec<(&Trial, f64)> = done
        .iter()
        .filter_map(|t| t.score(monitor).map(|s| (t, s)))
        .collect();
    let (lo, hi) = scored
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, s)| {
            (lo.min(s), hi.max(s))
        });
    scored
        .into_iter()
        .map(|(t, s)| match t.status {
            Status::Complete => (t.point.clone(), s),
            _ => (t.point.clone(), s - (hi - lo + 1.0)),
        })
        .collect()
}

struct TrialValues {
    values: Vec<String>,
    point: Point,
}

/// Trains one trial in `dir`, resuming it when an earlier worker was killed during it;
/// `keep_going` sees the best-so-far curve after each epoch and may stop the trial (pruned).
fn run_trial(
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
fn earlier_seconds(dir: &Path) -> Option<f64> {
    let state = RunState::read(dir).ok()??;
    if state.finished || state.epochs_done == 0 {
        return None;
    }
    Some(read_history(dir).iter().map(|m| m.seconds).sum())
}

/// A trial folder's epochs so far; none when it has no readable metrics.csv.
fn read_history(dir: &Path) -> Vec<EpochMetrics> {
    read_metrics_csv(&dir.join("metrics.csv")).unwrap_or_default()
}

/// The best monitored value (higher is better) after each epoch.
fn best_so_far(monitor: Monitor, history: &[EpochMetrics]) -> Vec<f64> {
    let mut best = f64::NEG_INFINITY;
    history
        .iter()
        .map(|m| {
            best = best.max(m.monitored_score(monitor).unwrap_or(f64::NEG_INFINITY));
            best
        })
        .collect()
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

/// Every value of the space must make a valid config: an unknown key or a bad value is a
/// usage error before any training.
fn check_space(space: &Space, base: &toml::Table) -> Result<()> {
    for p in &space.params {
        let candidates: Vec<toml::Value> = match &p.domain {
            space::Domain::Choice(values) => values.clone(),
            space::Domain::Range { low, high, .. } => {
                vec![p.domain.value(*low), p.domain.value(*high)]
            }
        };
        for value in candidates {
            let mut table = base.clone();
            let shown = value.to_string();
            set_path(&mut table, &p.key, value)
                .and_then(|()| {
                    Config::from_table(table)
                        .map(drop)
                        .map_err(|e| format!("{e:#}"))
                })
                .map_err(|e| Error::usage(format!("tune.space.{} = {shown}: {e}", p.key)))?;
        }
    }
    Ok(())
}

/// `OUT/search.toml` records the search's config; carrying on needs the same one (the trial
/// count and time budget may change).
fn check_same_search(out: &Path, config: &Config) -> Result<()> {
    let path = out.join("search.toml");
    let comparable = |c: &Config| {
        let mut c = c.clone();
        c.tune.trials = 0;
        c.tune.time_budget_minutes = 0.0;
        c
    };
    if path.is_file() {
        let earlier = Config::load(&path, &[])?;
        if comparable(&earlier) != comparable(config) {
            return Err(Error::usage(format!(
                "{} holds a search with another config or space ({}); give a new --out, or the same config to carry it on",
                out.display(),
                path.display()
            ))
            .into());
        }
    }
    crate::fsutil::write_atomic(&path, config.to_toml()?.as_bytes())
}

fn csv_header(space: &Space, monitor: Monitor) -> Vec<String> {
    let mut header: Vec<String> = [
        "trial",
        "status",
        monitor.as_str(),
        "best_epoch",
        "epochs",
        "seconds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(space.params.iter().map(|p| p.key.clone()));
    header
}

/// Reads `OUT/trials.csv` (absent: no trials yet) with each trial's curve from its metrics.csv.
fn read_trials(out: &Path, space: &Space, monitor: Monitor) -> Result<Vec<Trial>> {
    let path = out.join("trials.csv");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let bad = |why: String| Error::usage(format!("{}: {why}", path.display()));
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let header: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
    if header != csv_header(space, monitor) {
        return Err(bad(format!(
            "its columns ({}) do not match this search's ({})",
            header.join(","),
            csv_header(space, monitor).join(",")
        ))
        .into());
    }
    let mut trials = Vec::new();
    for row in reader.records() {
        let row = row.with_context(|| format!("cannot read {}", path.display()))?;
        let cell = |i: usize| row.get(i).unwrap_or("");
        let number = |i: usize| cell(i).parse::<f64>().ok();
        let id: usize = cell(0)
            .parse()
            .map_err(|_| bad(format!("bad trial number `{}`", cell(0))))?;
        let status =
            Status::parse(cell(1)).ok_or_else(|| bad(format!("bad status `{}`", cell(1))))?;
        let values: Vec<String> = (6..row.len()).map(|i| cell(i).to_string()).collect();
        let point = space
            .parse_point(&values.iter().map(String::as_str).collect::<Vec<_>>())
            .ok_or_else(|| bad(format!("trial {id}'s values are outside the space")))?;
        let dir = trial_dir(out, id);
        trials.push(Trial {
            id,
            status,
            value: number(2),
            best_epoch: number(3).unwrap_or(0.0) as usize,
            epochs: number(4).unwrap_or(0.0) as usize,
            seconds: number(5).unwrap_or(0.0),
            values,
            point,
            curve: best_so_far(monitor, &read_history(&dir)),
        });
    }
    trials.sort_by_key(|t| t.id);
    trials.dedup_by_key(|t| t.id);
    Ok(trials)
}

/// trials.csv, best.toml and trials.png, each written atomically.
fn write_results(
    out: &Path,
    space: &Space,
    monitor: Monitor,
    base: &toml::Table,
    trials: &[Trial],
) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(csv_header(space, monitor))?;
    for t in trials {
        let mut row = vec![
            t.id.to_string(),
            t.status.as_str().to_string(),
            t.value.map_or(String::new(), |v| format!("{v:.6}")),
            t.best_epoch.to_string(),
            t.epochs.to_string(),
            format!("{:.2}", t.seconds),
        ];
        row.extend(t.values.iter().cloned());
        w.write_record(row)?;
    }
    crate::fsutil::write_atomic(&out.join("trials.csv"), &w.into_inner()?)?;

    if let Some(best) = best_trial(trials, monitor) {
        let mut table = base.clone();
        for (key, value) in space.values(&best.point) {
            set_path(&mut table, &key, value).map_err(Error::usage)?;
        }
        let config = Config::from_table(table)?;
        let text = format!(
            "# The best trial of `xray tune` in {}: trial {}, {monitor} {:.4} at epoch {} of {}.\n# Train it: xray train --config {}\n{}",
            out.display(),
            best.id,
            best.value.unwrap_or(f64::NAN),
            best.best_epoch,
            best.epochs,
            out.join("best.toml").display(),
            config.to_toml()?
        );
        crate::fsutil::write_atomic(&out.join("best.toml"), text.as_bytes())?;
    }

    let points: Vec<crate::report::plots::TrialPoint> = trials
        .iter()
        .filter_map(|t| {
            t.value.map(|value| crate::report::plots::TrialPoint {
                trial: t.id,
                value,
                pruned: t.status == Status::Pruned,
            })
        })
        .collect();
    let path = out.join("trials.png");
    let drawn = crate::fsutil::write_with(&path, |tmp| {
        crate::report::plots::trials_png(tmp, monitor.as_str(), monitor.higher_is_better(), &points)
    });
    if let Err(e) = drawn {
        eprintln!("warning: could not draw {}: {e:#}", path.display());
    }
    Ok(())
}
