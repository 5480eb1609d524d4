//! The run folder: `model.json` (everything predict needs), weights, metrics.csv, the
//! `latest` link. Every write is atomic.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;

use crate::error::{Error, TorchResultExt};
use crate::fsutil::{temp_sibling, write_json_atomic};

/// `model.json`: the architecture, classes and input recipe of a trained model, its decision
/// threshold and temperature, and its validation metrics at the best epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    /// Architecture name.
    pub arch: String,
    /// Class names in output order.
    pub classes: Vec<String>,
    /// Side of the square input in pixels.
    pub image_size: u32,
    /// Input channels (1 or 3).
    pub channels: u32,
    /// Normalisation mean per channel.
    pub mean: Vec<f32>,
    /// Normalisation standard deviation per channel.
    pub std: Vec<f32>,
    /// Dropout of the head (needed to rebuild the network).
    pub dropout: f64,
    /// Two classes: class 1 is predicted when its probability reaches this.
    pub threshold: f64,
    /// Logits are divided by this before the softmax (1 = uncalibrated).
    pub temperature: f64,
    /// Epoch (1-based) whose weights are in model.safetensors.
    pub best_epoch: usize,
    /// Validation metrics at the best epoch.
    pub metrics: EpochMetrics,
    /// xray version that trained it.
    pub xray_version: String,
    /// Two classes: the operating points chosen on the validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_points: Option<ValidationOperatingPoints>,
}

/// Operating points of a two-class model, chosen on the validation split (after temperature
/// scaling); `threshold` of the card is `at_sensitivity`'s when it exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidationOperatingPoints {
    /// The sensitivity the screening point must reach (`eval.target_sensitivity`).
    pub target_sensitivity: f64,
    /// Youden's J optimum on validation.
    pub youden: Option<crate::metrics::operating::OperatingPoint>,
    /// The highest threshold reaching the target sensitivity on validation.
    pub at_sensitivity: Option<crate::metrics::operating::OperatingPoint>,
}

/// One row of metrics.csv.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (with augmentation, dropout on).
    pub train_acc: f64,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_acc: f64,
    /// Validation ROC-AUC (macro one-vs-rest for more than two classes); empty if undefined.
    pub val_auc: Option<f64>,
    /// Wall time of the epoch, training and validation.
    pub seconds: f64,
}

impl ModelCard {
    /// Reads `RUN_DIR/model.json`; a folder without one is a usage error.
    pub fn read(run_dir: &Path) -> Result<ModelCard> {
        let path = run_dir.join("model.json");
        if !run_dir.is_dir() {
            return Err(Error::usage(format!(
                "checkpoint {} does not exist (train a model first, or pass --checkpoint RUN_DIR)",
                run_dir.display()
            ))
            .into());
        }
        if !path.is_file() {
            return Err(Error::usage(format!(
                "{} is not a trained run folder: model.json is missing",
                run_dir.display()
            ))
            .into());
        }
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::usage(format!("{} is not a valid model card: {e}", path.display())).into()
        })
    }

    /// Writes `RUN_DIR/model.json` atomically.
    pub fn write(&self, run_dir: &Path) -> Result<()> {
        write_json_atomic(&run_dir.join("model.json"), self)
    }
}

/// Where epoch `epoch`'s `name` (`last.safetensors`, `optimizer.safetensors`,
/// `model.safetensors`) is written until state.json commits that epoch: the epoch's files and
/// its state cannot be replaced together atomically, so they are staged under these names,
/// state.json is written, and [`settle_pending`] renames them. A run killed between two of those
/// writes resumes from one consistent epoch.
pub fn pending_path(run_dir: &Path, name: &str, epoch: usize) -> PathBuf {
    let stem = name.strip_suffix(".safetensors").unwrap_or(name);
    run_dir.join(format!("{stem}.next-{epoch}.safetensors"))
}

/// Renames the staged files of epoch `committed` (the epoch state.json records) over their
/// final names and deletes those of any other epoch (not committed, or left over).
pub fn settle_pending(run_dir: &Path, committed: usize) -> Result<()> {
    let entries = std::fs::read_dir(run_dir)
        .with_context(|| format!("cannot read run folder {}", run_dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((stem, rest)) = name.split_once(".next-") else {
            continue;
        };
        let Some(Ok(epoch)) = rest
            .strip_suffix(".safetensors")
            .map(|e| e.parse::<usize>())
        else {
            continue;
        };
        if epoch == committed {
            let target = run_dir.join(format!("{stem}.safetensors"));
            std::fs::rename(&path, &target)
                .with_context(|| format!("cannot write {}", target.display()))?;
        } else {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Saves the variables of `vs` to `path` (safetensors) atomically.
pub fn save_weights(vs: &VarStore, path: &Path) -> Result<()> {
    // The temporary name must keep the .safetensors extension: tch picks the format from it.
    let tmp = temp_sibling(path).with_extension("tmp.safetensors");
    vs.save(&tmp)
        .torch()
        .with_context(|| format!("cannot save weights to {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes metrics.csv with every row so far, atomically.
pub fn write_metrics_csv(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    let bytes = w.into_inner().context("metrics.csv")?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// Reads a run's `metrics.csv` (written by [`write_metrics_csv`]).
pub fn read_metrics_csv(path: &Path) -> Result<Vec<EpochMetrics>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    reader
        .deserialize()
        .collect::<Result<Vec<EpochMetrics>, _>>()
        .with_context(|| format!("{} is not a valid metrics file", path.display()))
}

/// Points `<parent of run_dir>/latest` at `run_dir` (a relative symlink, replaced atomically).
pub fn update_latest(run_dir: &Path) -> Result<PathBuf> {
    let parent = run_dir.parent().unwrap_or(Path::new("."));
    let name = run_dir.file_name().context("run folder has no name")?;
    let latest = parent.join("latest");
    let tmp = temp_sibling(&latest);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    std::fs::rename(&tmp, &latest)
        .with_context(|| format!("cannot update {}", latest.display()))?;
    Ok(latest)
}
