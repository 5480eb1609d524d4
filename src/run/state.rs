//! `state.json`: where an interrupted run stands, so that `xray train --resume` carries on.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::torch_ext::auto_precision::AutoChoice;

/// `state.json`: where an interrupted run stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Best monitored value so far, higher is better (the loss negated).
    pub best_value: Option<f64>,
    /// Validation loss at the best epoch (breaks ties of the monitored value).
    pub best_val_loss: f64,
    /// Epoch (1-based) of the best value.
    pub best_epoch: usize,
    /// Epochs since the last improvement.
    pub epochs_without_improvement: usize,
    /// Whether the run has finished.
    pub finished: bool,
    /// Reduce-on-plateau: the factor applied to the scheduled rate so far.
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// Reduce-on-plateau: epochs since the last improvement or rate drop.
    #[serde(default)]
    pub plateau_wait: usize,
    /// What `precision = "auto"` measured and chose when the run began; a resumed run keeps
    /// that choice instead of measuring again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_precision: Option<AutoChoice>,
}

fn one() -> f64 {
    1.0
}

impl Default for RunState {
    /// The state before the first epoch.
    fn default() -> Self {
        RunState {
            epochs_done: 0,
            best_value: None,
            best_val_loss: f64::INFINITY,
            best_epoch: 0,
            epochs_without_improvement: 0,
            finished: false,
            lr_scale: 1.0,
            plateau_wait: 0,
            auto_precision: None,
        }
    }
}

impl RunState {
    /// The file name inside a run folder.
    pub const FILE: &'static str = "state.json";

    /// Reads `RUN_DIR/state.json`; `None` when the run never finished an epoch (no file).
    pub fn read(run_dir: &Path) -> Result<Option<RunState>> {
        let path = run_dir.join(Self::FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not a valid run state", path.display()))
    }

    /// Writes `RUN_DIR/state.json` atomically: the commit point of an epoch.
    pub fn write(&self, run_dir: &Path) -> Result<()> {
        crate::fsutil::write_json_atomic(&run_dir.join(Self::FILE), self)
    }
}
