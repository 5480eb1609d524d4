//! The device-side input pipeline (`data.on_device`): the training images are decoded once, in
//! parallel, into one uint8 tensor at the model's input size that lives on the training device;
//! every batch is then gathered, augmented, normalised and handed to the network there, as a
//! few batched tensor ops, without a trip through host memory.
//!
//! The augmentation is the CPU loader's ([`crate::data::augment`]), draw for draw: each image's
//! transform is drawn on the host from the same seeded RNG (`loader::augment_rng`) with the
//! same [`Transform::sample`], and only its parameters travel: the geometry (random resized
//! crop, rotation, shift, zoom, flips) as one 2x3 affine matrix per image, applied by
//! `affine_grid` + `grid_sample` (bilinear, zeros outside, `align_corners = false`: the CPU
//! loader's inverse mapping with bilinear taps, where pixels outside read 0), then brightness,
//! saturation and contrast as per-image factors. With the same seed, a batch equals the CPU
//! loader's to float rounding (tests below).

use anyhow::Result;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::config::AugmentConfig;
use crate::data::augment::{Normalize, Transform};
use crate::data::loader::{augment_rng, to_device_async, ImageSet, InputSpec};
use crate::progress;

/// Images decoded per step while filling the device tensor (bounds the host buffer).
const FILL_CHUNK: usize = 512;

/// Share of the device's memory the decoded set may take for `data.on_device` to default on.
pub const DEFAULT_MEMORY_SHARE: f64 = 0.25;

/// uint8 images `[n, s, s, c]` as float `[n, c, s, s]` in 0..1, channels-last in memory (the
/// bytes viewed, then converted): the tensor form of the loader's first step, shared by this
/// pipeline and the predictor's input ([`crate::compute::scoring::pixels_to_input`]).
pub fn unit_images(bytes: &Tensor) -> Tensor {
    bytes.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0
}

/// `norm`'s mean and std as `[1, c, 1, 1]` tensors on `device`, for `(x - mean) / std`.
pub fn norm_tensors(norm: &Normalize, device: Device) -> (Tensor, Tensor) {
    let per_channel = |v: &[f32]| {
        Tensor::from_slice(v)
            .view([1, v.len() as i64, 1, 1])
            .to_device(device)
    };
    (per_channel(&norm.mean), per_channel(&norm.std))
}

/// A labelled image set decoded into device memory.
pub struct DeviceImages {
    /// uint8 `[n, size, size, channels]` on the device.
    pixels: Tensor,
    /// int64 `[n]` labels on the device.
    labels: Tensor,
    /// The same labels on the host.
    host_labels: Vec<i64>,
    spec: InputSpec,
    device: Device,
    /// `[1, c, 1, 1]` normalisation on the device.
    mean: Tensor,
    std: Tensor,
    /// `[1, 3, 1, 1]` luma weights of the saturation change, on the device (made once: a copy
    /// from ordinary host memory would make the host wait for the GPU every batch).
    grey: Tensor,
}

impl DeviceImages {
    /// Bytes the decoded set takes on the device.
    pub fn bytes_needed(n: usize, spec: &InputSpec) -> u64 {
        n as u64 * (spec.size as u64).pow(2) * spec.channels as u64
    }

    /// Decodes every image of `set` (in parallel, through its cache when it has one) into a
    /// tensor on `device`. A file that cannot be read fails with its name, as in the loader.
    pub fn load(set: &ImageSet, device: Device) -> Result<DeviceImages> {
        let spec = set.spec().clone();
        let (s, c) = (spec.size as i64, spec.channels as i64);
        let n = set.len();
        let per_image = (s * s * c) as usize;
        let pixels = Tensor::empty([n as i64, s, s, c], (Kind::Uint8, device));
        let bar = progress::bar(n as u64, "decode to device");
        for start in (0..n).step_by(FILL_CHUNK) {
            let end = (start + FILL_CHUNK).min(n);
            let mut buf = vec![0u8; per_image * (end - start)];
            buf.par_chunks_mut(per_image)
                .zip((start..end).into_par_iter())
                .try_for_each(|(slot, i)| -> Result<(), crate::error::Error> {
                    slot.copy_from_slice(&set.pixels(i)?);
                    Ok(())
                })?;
            let chunk = Tensor::from_slice(&buf).view([(end - start) as i64, s, s, c]);
            pixels
                .narrow(0, start as i64, (end - start) as i64)
                .copy_(&to_device_async(chunk, device));
            bar.inc((end - start) as u64);
        }
        bar.finish_and_clear();
        let labels: Vec<i64> = set.labels.iter().map(|&l| l as i64).collect();
        let (mean, std) = norm_tensors(&spec.norm, device);
        Ok(DeviceImages {
            pixels,
            labels: Tensor::from_slice(&labels).to_device(device),
            host_labels: labels,
            mean,
            std,
            grey: Tensor::from_slice(&[0.299f32, 0.587, 0.114])
                .view([1, 3, 1, 1])
                .to_device(device),
            spec,
            device,
        })
    }

