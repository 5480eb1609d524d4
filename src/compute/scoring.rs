//! Running a network over images without gradients: the predictor's input tensor, the
//! test-time augmentation views, probabilities, and scoring a whole image set (validation in
//! training, evaluation). Training, evaluation and the [`crate::infer::Predictor`] all use it.

use std::sync::Arc;

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use crate::compute::precision::{to_f32, Precision};
use crate::data::loader::{stream_batches, ImageSet, InputSpec};
use crate::data::on_device::{norm_tensors, unit_images};
use crate::error::TorchResultExt;
use crate::models::Classifier;
use crate::ood::OodDetector;
use crate::progress;

/// HWC pixel buffers at `spec`'s size as the normalised batch `[n, c, s, s]` on `device`,
/// channels-last in memory when `channels_last`: the bytes are moved as they are and normalised
/// there as the training loader's [`crate::data::augment::prepare`] does.
pub fn pixels_to_input(
    pixels: &[&[u8]],
    spec: &InputSpec,
    device: Device,
    channels_last: bool,
) -> Tensor {
    let (n, s, c) = (pixels.len() as i64, spec.size as i64, spec.channels as i64);
    let bytes = Tensor::from_slice(&pixels.concat())
        .view([n, s, s, c])
        .to_device(device);
    let (mean, std) = norm_tensors(&spec.norm, device);
    let x = (unit_images(&bytes) - mean) / std;
    if channels_last {
        x
    } else {
        x.contiguous()
    }
}

/// Test-time augmentation views of a batch `[n, c, s, s]`: the images, their mirror images,
/// and both zoomed in to the central 90% (resized back): four views whose probabilities are
/// averaged.
pub fn tta_views(xs: &Tensor) -> Vec<Tensor> {
    let s = xs.size()[3];
    let crop = ((s as f64) * 0.9).round() as i64;
    let start = (s - crop) / 2;
    let zoomed = xs
        .narrow(2, start, crop)
        .narrow(3, start, crop)
        .upsample_bilinear2d([s, s], false, None, None);
    vec![xs.shallow_clone(), xs.flip([3]), zoomed.flip([3]), zoomed]
}

/// Softmax of `logits / temperature` as rows of f64.
pub fn probabilities(logits: &Tensor, temperature: f64) -> Result<Vec<Vec<f64>>> {
    rows(&(logits.to_kind(Kind::Double) / temperature.max(1e-6)).softmax(-1, Kind::Double))
}

/// Sigmoid of each logit (multi-label) as rows of f64.
pub fn sigmoid_probabilities(logits: &Tensor) -> Result<Vec<Vec<f64>>> {
    rows(&logits.to_kind(Kind::Double).sigmoid())
}

/// Multi-label: `sigmoid(logits / temperature)`, a temperature per label (the last dimension),
/// in `logits`' kind.
pub fn scaled_sigmoid(logits: &Tensor, temperatures: &[f64]) -> Tensor {
    logits
        .divide(&temperature_tensor(
            temperatures,
            logits.kind(),
            logits.device(),
        ))
        .sigmoid()
}

/// The temperatures as a tensor of `kind` on `device` (made before tracing, a traced module
/// keeps it as a constant; made while tracing, its values would be lost: the trace records
/// only the allocation).
pub fn temperature_tensor(temperatures: &[f64], kind: Kind, device: Device) -> Tensor {
    let t: Vec<f64> = temperatures.iter().map(|t| t.max(1e-6)).collect();
    Tensor::from_slice(&t).to_kind(kind).to_device(device)
}

/// Multi-label: [`scaled_sigmoid`] as rows of f64.
pub fn label_probabilities(logits: &Tensor, temperatures: &[f64]) -> Result<Vec<Vec<f64>>> {
    rows(&scaled_sigmoid(&logits.to_kind(Kind::Double), temperatures))
}

/// Binary cross-entropy with logits per label, averaged over the entries whose target is not
/// masked (a target below zero, see [`crate::data::multilabel::MASKED`]), each positive entry
/// of label `l` weighted by `pos_weight[l]` as torch's `BCEWithLogitsLoss(pos_weight=...)`.
/// A batch with every entry masked has loss 0.
pub fn masked_bce(logits: &Tensor, targets: &Tensor, pos_weight: Option<&Tensor>) -> Tensor {
    masked_bce_with(logits, targets, pos_weight, 0.0, None)
}

/// [`masked_bce`] with label smoothing (targets pulled towards 1/2 by `smoothing`/2) and,
/// with `focal_gamma`, the focal loss's factor `(1 - p_t)^gamma` on each entry (Lin et al.
/// 2017, binary form).
pub fn masked_bce_with(
    logits: &Tensor,
    targets: &Tensor,
    pos_weight: Option<&Tensor>,
    smoothing: f64,
    focal_gamma: Option<f64>,
) -> Tensor {
    let mask = targets.ge(0.0).to_kind(Kind::Float);
    let mut y = targets.clamp_min(0.0);
    if smoothing > 0.0 {
        y = y * (1.0 - smoothing) + smoothing / 2.0;
    }
    let log_sig = logits.log_sigmoid();
    let log_not = (-logits).log_sigmoid();
    let not_y = y.neg() + 1.0;
    let log_pt = &y * &log_sig + &not_y * &log_not;
    let mut per = match pos_weight {
        Some(w) => (&y * w * &log_sig + &not_y * &log_not).neg(),
        None => log_pt.neg(),
    };
    if let Some(gamma) = focal_gamma {
        per = (log_pt.exp().neg() + 1.0).pow_tensor_scalar(gamma) * per;
    }
    (per * &mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0)
}

