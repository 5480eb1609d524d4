//! Inference with a trained run folder: load once, then class probabilities for image sets or
//! decoded pixels. Used by `eval`, `predict` and training's validation pass.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::config::{DeviceChoice, PrecisionChoice};
use crate::data::augment::Normalize;
use crate::data::device::{norm_tensors, unit_images};
use crate::data::loader::{stream_batches, ImageSet, InputSpec};
use crate::error::{Error, TorchResultExt};
use crate::models::{build, Classifier, ModelSpec};
use crate::ood::OodDetector;
use crate::precision::{to_f32, Precision};
use crate::progress;
use crate::run::ModelCard;

/// Picks the device for a `device` setting: "auto" (CUDA when available), "cpu" or "cuda".
pub fn resolve_device(setting: DeviceChoice) -> Result<Device> {
    match setting {
        DeviceChoice::Auto if cuda_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Auto | DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if cuda_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => {
            Err(Error::usage("device \"cuda\" requested but no CUDA device is available").into())
        }
    }
}

/// Whether a CUDA device can be used, loading libtorch's CUDA half on first call when the machine
/// has an NVIDIA driver.
///
/// The linker drops `libtorch_cuda.so` from the binary (rustc links with `--as-needed` and no
/// symbol of it is referenced), and without it libtorch reports no CUDA device even on a GPU
/// machine. Loading it eagerly would cost every CPU-only start (cold `predict`) a large library,
/// so it is opened here, and only where the driver (`libcuda.so.1`) is present. The library is
/// found through the binary's rpath or LD_LIBRARY_PATH, like `libtorch_cpu.so`.
pub fn cuda_available() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        // SAFETY: dlopen with constant, NUL-terminated names; the handles are kept for the life
        // of the process (never closed), as libtorch's CUDA hooks register themselves globally.
        let has_driver = unsafe {
            !libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_GLOBAL).is_null()
        };
        if has_driver {
            // SAFETY: as above.
            let loaded = unsafe {
                !libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL)
                    .is_null()
            };
            if !loaded {
                // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next
                // dl* call on this thread.
                let why = unsafe {
                    let e = libc::dlerror();
                    if e.is_null() {
                        String::from("unknown reason")
                    } else {
                        std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                    }
                };
                progress::note(&format!(
                    "CUDA driver found but libtorch_cuda.so could not be loaded ({why}); using the CPU"
                ));
            }
        }
        tch::Cuda::is_available()
    })
}

/// Total memory of CUDA device 0 in bytes, read from the driver (`cuDeviceTotalMem_v2` in
/// `libcuda.so.1`, which [`cuda_available`] has loaded); `None` without a driver or a device.
pub fn cuda_total_memory() -> Option<u64> {
    if !cuda_available() {
        return None;
    }
    type Init = unsafe extern "C" fn(u32) -> i32;
    type DeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type TotalMem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    // SAFETY: the driver library is already loaded (RTLD_NOLOAD only finds it); the symbols
    // have the driver API's documented signatures, and every out-pointer is a local.
    unsafe {
        let lib = libc::dlopen(
            c"libcuda.so.1".as_ptr(),
            libc::RTLD_LAZY | libc::RTLD_NOLOAD,
        );
        if lib.is_null() {
            return None;
        }
        let init = libc::dlsym(lib, c"cuInit".as_ptr());
        let get = libc::dlsym(lib, c"cuDeviceGet".as_ptr());
        let total = libc::dlsym(lib, c"cuDeviceTotalMem_v2".as_ptr());
        if init.is_null() || get.is_null() || total.is_null() {
            return None;
        }
        let (init, get, total): (Init, DeviceGet, TotalMem) = (
            std::mem::transmute::<*mut libc::c_void, Init>(init),
            std::mem::transmute::<*mut libc::c_void, DeviceGet>(get),
            std::mem::transmute::<*mut libc::c_void, TotalMem>(total),
        );
        let mut device = 0i32;
        let mut bytes = 0usize;
        (init(0) == 0 && get(&mut device, 0) == 0 && total(&mut bytes, device) == 0)
            .then_some(bytes as u64)
    }
}

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
    ) -> PixelScores {
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
                scores.extend(detector.score_maps(&feats));
            }
            if !tta {
                let logits =
                    tch::no_grad(|| precision.run(device, || self.model.head(&feats, false)));
                out.extend(probabilities(&logits, self.card.temperature));
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
            out.extend(rows(&mean));
        }
        PixelScores { probs: out, ood }
    }
}

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
pub fn probabilities(logits: &Tensor, temperature: f64) -> Vec<Vec<f64>> {
    rows(&(logits.to_kind(Kind::Double) / temperature.max(1e-6)).softmax(-1, Kind::Double))
}

/// The rows of a `[n, k]` tensor as f64 vectors on the CPU.
fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_kind(Kind::Double).to_device(Device::Cpu);
    (0..t.size()[0])
        .map(|i| Vec::<f64>::try_from(t.get(i)).unwrap_or_default())
        .collect()
}

/// Probabilities, labels and mean cross-entropy of `model` over a whole image set.
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
}

/// Runs `model` over every image of `set` (no augmentation, no gradient) in `precision`,
/// scoring each with the out-of-distribution guard `ood` when given (from the same features).
#[allow(clippy::too_many_arguments)]
pub fn score_set(
    model: &dyn Classifier,
    set: Arc<ImageSet>,
    batch_size: usize,
    device: Device,
    temperature: f64,
    what: &str,
    ood: Option<&OodDetector>,
    precision: Precision,
) -> Result<SetScores> {
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
            let scores = detector.score_maps(&feats);
            for (&i, s) in batch.indices.iter().zip(scores) {
                out[i] = s;
            }
        }
        let scaled = &logits / temperature.max(1e-6);
        let loss = scaled.cross_entropy_for_logits(&ys).double_value(&[]);
        loss_sum += loss * batch.indices.len() as f64;
        let raw = logits.to_kind(Kind::Double).to_device(Device::Cpu);
        for (row, (&i, p)) in batch
            .indices
            .iter()
            .zip(probabilities(&logits, temperature))
            .enumerate()
        {
            probs[i] = p;
            logits_out[i] = Vec::<f64>::try_from(raw.get(row as i64)).unwrap_or_default();
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::prepare;

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
}
