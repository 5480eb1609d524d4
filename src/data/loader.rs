//! The input pipeline: images decoded and augmented in parallel (rayon) on a background thread,
//! handed to the training loop through a bounded prefetch queue, with an optional in-memory
//! cache of decoded, resized images.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, OnceLock};

use rand::distributions::{Distribution, WeightedIndex};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::config::AugmentConfig;
use crate::data::augment::{prepare_into, Normalize};
use crate::data::decode::load_model_pixels;
use crate::error::Error;

/// How images become model input.
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// Side of the square input in pixels.
    pub size: u32,
    /// 1 or 3 channels.
    pub channels: u32,
    /// Normalisation.
    pub norm: Normalize,
}

/// A labelled set of image files with an optional cache of their decoded pixels.
pub struct ImageSet {
    /// Image files.
    pub paths: Vec<PathBuf>,
    /// Label index per image (multi-label: the image's row in `targets`).
    pub labels: Vec<usize>,
    /// Multi-label: one row of targets per image (1, 0 or
    /// [`crate::data::multilabel::MASKED`]), row-major.
    pub targets: Option<Vec<f32>>,
    spec: InputSpec,
    cache: Option<Vec<OnceLock<Arc<Vec<u8>>>>>,
}

impl ImageSet {
    /// A set over `samples`; `cache` keeps decoded pixels after first use.
    pub fn new(samples: Vec<(PathBuf, usize)>, spec: InputSpec, cache: bool) -> Self {
        let n = samples.len();
        let (paths, labels) = samples.into_iter().unzip();
        ImageSet {
            paths,
            labels,
            targets: None,
            spec,
            cache: cache.then(|| (0..n).map(|_| OnceLock::new()).collect()),
        }
    }

    /// A multi-label set over `samples` (each one's label its row) with `targets`, one row of
    /// labels per image; `cache` keeps decoded pixels after first use.
    pub fn multilabel(
        samples: Vec<(PathBuf, usize)>,
        targets: Vec<f32>,
        spec: InputSpec,
        cache: bool,
    ) -> Self {
        let mut set = Self::new(samples, spec, cache);
        set.targets = Some(targets);
        set
    }

    /// Multi-label: labels per image (0 for a single-label set).
    pub fn n_targets(&self) -> usize {
        match &self.targets {
            Some(t) if !self.is_empty() => t.len() / self.len(),
            _ => 0,
        }
    }

    /// Multi-label: the target rows of images `indices` as a `[n, labels]` tensor on `device`.
    pub fn targets_tensor(&self, indices: &[usize], device: Device) -> Option<Tensor> {
        let t = self.targets.as_ref()?;
        let k = self.n_targets();
        let rows: Vec<f32> = indices
            .iter()
            .flat_map(|&i| t[i * k..(i + 1) * k].iter().copied())
            .collect();
        Some(
            Tensor::from_slice(&rows)
                .view([indices.len() as i64, k as i64])
                .to_device(device),
        )
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The input spec.
    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// Decoded, resized HWC pixels of image `i` (from the cache when enabled).
    pub fn pixels(&self, i: usize) -> Result<Arc<Vec<u8>>, Error> {
        let load =
            || load_model_pixels(&self.paths[i], self.spec.size, self.spec.channels).map(Arc::new);
        match &self.cache {
            Some(cache) => {
                if let Some(p) = cache[i].get() {
                    return Ok(p.clone());
                }
                let p = load()?;
                Ok(cache[i].get_or_init(|| p).clone())
            }
            None => load(),
        }
    }

    /// Images per class.
    pub fn class_counts(&self, n_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; n_classes];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }
}

/// One batch on the host, ready to become tensors.
pub struct Batch {
    /// Normalised CHW floats of every image, concatenated.
    pub images: Vec<f32>,
    /// Label per image.
    pub labels: Vec<i64>,
    /// Index of each image in its [`ImageSet`].
    pub indices: Vec<usize>,
}

impl Batch {
    /// The images as an `[n, c, h, w]` float tensor on `device`.
    pub fn images_tensor(&self, spec: &InputSpec, device: Device) -> Tensor {
        let s = spec.size as i64;
        to_device_async(
            Tensor::from_slice(&self.images).view([
                self.labels.len() as i64,
                spec.channels as i64,
                s,
                s,
            ]),
            device,
        )
    }

    /// The labels as an int64 tensor on `device`.
    pub fn labels_tensor(&self, device: Device) -> Tensor {
        to_device_async(
            Tensor::from_slice(&self.labels).to_kind(Kind::Int64),
            device,
        )
    }
}

