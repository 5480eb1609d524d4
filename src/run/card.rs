//! `model.json`: everything `predict` needs to rebuild and use a trained model.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::EpochMetrics;
use crate::error::Error;
use crate::fsutil::write_json_atomic;
use crate::models::Arch;

/// `model.json`: the architecture, classes and input recipe of a trained model, its decision
/// threshold and temperature, and its validation metrics at the best epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    /// Architecture.
    pub arch: Arch,
    /// Class names in output order (multi-label: the labels).
    pub classes: Vec<String>,
    /// "multiclass" (a softmax over the classes; absent in model.json) or "multilabel" (a
    /// sigmoid per label, each with its threshold in `thresholds`).
    #[serde(default, skip_serializing_if = "crate::config::Task::is_multiclass")]
    pub task: crate::config::Task,
    /// Multi-label: each label's decision threshold on its (temperature-scaled) probability,
    /// chosen on the validation split by its rule in `threshold_rules` (0.5 for a label
    /// without validation positives or negatives).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<f64>,
    /// Multi-label: how each threshold was chosen ("youden" or "sensitivity >= T").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threshold_rules: Vec<String>,
    /// Multi-label: each label's logit is divided by its temperature before the sigmoid
    /// (fitted on validation; absent: 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub temperatures: Vec<f64>,
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
    /// The from-scratch CNNs' shape keys as configured (absent: the architecture's defaults).
    #[serde(
        default,
        skip_serializing_if = "crate::models::shape::CnnShape::is_default"
    )]
    pub shape: crate::models::shape::CnnShape,
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
    /// The out-of-distribution guard fitted with the weights (`ood.safetensors`); absent in
    /// run folders made before it existed, and when `ood.enabled = false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood: Option<crate::ood::OodCard>,
    /// Wall time of the training command that finished the run, seconds: data loading,
    /// cached activations, every epoch, calibration and the guard (a resumed run: the last
    /// invocation's). Absent in older run folders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
    /// The arithmetic training ran in: "fp32", "bf16" or "fp16" (absent in older run folders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_precision: Option<String>,
    /// Where `precision = "auto"` chose by timing training steps: the two step times and the
    /// choice (absent when the precision was set, or the CPU has no bfloat16 instructions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_auto: Option<crate::torch_ext::auto_precision::AutoChoice>,
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

impl ModelCard {
    /// Multi-label: each label's threshold, 0.5 for any model.json lacks.
    pub fn label_thresholds(&self) -> Vec<f64> {
        (0..self.classes.len())
            .map(|l| self.thresholds.get(l).copied().unwrap_or(0.5))
            .collect()
    }

    /// Multi-label: each label's temperature, 1 for any model.json lacks.
    pub fn label_temperatures(&self) -> Vec<f64> {
        (0..self.classes.len())
            .map(|l| self.temperatures.get(l).copied().unwrap_or(1.0))
            .collect()
    }

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
