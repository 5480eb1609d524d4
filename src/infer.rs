//! A trained run folder loaded once for inference: the [`Predictor`], which `eval`, `predict`,
//! `serve`, `gradcam` and `export` share. Running the network over images is
//! [`crate::compute::scoring`]'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::compute::precision::{to_f32, Precision};
use crate::compute::scoring::{
    guard_scores, label_probabilities, pixels_to_input, probabilities, rows, scaled_sigmoid,
    tta_views,
};
use crate::config::PrecisionChoice;
use crate::data::augment::Normalize;
use crate::data::loader::InputSpec;
use crate::error::TorchResultExt;
use crate::models::{build, Classifier, ModelSpec};
use crate::ood::OodDetector;
use crate::run::ModelCard;
use crate::torch_ext::auto_precision::{self, AutoChoice};

/// A trained model loaded from its run folder.
pub struct Predictor {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Its model.json.
    pub card: ModelCard,
    /// Where it runs.
    pub device: Device,
    model: Box<dyn Classifier>,
    vs: nn::VarStore,
    /// The out-of-distribution guard, when the run has one.
    pub ood: Option<OodDetector>,
    /// The arithmetic of its forward passes (float32 unless [`Predictor::set_precision`]).
    pub precision: Precision,
    /// What `auto` timed to choose [`Predictor::precision`], where it timed.
    pub auto: Option<AutoChoice>,
}

/// Images per forward pass when `auto` times inference: `predict`'s batch on the CPU.
pub const AUTO_PROBE_BATCH: i64 = 8;

/// Probabilities and out-of-distribution scores of a batch of images.
#[derive(Debug, Clone)]
pub struct PixelScores {
    /// Class probabilities (temperature applied) per image.
    pub probs: Vec<Vec<f64>>,
    /// Each image's out-of-distribution score, when the run has a guard.
    pub ood: Option<Vec<f64>>,
}

impl Predictor {
    /// The network's recipe, from its card.
    fn spec(card: &ModelCard) -> ModelSpec {
        ModelSpec {
            arch: card.arch,
            in_channels: card.channels as i64,
            num_classes: card.classes.len() as i64,
            dropout: card.dropout,
            shape: card.shape.clone(),
            image_size: card.image_size,
            inference: true,
        }
    }

    /// The same architecture, classes and input recipe with freshly initialised weights
    /// (seeded): the reference of the model-randomisation check of heatmaps.
    pub fn with_random_weights(&self, seed: i64) -> Result<Predictor> {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(self.device);
        let model = build(&vs.root(), &Self::spec(&self.card))?;
        Ok(Predictor {
            run_dir: self.run_dir.clone(),
            card: self.card.clone(),
            device: self.device,
            model,
            vs,
            ood: None,
            precision: Precision::FP32,
            auto: None,
        })
    }

    /// Loads `RUN_DIR/model.json` and `RUN_DIR/model.safetensors`.
    pub fn load(run_dir: &Path, device: Device) -> Result<Predictor> {
        let card = ModelCard::read(run_dir)?;
        let mut vs = nn::VarStore::new(device);
        let model = build(&vs.root(), &Self::spec(&card))?;
        let weights = run_dir.join("model.safetensors");
        vs.load(&weights)
            .torch()
            .with_context(|| format!("cannot load weights {}", weights.display()))?;
        // A guard recorded in model.json must be there; a run without one keeps working.
        let ood = match &card.ood {
            Some(_) => Some(OodDetector::load(&run_dir.join(crate::ood::FILE))?),
            None => None,
        };
        Ok(Predictor {
            run_dir: run_dir.to_path_buf(),
            card,
            device,
            model,
            vs,
            ood,
            precision: Precision::FP32,
            auto: None,
        })
    }

    /// Runs the forward passes of prediction and evaluation in `choice` on this device (heatmaps
    /// stay float32); the result is in [`Predictor::precision`]. `auto` on a CPU with bfloat16
    /// instructions times forward passes of [`AUTO_PROBE_BATCH`] images in both precisions
    /// (once per model on this machine; [`crate::torch_ext::auto_precision`]) and keeps bf16
    /// only where it is measurably faster; what it measured is in [`Predictor::auto`] and
    /// [`Predictor::auto_note`].
    pub fn set_precision(&mut self, choice: PrecisionChoice) -> Result<()> {
        // Weights channels-last: both CPU inference precisions use that layout.
        Precision::for_inference(choice, self.device).prepare_weights(&self.vs)?;
        self.auto = None;
        self.precision = if Precision::auto_measures(choice, self.device) {
            let measured = self.time_precisions()?;
            let chosen =
                Precision::for_inference(Precision::measured_choice(&measured), self.device);
            self.auto = Some(measured);
            chosen
        } else {
            Precision::for_inference(choice, self.device)
        };
        Ok(())
    }

    /// Where `auto` timed the precisions: one line of what it chose and why.
    pub fn auto_note(&self) -> Option<String> {
        let auto = self.auto.as_ref()?;
        Some(format!(
            "precision {} ({})",
            self.precision.label(),
            auto.note()
        ))
    }