/// Moves a host tensor to `device`. To CUDA it goes through page-locked memory without waiting:
/// a copy from ordinary memory makes the host wait until the GPU has finished all the work
/// queued before it, once per batch (torch's DataLoader pins for the same reason). libtorch's
/// pinned-memory allocator keeps the staging buffer until the copy is done.
pub(crate) fn to_device_async(t: Tensor, device: Device) -> Tensor {
    if device.is_cuda() {
        t.pin_memory(device)
            .to_device_(device, t.kind(), true, false)
    } else {
        t.to_device(device)
    }
}

/// Builds batch `indices` of `set`, in parallel; augmentation RNGs are seeded from `seed` and
/// each image's position so that results do not depend on scheduling.
pub fn build_batch(
    set: &ImageSet,
    indices: &[usize],
    augment: Option<&AugmentConfig>,
    seed: u64,
) -> Result<Batch, Error> {
    let spec = set.spec();
    let (size, ch) = (spec.size as usize, spec.channels as usize);
    let per_image = ch * size * size;
    let mut images = vec![0f32; per_image * indices.len()];
    images
        .par_chunks_mut(per_image)
        .zip(indices.par_iter().enumerate())
        .try_for_each(|(slot, (pos, &i))| -> Result<(), Error> {
            let pixels = set.pixels(i)?;
            match augment {
                Some(cfg) => {
                    let mut rng = augment_rng(seed, i, pos);
                    prepare_into(&pixels, size, ch, &spec.norm, Some((cfg, &mut rng)), slot)
                }
                None => prepare_into::<ChaCha8Rng>(&pixels, size, ch, &spec.norm, None, slot),
            }
            Ok(())
        })?;
    Ok(Batch {
        images,
        labels: indices.iter().map(|&i| set.labels[i] as i64).collect(),
        indices: indices.to_vec(),
    })
}

/// The augmentation RNG of image `i` at position `pos` of the batch seeded `seed` (the device
/// pipeline draws the same transforms from it).
pub(crate) fn augment_rng(seed: u64, i: usize, pos: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pos as u64)
}

/// The seed of batch `b` of an epoch seeded `seed`.
pub(crate) fn batch_seed(seed: u64, b: usize) -> u64 {
    seed.wrapping_add((b as u64) << 32)
}

/// Iterates over prefetched batches built on a background thread.
pub struct BatchStream {
    rx: Receiver<Result<Batch, Error>>,
}

impl Iterator for BatchStream {
    type Item = Result<Batch, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// Streams `order` in batches of `batch_size`, `prefetch` batches ahead of the consumer.
/// Dropping the stream stops the producer.
pub fn stream_batches(
    set: Arc<ImageSet>,
    order: Vec<usize>,
    batch_size: usize,
    augment: Option<AugmentConfig>,
    seed: u64,
    prefetch: usize,
) -> BatchStream {
    let (tx, rx) = sync_channel(prefetch.max(1));
    std::thread::spawn(move || {
        for (b, chunk) in order.chunks(batch_size.max(1)).enumerate() {
            let batch = build_batch(&set, chunk, augment.as_ref(), batch_seed(seed, b));
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return;
            }
        }
    });
    BatchStream { rx }
}

/// The visiting order of one epoch: a seeded permutation, or (weighted) `n` draws with
/// replacement with probability inversely proportional to each class's frequency.
pub fn epoch_order(labels: &[usize], n_classes: usize, weighted: bool, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if weighted {
        let mut counts = vec![0usize; n_classes];
        for &l in labels {
            counts[l] += 1;
        }
        let weights: Vec<f64> = labels.iter().map(|&l| 1.0 / counts[l] as f64).collect();
        match WeightedIndex::new(&weights) {
            Ok(dist) => return (0..labels.len()).map(|_| dist.sample(&mut rng)).collect(),
            Err(_) => return Vec::new(),
        }
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_sampling_balances_classes() {
        let labels: Vec<usize> = (0..1000).map(|i| usize::from(i % 10 == 0)).collect();
        let order = epoch_order(&labels, 2, true, 1);
        let minority = order.iter().filter(|&&i| labels[i] == 1).count() as f64;
        let share = minority / order.len() as f64;
        assert!((share - 0.5).abs() < 0.06, "minority share {share}");
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let labels = vec![0; 50];
        let a = epoch_order(&labels, 1, false, 3);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(&labels, 1, false, 3));
        assert_ne!(a, epoch_order(&labels, 1, false, 4));
    }
}
