//! The search's state: the resolved settings, the space and the base config, and what they
//! decide: the trial count, each trial's proposed values and config, and whether the pruner
//! stops a trial.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::space::{self, render, Point, Space};
use super::trial::TrialValues;
use super::{prune, tpe, Status, Trial, TuneOptions, TuneOutcome};
use crate::config::{set_path, Config, Monitor, Prune, Strategy, TuneConfig};
use crate::error::Error;

/// What every mode of the search needs: the resolved settings, the space, the base config.
pub(super) struct Search {
    pub(super) resolved: Config,
    pub(super) settings: TuneConfig,
    pub(super) space: Space,
    pub(super) planned: usize,
    pub(super) base_table: toml::Table,
    pub(super) out: PathBuf,
    pub(super) monitor: Monitor,
}

impl Search {
    pub(super) fn new(config: &Config, opts: &TuneOptions) -> Result<Search> {
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
    pub(super) fn trial_setup(
        &self,
        rendered: Vec<String>,
    ) -> Result<(TrialValues, Config, String)> {
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
    pub(super) fn propose(&self, id: usize, done: &[Trial], taken: &[Vec<String>]) -> Vec<String> {
        propose(&self.space, &self.settings, id, done, self.monitor, taken)
    }

    pub(super) fn outcome(self, trials: Vec<Trial>, ran: usize, out_of_time: bool) -> TuneOutcome {
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

/// `config` with the command line's overrides of `[tune]` applied, validated.
pub(super) fn with_options(config: &Config, opts: &TuneOptions) -> Result<Config> {
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
pub(super) fn planned_trials(settings: &TuneConfig, space: &Space) -> Result<usize> {
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

/// Every value of the space must make a valid config: an unknown key or a bad value is a
/// usage error before any training.
pub(super) fn check_space(space: &Space, base: &toml::Table) -> Result<()> {
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

/// Trial `id`'s values, rendered: the grid's `id`-th point, a uniform draw, or TPE's
/// suggestion once `startup_trials` trials have finished. A random or TPE point that renders
/// like one in `taken` (claimed by another trial) is drawn again, up to 64 times, then
/// replaced by a uniform draw that is not taken, so that workers sharing a search do not train
/// the same point twice (a space with every point taken repeats one).
pub(super) fn propose(
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
pub(super) fn tpe_history(done: &[Trial], monitor: Monitor) -> Vec<(Point, f64)> {
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

/// Whether `pruner` stops a trial whose best-so-far curve is `curve`, compared with the
/// finished `trials`' curves (false without a pruner).
pub(super) fn prunes(pruner: Option<&prune::Median>, curve: &[f64], trials: &[Trial]) -> bool {
    let Some(p) = pruner else { return false };
    let curves: Vec<&[f64]> = trials.iter().map(|t| t.curve.as_slice()).collect();
    let completed = trials
        .iter()
        .filter(|t| t.status == Status::Complete)
        .count();
    p.should_prune(curve, &curves, completed)
}

/// The median pruner the settings ask for.
pub(super) fn pruner(settings: &TuneConfig) -> Option<prune::Median> {
    (settings.prune == Prune::Median).then(|| prune::Median {
        after_epochs: settings.prune_after_epochs.max(1),
        startup_trials: settings.prune_after_trials,
    })
}
