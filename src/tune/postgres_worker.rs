//! One worker of a search shared through PostgreSQL ([`super::storage`]): claims trials until
//! none is left, runs them with a heartbeat, and writes the search's files from the database.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::folder::write_results;
use super::prune::Median;
use super::search::{pruner, prunes, Search};
use super::space::Space;
use super::storage;
use super::trial::{earlier_seconds, run_trial, trial_dir, trial_line, TrialValues};
use super::{Trial, TuneOptions, TuneOutcome};
use crate::config::Config;
use crate::progress;

/// This worker's default name: the host's name and the process id.
pub(super) fn default_worker() -> String {
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
pub(super) fn tune_shared(search: Search, url: &str, opts: &TuneOptions) -> Result<TuneOutcome> {
    // Long on purpose: the worker's loop (claim, wait or run, record) with its messages; running a
    // claimed trial is run_claimed.
    let name = opts
        .search
        .clone()
        .unwrap_or_else(|| search.resolved.name.clone());
    let worker = opts.worker.clone().unwrap_or_else(default_worker);
    let mut db = storage::SharedSearch::open(
        url,
        &name,
        &comparable(&search.resolved).to_toml()?,
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
        let claimed = Claimed {
            id,
            values: tv,
            config: &trial_config,
            dir: &dir,
        };
        let Some(trial) = run_claimed(&mut db, claimed, pruner.as_ref(), space)? else {
            say(format!(
                "trial {id}: another worker took it over while it ran; its result is dropped"
            ));
            continue;
        };
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

/// The part of a worker's config that must match the search's for it to join: all but what
/// only says how this machine runs a trial (its device, threads, decoding cache, prefetch and
/// whether images are augmented on the device: the same draws either way) and the budget.
fn comparable(resolved: &Config) -> Config {
    let mut comparable = resolved.clone();
    comparable.tune.trials = 0;
    comparable.tune.time_budget_minutes = 0.0;
    let defaults = Config::default();
    comparable.device = defaults.device;
    comparable.threads = defaults.threads;
    comparable.data.cache = defaults.data.cache;
    comparable.data.prefetch = defaults.data.prefetch;
    comparable.data.on_device = defaults.data.on_device;
    comparable
}

/// A trial this worker has claimed.
struct Claimed<'a> {
    id: usize,
    values: TrialValues,
    config: &'a Config,
    dir: &'a Path,
}

/// Runs a claimed trial under a heartbeat, recording its curve after each epoch (the pruner
/// reads every worker's curves from the database); `None` when another worker took the trial
/// over while it ran, so that its result is dropped.
fn run_claimed(
    db: &mut storage::SharedSearch,
    claimed: Claimed<'_>,
    pruner: Option<&Median>,
    space: &Space,
) -> Result<Option<Trial>> {
    let id = claimed.id;
    let heartbeat = db.heartbeat(id)?;
    let mut failure = None;
    let mut step = |curve: &[f64]| -> Result<bool> {
        if !db.record_curve(id, curve)? {
            return Ok(false);
        }
        if pruner.is_none() {
            return Ok(true);
        }
        Ok(!prunes(pruner, curve, &db.trials(space)?))
    };
    let mut keep_going = |curve: &[f64]| -> bool {
        step(curve).unwrap_or_else(|e| {
            failure = Some(e);
            false
        })
    };
    let trial = run_trial(
        claimed.config,
        claimed.dir,
        id,
        claimed.values,
        &mut keep_going,
    );
    let lost = heartbeat.lost();
    drop(heartbeat);
    if let Some(e) = failure {
        return Err(e.context(format!("trial {id}: the database")));
    }
    Ok((!lost && db.finish(&trial)?).then_some(trial))
}