/// The rows of a `[n, k]` tensor as f64 vectors on the CPU; an error (never an empty row) when
/// libtorch cannot convert one.
pub fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    let t = t.to_kind(Kind::Double).to_device(Device::Cpu);
    (0..t.size()[0])
        .map(|i| {
            Vec::<f64>::try_from(t.get(i))
                .torch()
                .context("cannot read a row of scores")
        })
        .collect()
}

/// How close to the guard's threshold, as a share of it, a score computed in reduced precision
/// is checked again in float32. On the Kermany MobileNetV2 (585 images, a Sapphire Rapids CPU)
/// bfloat16 moved scores by 3.9% (median) and at most 11.9% of the threshold against float32,
/// and turned 4 verdicts; with this band none turned, and 9.4% of the images were scored twice.
pub const GUARD_RECHECK_BAND: f64 = 0.25;

/// The out-of-distribution guard's scores for the batch `xs` whose last-stage feature maps are
/// `feats`. Under autocast, the images whose score lies within [`GUARD_RECHECK_BAND`] of the
/// threshold are scored again from float32 features, so that a verdict does not depend on the
/// precision the model runs in (the guard was fitted on float32 features); the few images near
/// the threshold cost a second pass through the stages, the others none.
pub fn guard_scores(
    model: &dyn Classifier,
    detector: &OodDetector,
    xs: &Tensor,
    feats: &Tensor,
    precision: Precision,
) -> Vec<f64> {
    let mut scores = detector.score_maps(feats);
    if precision.autocast.is_none() || !detector.threshold.is_finite() {
        return scores;
    }
    let t = detector.threshold;
    let near: Vec<i64> = scores
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_nan() || (*s - t).abs() <= GUARD_RECHECK_BAND * t.abs())
        .map(|(i, _)| i as i64)
        .collect();
    if near.is_empty() {
        return scores;
    }
    let index = Tensor::from_slice(&near).to_device(xs.device());
    let sub = xs.index_select(0, &index).to_kind(Kind::Float);
    let fp32 = tch::no_grad(|| model.features(&sub, false));
    for (&i, s) in near.iter().zip(detector.score_maps(&fp32)) {
        scores[i as usize] = s;
    }
    scores
}

/// Probabilities, labels and mean cross-entropy of `model` over a whole image set.
#[derive(Default)]
pub struct SetScores {
    /// Probabilities per image, in set order.
    pub probs: Vec<Vec<f64>>,
    /// True labels, in set order.
    pub labels: Vec<usize>,
    /// Mean cross-entropy of the (temperature-scaled) logits.
    pub loss: f64,
    /// Raw logits per image (before temperature), for calibration.
    pub logits: Vec<Vec<f64>>,
    /// Out-of-distribution scores per image, when a guard was given.
    pub ood: Option<Vec<f64>>,
    /// Multi-label: each image's targets (1, 0 or masked); `probs` are then a sigmoid per
    /// label and `loss` the masked binary cross-entropy. Empty for a single-label set.
    pub targets: Vec<Vec<f32>>,
}

/// How [`score_set`] runs: where, in what arithmetic, at what temperature, under what label,
/// with what guard.
#[derive(Clone, Copy)]
pub struct Scoring<'a> {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Where the model is.
    pub device: Device,
    /// The arithmetic of the forward pass.
    pub precision: Precision,
    /// What the logits are divided by before the softmax (1.0: as they are).
    pub temperature: f64,
    /// The progress bar's label ("val", "eval", "calibrate").
    pub what: &'a str,
    /// The out-of-distribution guard, to score each image from the same features.
    pub ood: Option<&'a OodDetector>,
}