    /// The label of image `i`.
    pub fn label(&self, i: usize) -> i64 {
        self.host_labels[i]
    }

    /// The images `indices` as a normalised float `[b, c, s, s]` batch and their int64 labels,
    /// both on the device; augmented with `augment` drawn from `seed` (the batch's seed, as the
    /// CPU loader's `build_batch` takes it) when given.
    pub fn batch(
        &self,
        indices: &[usize],
        augment: Option<&AugmentConfig>,
        seed: u64,
    ) -> (Tensor, Tensor) {
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = to_device_async(Tensor::from_slice(&idx), self.device);
        let ys = self.labels.index_select(0, &idx);
        let x = unit_images(&self.pixels.index_select(0, &idx));
        let x = match augment {
            Some(cfg) => self.augment(x, indices, cfg, seed),
            None => x,
        };
        ((x - &self.mean) / &self.std, ys)
    }

    /// The CPU loader's augmentation of a batch of 0..1 images, batched on the device.
    fn augment(&self, x: Tensor, indices: &[usize], cfg: &AugmentConfig, seed: u64) -> Tensor {
        let side = self.spec.size as f32;
        let b = indices.len() as i64;
        let mut thetas = Vec::with_capacity(indices.len() * 6);
        let mut colours = Vec::with_capacity(indices.len() * 3);
        for (pos, &i) in indices.iter().enumerate() {
            let t = Transform::sample(cfg, &mut augment_rng(seed, i, pos), side);
            thetas.extend_from_slice(&t.theta(side));
            colours.extend_from_slice(&t.colour());
        }
        let theta = to_device_async(Tensor::from_slice(&thetas).view([b, 2, 3]), self.device);
        let colours = to_device_async(Tensor::from_slice(&colours).view([b, 3]), self.device);
        let factor = |k: i64| colours.select(1, k).view([b, 1, 1, 1]);
        let grid = Tensor::affine_grid_generator(&theta, x.size(), false);
        // Bilinear (0), zeros outside (0), align_corners false.
        let x = x.grid_sampler(&grid, 0, 0, false) * factor(0);
        let mean_level = x.mean_dim(&[1i64, 2, 3][..], true, Kind::Float);
        let x = if self.spec.channels == 3 {
            let grey = (&x * &self.grey).sum_dim_intlist(1, true, Kind::Float);
            &grey + (x - &grey) * factor(2)
        } else {
            x
        };
        ((x - &mean_level) * factor(1) + &mean_level).clamp(0.0, 1.0)
    }
}

