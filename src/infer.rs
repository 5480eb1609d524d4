//! A trained run folder loaded once for inference: the [`Predictor`], which `eval`, `predict`,
//! `serve`, `gradcam` and `export` share. Running the network over images is
//! [`crate::compute::scoring`]'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::compute::precision::{to_f32, Precision};
use crate::compute::scoring::{guard_scores, pixels_to_input, probabilities, rows, tta_views};
use crate::config::PrecisionChoice;
use crate::data::augment::Normalize;
use crate::data::loader::InputSpec;
use crate::error::TorchResultExt;
use crate::models::{build, Classifier, ModelSpec};
use crate::ood::OodDetector;
use crate::run::ModelCard;

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
}

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
        })
    }

    /// Runs the forward passes of prediction and evaluation in `choice` on this device (heatmaps
    /// stay float32); the result is in [`Predictor::precision`].
    pub fn set_precision(&mut self, choice: PrecisionChoice) -> Result<()> {
        self.precision = Precision::for_inference(choice, self.device);
        self.precision.prepare_weights(&self.vs)
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
                out.extend(probabilities(&logits, self.card.temperature)?);
                continue;
            }
            let views = tta_views(&xs);
            let t = self.card.temperature.max(1e-6);
            let mean = tch::no_grad(|| {
                let probs: Vec<Tensor> = views
                    .iter()
                    .map(|v| {
                        let v = precision.input(v.shallow_clone());
                        let logits = precision.run(device, || self.model.forward_t(&v, false));
                        (logits.to_kind(Kind::Double) / t).softmax(-1, Kind::Double)
                    })
                    .collect();
                Tensor::stack(&probs, 0).mean_dim(&[0i64][..], false, Kind::Double)
            });
            out.extend(rows(&mean)?);
        }
        Ok(PixelScores { probs: out, ood })
    }
}
