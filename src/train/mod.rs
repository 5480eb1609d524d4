//! `xray train`: the optimisation loop and the run folder it writes.
//!
//! | file | what it owns |
//! |---|---|
//! | `mod.rs` | the entry points ([`train`], [`resume`]), [`Hooks`] and [`TrainOutcome`] |
//! | `trainer.rs` | the `Trainer` (set-up, state) and the loop over phases and epochs |
//! | `phases.rs` | frozen/fine-tuning phases, trainable stages, the activation cache |
//! | `epoch.rs` | one epoch: batches, forward, loss, optimiser step; validation |
//! | `loss.rs` | cross-entropy and focal loss, class weights |
//! | `stopping.rs` | best epoch, reduce-on-plateau, early stopping |
//! | `finish.rs` | best weights, calibration, model card, `latest`, curves.png |
//! | `optim.rs`, `schedule.rs` | the update rules and learning-rate schedules |
//! | `probe.rs` | `precision = "auto"` on a bfloat16 CPU: training steps timed in both |

mod epoch;
mod finish;
pub mod loss;
pub mod optim;
pub mod phases;
mod probe;
pub mod schedule;
pub mod stopping;
mod trainer;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::Device;

use crate::config::Config;
use crate::error::Error;
use crate::progress;
use crate::run::{new_run_dir, read_metrics_csv, settle_pending, EpochMetrics, RunState};
pub use finish::{calibrate, Calibration};
use trainer::Trainer;

/// Called after every epoch with the metrics so far; `false` stops the run.
pub type AfterEpoch<'a> = &'a mut dyn FnMut(&[EpochMetrics]) -> bool;

/// What a caller such as `xray tune` asks of a run beyond its config.
pub struct Hooks<'a> {
    /// Called after every epoch with the metrics so far; `false` stops the run there, which
    /// then finishes as an early stop does (best weights, calibration, model card).
    pub after_epoch: Option<AfterEpoch<'a>>,
    /// Point `checkpoints/latest` at the run when it finishes (default true).
    pub update_latest: bool,
}

impl Default for Hooks<'_> {
    fn default() -> Self {
        Hooks {
            after_epoch: None,
            update_latest: true,
        }
    }
}

/// What a finished training run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Metrics of every epoch run.
    pub history: Vec<EpochMetrics>,
    /// Metrics at the best epoch (whose weights are saved).
    pub best: EpochMetrics,
    /// Whether early stopping ended the run before `train.epochs`.
    pub stopped_early: bool,
    /// Whether [`Hooks::after_epoch`] ended the run.
    pub stopped_by_hook: bool,
    /// The device used.
    pub device: Device,
}

impl TrainOutcome {
    /// Two lines: the best epoch with its validation metrics and the training time, and the
    /// run folder.
    pub fn summary(&self) -> String {
        let b = &self.best;
        format!(
            "best epoch {} of {}{}: val_acc {:.4}, val_auc {}, val_loss {:.4} ({:.1}s on {:?})\nrun folder: {}",
            b.epoch,
            self.history.len(),
            if self.stopped_early {
                " (stopped early)"
            } else {
                ""
            },
            b.val_acc,
            b.val_auc.map_or("n/a".into(), |a| format!("{a:.4}")),
            b.val_loss,
            self.history.iter().map(|m| m.seconds).sum::<f64>(),
            self.device,
            self.run_dir.display()
        )
    }
}

/// Trains a model as `config` says and writes its run folder.
pub fn train(config: &Config, out: Option<&Path>) -> Result<TrainOutcome> {
    train_with(config, out, Hooks::default())
}

/// [`train`] with [`Hooks`].
pub fn train_with(config: &Config, out: Option<&Path>, hooks: Hooks) -> Result<TrainOutcome> {
    let run_dir = new_run_dir(&config.name, out);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    crate::fsutil::write_atomic(&run_dir.join("config.toml"), config.to_toml()?.as_bytes())?;
    Trainer::new(config, run_dir, None)?.run(hooks)
}

/// Continues an interrupted run from its last completed epoch: weights, optimizer state,
/// schedule position, early-stopping counters and metrics.csv carry on; the random streams are
/// seeded per epoch, so they carry on too.
pub fn resume(run_dir: &Path) -> Result<TrainOutcome> {
    resume_with(run_dir, Hooks::default())
}

/// [`resume`] with [`Hooks`].
pub fn resume_with(run_dir: &Path, hooks: Hooks) -> Result<TrainOutcome> {
    let Some(state) = RunState::read(run_dir)? else {
        return Err(Error::usage(format!(
            "{} cannot be resumed: no state.json (it never finished an epoch)",
            run_dir.display()
        ))
        .into());
    };
    let config = Config::load(&run_dir.join("config.toml"), &[])?;
    if state.finished {
        return Err(Error::usage(format!(
            "{} has already finished ({} epochs); nothing to resume",
            run_dir.display(),
            state.epochs_done
        ))
        .into());
    }
    // Killed between staging an epoch and committing it: that epoch never happened. Killed
    // after the commit but before the staged files were renamed: the renames finish here.
    settle_pending(run_dir, state.epochs_done)?;
    let mut history = read_metrics_csv(&run_dir.join("metrics.csv"))?;
    if history.len() == state.epochs_done + 1 {
        history.pop();
    }
    if history.len() != state.epochs_done {
        anyhow::bail!(
            "{}: metrics.csv has {} epochs but state.json says {}",
            run_dir.display(),
            history.len(),
            state.epochs_done
        );
    }
    progress::note(&format!(
        "resuming {} after epoch {}",
        run_dir.display(),
        state.epochs_done
    ));
    let config = &config;
    Trainer::new(config, run_dir.to_path_buf(), Some((state, history)))?.run(hooks)
}