/// Whether the training set goes on the device: `setting` (`data.on_device`) when given; by
/// default on CUDA when the decoded set takes at most [`DEFAULT_MEMORY_SHARE`] of the device's
/// memory, and never on the CPU, where the loader's threads are already the fastest path.
/// Returns the decision and a line saying why.
pub fn use_device_pipeline(
    setting: Option<bool>,
    device: Device,
    bytes: u64,
    device_memory: Option<u64>,
) -> (bool, String) {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let size = format!("{:.2} GiB decoded", gib(bytes));
    match (setting, device.is_cuda(), device_memory) {
        (Some(true), _, _) => (true, format!("data.on_device: on ({size})")),
        (Some(false), _, _) => (false, "data.on_device: off".into()),
        (None, false, _) => (false, String::new()),
        (None, true, None) => (
            false,
            format!(
                "data.on_device: off (the device's memory is unknown; set data.on_device = true \
                 to hold the {size} there)"
            ),
        ),
        (None, true, Some(total)) => {
            let fits = bytes as f64 <= DEFAULT_MEMORY_SHARE * total as f64;
            let verdict = if fits { "on" } else { "off" };
            (
                fits,
                format!(
                    "data.on_device: {verdict} ({size}, {:.0}% of the device's {:.0} GiB; the \
                     default limit is {:.0}%)",
                    100.0 * bytes as f64 / total as f64,
                    gib(total),
                    100.0 * DEFAULT_MEMORY_SHARE
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::Normalize;
    use crate::data::loader::{batch_seed, build_batch};
    use std::path::PathBuf;

    /// A set of `n` RGB PNGs with smooth gradients and a bright disc (so that flips, crops and
    /// rotations all move something), at `size` px.
    fn fixture(dir: &std::path::Path, n: usize, size: u32) -> ImageSet {
        let samples: Vec<(PathBuf, usize)> = (0..n)
            .map(|k| {
                let img = image::RgbImage::from_fn(size, size, |x, y| {
                    let (cx, cy) = (size as f32 * 0.3 + k as f32, size as f32 * 0.6);
                    let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                    let disc = if d < size as f32 / 5.0 { 120 } else { 0 };
                    image::Rgb([
                        (x * 255 / size) as u8 / 2 + disc,
                        (y * 255 / size) as u8 / 2 + disc / 2,
                        ((x + y) * 127 / size) as u8,
                    ])
                });
                let path = dir.join(format!("{k}.png"));
                img.save(&path).unwrap();
                (path, k % 2)
            })
            .collect();
        let spec = InputSpec {
            size,
            channels: 3,
            norm: Normalize {
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
            },
        };
        ImageSet::new(samples, spec, true)
    }

    fn every_augmentation() -> AugmentConfig {
        AugmentConfig {
            hflip: 0.5,
            vflip: 0.5,
            rotation_degrees: 15.0,
            shift: 0.1,
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.3,
            zoom: 0.15,
            crop_scale: [0.5, 1.0],
            crop_ratio: [0.75, 1.333],
        }
    }

    /// The largest absolute difference between the CPU loader's batch and the device
    /// pipeline's (on CPU tensors), over 4 batches of 6.
    fn largest_difference(augment: Option<&AugmentConfig>) -> f64 {
        let dir = tempfile::tempdir().unwrap();
        let set = fixture(dir.path(), 12, 48);
        let on_device = DeviceImages::load(&set, Device::Cpu).unwrap();
        let mut worst = 0f64;
        for b in 0..4 {
            let indices: Vec<usize> = (0..6).map(|k| (k * 5 + b * 3) % 12).collect();
            let seed = batch_seed(7, b);
            let cpu = build_batch(&set, &indices, augment, seed).unwrap();
            let cpu = cpu.images_tensor(set.spec(), Device::Cpu);
            let (xs, ys) = on_device.batch(&indices, augment, seed);
            assert_eq!(xs.size(), cpu.size());
            let labels: Vec<i64> = Vec::try_from(&ys).unwrap();
            assert_eq!(
                labels,
                indices.iter().map(|&i| (i % 2) as i64).collect::<Vec<_>>()
            );
            worst = worst.max((xs - cpu).abs().max().double_value(&[]));
        }
        worst
    }

    /// Without augmentation the two pipelines give the same tensors: the same decoded pixels,
    /// the same arithmetic (to float rounding; no resize happens on the device).
    #[test]
    fn without_augmentation_equals_the_cpu_loader() {
        let worst = largest_difference(None);
        assert!(worst < 1e-5, "largest difference {worst}");
    }

    /// With every augmentation on and the same seeds, the device pipeline draws the same
    /// transforms and applies them as the CPU loader does. Tolerance: 2e-3 in normalised units
    /// (under 0.0005 of the 0..1 range, an eighth of a grey level; 5.3e-4 measured), from
    /// sampling positions that the CPU computes by stepping and grid_sample by multiplying.
    #[test]
    fn with_augmentation_equals_the_cpu_loader_draw_for_draw() {
        let worst = largest_difference(Some(&every_augmentation()));
        assert!(worst < 2e-3, "largest difference {worst}");
    }

    /// Over 20,000 draws, the crop area (|det| of the affine matrix times the zoom squared) and
    /// the rotation angle (from the matrix) follow the configured uniform ranges: each of 10
    /// bins holds 10% +- 1.5%.
    #[test]
    fn drawn_parameters_follow_the_configured_distributions() {
        let cfg = AugmentConfig {
            rotation_degrees: 20.0,
            crop_scale: [0.4, 1.0],
            crop_ratio: [1.0, 1.0],
            ..AugmentConfig::default()
        };
        let draws = 20_000;
        let (mut areas, mut angles) = (vec![0usize; 10], vec![0usize; 10]);
        for k in 0..draws {
            let t = Transform::sample(&cfg, &mut augment_rng(3, k, 0), 224.0);
            let m = t.theta(224.0);
            let area = (m[0] * m[4] - m[1] * m[3]).abs() as f64;
            let angle = (m[1] as f64).atan2(m[0] as f64).to_degrees();
            areas[(((area - 0.4) / 0.6 * 10.0) as usize).min(9)] += 1;
            angles[(((angle + 20.0) / 40.0 * 10.0) as usize).min(9)] += 1;
        }
        for (name, bins) in [("crop area", &areas), ("angle", &angles)] {
            for (b, &count) in bins.iter().enumerate() {
                let share = count as f64 / draws as f64;
                assert!(
                    (share - 0.1).abs() < 0.015,
                    "{name} bin {b}: {share} ({bins:?})"
                );
            }
        }
    }

    #[test]
    fn default_is_on_for_cuda_when_it_fits() {
        let gib = 1u64 << 30;
        let cuda = Device::Cuda(0);
        assert!(use_device_pipeline(None, cuda, gib, Some(80 * gib)).0);
        assert!(!use_device_pipeline(None, cuda, 30 * gib, Some(80 * gib)).0);
        assert!(!use_device_pipeline(None, cuda, gib, None).0);
        assert!(!use_device_pipeline(None, Device::Cpu, gib, None).0);
        assert!(use_device_pipeline(Some(true), Device::Cpu, gib, None).0);
        assert!(!use_device_pipeline(Some(false), cuda, gib, Some(80 * gib)).0);
    }
}