/// Runs `model` over every image of `set` (no augmentation, no gradient) as `how` says,
/// scoring each with the out-of-distribution guard when given (from the same features).
pub fn score_set(model: &dyn Classifier, set: Arc<ImageSet>, how: Scoring) -> Result<SetScores> {
    let Scoring {
        batch_size,
        device,
        precision,
        temperature,
        what,
        ood,
    } = how;
    let n = set.len();
    let spec = set.spec().clone();
    let bar = progress::bar(n as u64, what);
    let mut probs = vec![Vec::new(); n];
    let mut logits_out = vec![Vec::new(); n];
    let mut loss_sum = 0.0;
    let mut ood_scores = ood.map(|_| vec![f64::NAN; n]);
    let order: Vec<usize> = (0..n).collect();
    for batch in stream_batches(set.clone(), order, batch_size, None, 0, 2) {
        let batch = batch?;
        let xs = precision.input(batch.images_tensor(&spec, device));
        let ys = batch.labels_tensor(device);
        let (feats, logits) = tch::no_grad(|| {
            precision.run(device, || {
                let feats = model.features(&xs, false);
                let logits = model.head(&feats, false);
                (to_f32(feats), to_f32(logits))
            })
        });
        if let (Some(out), Some(detector)) = (ood_scores.as_mut(), ood) {
            let scores = guard_scores(model, detector, &xs, &feats, precision);
            for (&i, s) in batch.indices.iter().zip(scores) {
                out[i] = s;
            }
        }
        let scaled = &logits / temperature.max(1e-6);
        let (loss, batch_probs) = match set.targets_tensor(&batch.indices, device) {
            Some(t) => (
                masked_bce(&scaled, &t, None).double_value(&[]),
                sigmoid_probabilities(&scaled)?,
            ),
            None => (
                scaled.cross_entropy_for_logits(&ys).double_value(&[]),
                probabilities(&logits, temperature)?,
            ),
        };
        loss_sum += loss * batch.indices.len() as f64;
        for ((&i, p), l) in batch.indices.iter().zip(batch_probs).zip(rows(&logits)?) {
            probs[i] = p;
            logits_out[i] = l;
        }
        bar.inc(batch.indices.len() as u64);
    }
    bar.finish_and_clear();
    Ok(SetScores {
        probs,
        labels: set.labels.clone(),
        loss: if n > 0 { loss_sum / n as f64 } else { f64::NAN },
        logits: logits_out,
        ood: ood_scores,
        targets: target_rows(&set),
    })
}

/// Multi-label: the target rows of every image of `set` (empty for a single-label set).
pub fn target_rows(set: &ImageSet) -> Vec<Vec<f32>> {
    match &set.targets {
        Some(t) => t
            .chunks(set.n_targets().max(1))
            .map(<[f32]>::to_vec)
            .collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::{prepare, Normalize};

    /// The predictor's input equals the training loader's normalisation of the same bytes,
    /// in either layout.
    #[test]
    fn pixels_become_the_loaders_normalised_input() {
        let (s, c) = (5usize, 3usize);
        let images: Vec<Vec<u8>> = (0..2u32)
            .map(|k| {
                (0..s * s * c)
                    .map(|i| ((i as u32 * 37 + k * 101) % 256) as u8)
                    .collect()
            })
            .collect();
        let spec = InputSpec {
            size: s as u32,
            channels: c as u32,
            norm: Normalize {
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
            },
        };
        let expect: Vec<f32> = images
            .iter()
            .flat_map(|p| prepare::<rand_chacha::ChaCha8Rng>(p, s, c, &spec.norm, None))
            .collect();
        let pixels: Vec<&[u8]> = images.iter().map(|p| p.as_slice()).collect();
        for channels_last in [false, true] {
            let x = pixels_to_input(&pixels, &spec, Device::Cpu, channels_last);
            assert_eq!(x.size(), vec![2, c as i64, s as i64, s as i64]);
            assert_eq!(crate::torch_ext::is_channels_last(&x), channels_last);
            let got = Vec::<f32>::try_from(x.contiguous().view([-1])).unwrap();
            let worst = expect
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1e-6, "largest difference {worst}");
        }
    }

    /// The four views are what they claim: the image, its mirror image (columns reversed), the
    /// central 90% zoomed back to full size, and that zoom mirrored.
    #[test]
    fn tta_views_are_the_image_its_mirror_and_the_central_zoom() {
        let s = 20i64;
        // A gradient across the columns (so that mirroring shows), inside a 1-pixel frame of
        // 100 that the 90% crop (18 of 20 pixels) cuts off.
        let mut v = vec![100f32; (s * s) as usize];
        for y in 1..s - 1 {
            for x in 1..s - 1 {
                v[(y * s + x) as usize] = x as f32;
            }
        }
        let xs = Tensor::from_slice(&v).view([1, 1, s, s]);
        let views = tta_views(&xs);
        assert_eq!(views.len(), 4);
        let at = |t: &Tensor, y: i64, x: i64| t.double_value(&[0, 0, y, x]);
        for y in 0..s {
            for x in 0..s {
                assert_eq!(at(&views[0], y, x), at(&xs, y, x));
                assert_eq!(at(&views[1], y, x), at(&xs, y, s - 1 - x), "mirror");
                assert_eq!(
                    at(&views[2], y, x),
                    at(&views[3], y, s - 1 - x),
                    "mirrored zoom"
                );
            }
        }
        // The zoom holds only the inside: no frame value, and the gradient stretched over the
        // whole width, increasing from the first column to the last.
        let zoom = &views[3];
        assert_eq!(zoom.size(), vec![1, 1, s, s]);
        assert!(
            zoom.max().double_value(&[]) < 100.0,
            "the frame is cropped off"
        );
        for y in 0..s {
            for x in 1..s {
                assert!(
                    at(zoom, y, x) >= at(zoom, y, x - 1),
                    "row {y} not increasing at {x}"
                );
            }
        }
        assert!(at(zoom, s / 2, 0) <= 1.5 && at(zoom, s / 2, s - 1) >= s as f64 - 2.5);
    }
}
