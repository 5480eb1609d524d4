//! `xray export`: a trained run as a TorchScript module that inference stacks outside xray
//! (PyTorch, LibTorch, Triton) load, plus a JSON sidecar with what they need to use it.
//!
//! The module is traced from the network in evaluation mode: it takes a normalised NCHW float
//! tensor at the run's input size and returns class probabilities with the run's temperature
//! applied, exactly what `xray predict` computes after preprocessing. The sidecar
//! (`FILE.json`) gives the classes, input size, channels, mean and std, the decision threshold
//! and rule, the temperature, and the out-of-distribution guard (its summary, and its class
//! means and precision matrix in `FILE.ood.safetensors`, a second file as they run to megabytes).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use tch::{CModule, Device, Kind, Tensor};

use crate::compute::scoring::temperature_tensor;
use crate::error::{Error, TorchResultExt};
use crate::infer::Predictor;

crate::choice::choice! {
    /// Export formats.
    ExportFormat, "--format" {
        /// A traced TorchScript module (`torch.jit.load`, `torch::jit::load`).
        Torchscript = "torchscript",
    }
}

/// The sidecar `FILE.json` of an exported module.
#[derive(Debug, Clone, Serialize)]
pub struct Sidecar {
    /// Format of the module.
    pub format: ExportFormat,
    /// The run it was exported from.
    pub run: String,
    /// Architecture.
    pub arch: crate::models::Arch,
    /// Class names, in output order.
    pub classes: Vec<String>,
    /// Input side in pixels (square).
    pub input_size: u32,
    /// Input channels (1 grey or 3 RGB).
    pub channels: u32,
    /// Per-channel mean subtracted from pixels scaled to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel std divided by after the mean.
    pub std: Vec<f32>,
    /// What the module expects and returns, in words.
    pub input: &'static str,
    /// What it returns.
    pub output: &'static str,
    /// The temperature already applied inside the module.
    pub temperature: f64,
    /// The two-class decision threshold on the second class's probability.
    pub threshold: f64,
    /// How a class is decided from the probabilities.
    pub decision: &'static str,
    /// "multiclass" or "multilabel" (a sigmoid per label).
    pub task: crate::config::Task,
    /// Multi-label: each label's decision threshold on its probability, in output order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<f64>,
    /// Multi-label: each label's temperature, already applied inside the module.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub temperatures: Vec<f64>,
    /// The out-of-distribution guard, when the run has one.
    pub ood: Option<OodSidecar>,
}

/// The guard's part of the sidecar.
#[derive(Debug, Clone, Serialize)]
pub struct OodSidecar {
    /// Its summary from model.json.
    #[serde(flatten)]
    pub card: crate::ood::OodCard,
    /// The file beside the module with `means` `[k, d]` and `precision` `[d, d]`.
    pub parameters: String,
    /// How the score is computed.
    pub score: &'static str,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The module.
    pub module: PathBuf,
    /// Its sidecar.
    pub sidecar: PathBuf,
    /// The guard's parameters, when the run has a guard.
    pub ood: Option<PathBuf>,
}

/// Exports the run in `run_dir` to `out` (and its sidecar files beside it).
pub fn export(run_dir: &Path, format: ExportFormat, out: &Path) -> Result<Exported> {
    let ExportFormat::Torchscript = format;
    if !run_dir.join("model.safetensors").is_file() {
        return Err(Error::usage(format!(
            "{}: no model.safetensors, so nothing to export (is it a finished run folder?)",
            run_dir.display()
        ))
        .into());
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut predictor = Predictor::load(run_dir, Device::Cpu)?;
    predictor.freeze_weights();
    let module = trace(&predictor)?;
    crate::fsutil::write_with(out, |tmp| {
        module
            .save(tmp)
            .torch()
            .with_context(|| format!("cannot write {}", tmp.display()))
    })?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.pt".into());
    let ood_path = out.with_file_name(format!("{name}.ood.safetensors"));
    let ood = match (&predictor.ood, &predictor.card.ood) {
        (Some(detector), Some(card)) => {
            detector.save(&ood_path)?;
            Some(OodSidecar {
                card: card.clone(),
                parameters: format!("{name}.ood.safetensors"),
                score: "min over classes c of (f - means[c]) precision (f - means[c])^T, f the \
                        last stage's feature maps averaged over space; out of distribution \
                        above threshold",
            })
        }
        _ => None,
    };
    let card = &predictor.card;
    let sidecar = Sidecar {
        format,
        run: crate::run::run_name(run_dir),
        arch: card.arch,
        classes: card.classes.clone(),
        input_size: card.image_size,
        channels: card.channels,
        mean: card.mean.clone(),
        std: card.std.clone(),
        input: "float32 [n, channels, input_size, input_size]: pixels / 255, minus mean, \
                divided by std, per channel (xray fills the square with a centre crop and resizes with a triangle filter)",
        output: if predictor.multilabel() {
            "float32 [n, classes]: a probability per label, sigmoid(logits / temperatures)"
        } else {
            "float32 [n, classes]: probabilities, softmax(logits / temperature)"
        },
        temperature: card.temperature,
        threshold: card.threshold,
        decision: if predictor.multilabel() {
            "multi-label: every label whose probability >= its entry in thresholds (none: no \
             finding)"
        } else {
            "two classes: the second when its probability >= threshold, else the first; \
             more: the most probable"
        },
        task: card.task,
        thresholds: card.thresholds.clone(),
        temperatures: if predictor.multilabel() {
            card.label_temperatures()
        } else {
            Vec::new()
        },
        ood,
    };
    let sidecar_path = out.with_file_name(format!("{name}.json"));
    crate::fsutil::write_json_atomic(&sidecar_path, &sidecar)?;
    Ok(Exported {
        module: out.to_path_buf(),
        sidecar: sidecar_path,
        ood: predictor.ood.as_ref().map(|_| ood_path),
    })
}

/// Traces the network with its temperature and softmax (multi-label: its sigmoid) on a
/// one-image example input.
fn trace(predictor: &Predictor) -> Result<CModule> {
    let c = predictor.card.channels as i64;
    let s = predictor.card.image_size as i64;
    let example = Tensor::zeros([1, c, s, s], (Kind::Float, Device::Cpu));
    let model = predictor.model();
    let t = predictor.card.temperature.max(1e-6);
    let multilabel = predictor.multilabel();
    let temperatures = temperature_tensor(
        &predictor.card.label_temperatures(),
        Kind::Float,
        Device::Cpu,
    );
    let mut forward = |inputs: &[Tensor]| {
        let logits = model.forward_t(&inputs[0], false);
        if multilabel {
            vec![logits.divide(&temperatures).sigmoid()]
        } else {
            vec![(logits / t).softmax(-1, Kind::Float)]
        }
    };
    tch::no_grad(|| CModule::create_by_tracing("xray", "forward", &[example], &mut forward))
        .torch()
        .context("tracing the network")
}
