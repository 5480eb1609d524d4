//! The single-machine search, kept in its folder's files: `trials.csv` (read back to carry a
//! search on), `search.toml`, `best.toml` and `trials.png`.

use std::path::Path;

use anyhow::{Context, Result};

use super::search::{pruner, prunes, Search};
use super::space::Space;
use super::trial::{best_so_far, read_history, run_trial, trial_dir, trial_line};
use super::{best_trial, Status, Trial, TuneOutcome};
use crate::config::{set_path, Config, Monitor};
use crate::error::Error;
use crate::progress;

/// The single-machine search, kept in `OUT`'s files.
pub(super) fn tune_in_folder(search: Search) -> Result<TuneOutcome> {
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

/// `OUT/search.toml` records the search's config; carrying on needs the same one (the trial
/// count and time budget may change).
pub(super) fn check_same_search(out: &Path, config: &Config) -> Result<()> {
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

pub(super) fn csv_header(space: &Space, monitor: Monitor) -> Vec<String> {
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
pub(super) fn read_trials(out: &Path, space: &Space, monitor: Monitor) -> Result<Vec<Trial>> {
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
pub(super) fn write_results(
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