    /// `auto`'s measurement: forward passes of random images, float32 against bf16.
    fn time_precisions(&self) -> Result<AutoChoice> {
        let card = &self.card;
        let workload = format!(
            "infer|{}|{}|{} px|{} channels|{} classes|batch {AUTO_PROBE_BATCH}",
            card.arch.as_str(),
            serde_json::to_string(&card.shape)?,
            card.image_size,
            card.channels,
            card.classes.len()
        );
        let timed = format!(
            "{} forward pass of {AUTO_PROBE_BATCH} images at {} px",
            card.arch.as_str(),
            card.image_size
        );
        let size = card.image_size as i64;
        let xs = Tensor::randn(
            [AUTO_PROBE_BATCH, card.channels as i64, size, size],
            (Kind::Float, self.device),
        );
        let pass = |choice| {
            let precision = Precision::for_inference(choice, self.device);
            let xs = precision.input(xs.shallow_clone());
            let _ =
                tch::no_grad(|| precision.run(self.device, || self.model.forward_t(&xs, false)));
            Ok(())
        };
        auto_precision::choose(&workload, &timed, || {
            auto_precision::time_alternating(
                || pass(PrecisionChoice::Fp32),
                || pass(PrecisionChoice::Bf16),
            )
        })
    }

    /// The input recipe stored in model.json.
    pub fn input_spec(&self) -> InputSpec {
        InputSpec {
            size: self.card.image_size,
            channels: self.card.channels,
            norm: Normalize {
                mean: self.card.mean.clone(),
                std: self.card.std.clone(),
            },
        }
    }

    /// Stops tracking gradients of the weights (for tracing, which keeps them as constants;
    /// heatmaps need them tracked, so loading leaves them so).
    pub fn freeze_weights(&mut self) {
        self.vs.freeze();
    }

    /// The network.
    pub fn model(&self) -> &dyn Classifier {
        self.model.as_ref()
    }

    /// Whether the model is multi-label (a sigmoid per label, a threshold each).
    pub fn multilabel(&self) -> bool {
        self.card.task == crate::config::Task::Multilabel
    }

    /// Trainable parameters of the network (batch-norm running statistics excluded).
    pub fn parameter_count(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    /// The normalised input batch `[n, c, s, s]` on the model's device for HWC pixel buffers
    /// already at the model's input size: the bytes go to the device as they are and are
    /// normalised there as the training loader does (`(x / 255 - mean) / std`), channels-last in
    /// memory when [`Predictor::precision`] is, contiguous otherwise.
    pub fn input_tensor(&self, pixels: &[&[u8]]) -> Tensor {
        pixels_to_input(
            pixels,
            &self.input_spec(),
            self.device,
            self.precision.channels_last,
        )
    }

    /// Class probabilities (temperature applied) and, with a guard, out-of-distribution scores
    /// for HWC pixel buffers already at the model's input size, in batches of `batch_size`;
    /// with `tta`, probabilities averaged over [`tta_views`] (the score is the plain image's).
    pub fn probabilities_of_pixels(
        &self,
        pixels: &[Arc<Vec<u8>>],
        batch_size: usize,
        tta: bool,
    ) -> Result<PixelScores> {
        let mut out = Vec::with_capacity(pixels.len());
        let mut ood = self.ood.as_ref().map(|_| Vec::with_capacity(pixels.len()));
        for chunk in pixels.chunks(batch_size.max(1)) {
            let chunk: Vec<&[u8]> = chunk.iter().map(|p| p.as_slice()).collect();
            let xs = self.precision.input(self.input_tensor(&chunk));
            let (device, precision) = (self.device, self.precision);
            // One pass through the stages: the head and the guard read the same features.
            let feats =
                tch::no_grad(|| precision.run(device, || to_f32(self.model.features(&xs, false))));
            if let (Some(scores), Some(detector)) = (ood.as_mut(), self.ood.as_ref()) {
                scores.extend(guard_scores(
                    self.model.as_ref(),
                    detector,
                    &xs,
                    &feats,
                    precision,
                ));
            }
            if !tta {
                let logits =
                    tch::no_grad(|| precision.run(device, || self.model.head(&feats, false)));
                out.extend(if self.multilabel() {
                    label_probabilities(&logits, &self.card.label_temperatures())?
                } else {
                    probabilities(&logits, self.card.temperature)?
                });
                continue;
            }
            let views = tta_views(&xs);
            let t = self.card.temperature.max(1e-6);
            let multilabel = self.multilabel();
            let temperatures = self.card.label_temperatures();
            let mean = tch::no_grad(|| {
                let probs: Vec<Tensor> = views
                    .iter()
                    .map(|v| {
                        let v = precision.input(v.shallow_clone());
                        let logits = precision.run(device, || self.model.forward_t(&v, false));
                        let z = logits.to_kind(Kind::Double);
                        if multilabel {
                            scaled_sigmoid(&z, &temperatures)
                        } else {
                            (z / t).softmax(-1, Kind::Double)
                        }
                    })
                    .collect();
                Tensor::stack(&probs, 0).mean_dim(&[0i64][..], false, Kind::Double)
            });
            out.extend(rows(&mean)?);
        }
        Ok(PixelScores { probs: out, ood })
    }
}
