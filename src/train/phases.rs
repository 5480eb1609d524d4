//! Training phases (a frozen-backbone phase, then fine-tuning) and the inputs each trains on:
//! images, or the frozen stages' activations computed once and kept in memory.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use tch::{nn, Device, Tensor};

use crate::config::{AugmentConfig, TrainConfig};
use crate::data::loader::{stream_batches, ImageSet};
use crate::data::on_device::DeviceImages;
use crate::models::Classifier;
use crate::progress;

/// One phase of training: its epochs, the first trainable stage and its learning rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// Epochs in the phase.
    pub epochs: usize,
    /// Stages before this one are frozen (`num_stages`: only the head trains).
    pub trainable_from: usize,
    /// The phase's peak learning rate.
    pub lr: f64,
    /// Linear warm-up epochs at the phase's start.
    pub warmup_epochs: usize,
}

/// The two phases of `train`: `freeze_epochs` with every feature stage frozen, then the rest
/// with the last `unfreeze_stages` stages (0 = all) trainable at `lr * finetune_lr_factor`. A
/// phase of zero epochs is skipped.
pub fn plan(tc: &TrainConfig, n_stages: usize) -> [Phase; 2] {
    let stage_two_from = if tc.unfreeze_stages == 0 {
        0
    } else {
        n_stages.saturating_sub(tc.unfreeze_stages)
    };
    let frozen_first = tc.freeze_epochs > 0;
    [
        Phase {
            epochs: tc.freeze_epochs,
            trainable_from: n_stages,
            lr: tc.lr,
            warmup_epochs: tc.warmup_epochs,
        },
        Phase {
            epochs: tc.epochs - tc.freeze_epochs,
            trainable_from: stage_two_from,
            lr: if frozen_first {
                tc.lr * tc.finetune_lr_factor
            } else {
                tc.lr
            },
            warmup_epochs: if frozen_first { 0 } else { tc.warmup_epochs },
        },
    ]
}

/// Marks the variables of stages before `trainable_from` as frozen, the rest as trainable.
pub fn set_trainable(vs: &nn::VarStore, model: &dyn Classifier, trainable_from: usize) {
    let frozen: Vec<String> = (0..trainable_from.min(model.num_stages()))
        .flat_map(|i| model.stage_prefixes(i))
        .collect();
    for (name, var) in vs.variables() {
        let is_frozen = frozen.iter().any(|p| name.starts_with(p.as_str()));
        // Buffers (batch-norm running statistics) never require a gradient.
        if var.is_floating_point() && !name.contains("running_") {
            let _ = var.set_requires_grad(!is_frozen);
        }
    }
}

/// The inputs of one training phase: images, or activations of the frozen stages computed once.
pub enum Inputs {
    /// Decoded (and, for training, augmented) images, entering at stage 0.
    Images {
        /// The images.
        set: Arc<ImageSet>,
        /// Augmentation, for training images only.
        augment: Option<AugmentConfig>,
        /// The same images decoded on the training device (`data.on_device`): batches are
        /// then gathered and augmented there instead of by the CPU loader.
        on_device: Option<Rc<DeviceImages>>,
    },
    /// Activations entering at stage `level`, kept on the CPU, one row per image.
    Cached {
        /// The activations.
        reps: Tensor,
        /// Their labels.
        labels: Vec<usize>,
        /// The stage they enter at.
        level: usize,
    },
}

impl Inputs {
    /// Labels in row order.
    pub fn labels(&self) -> &[usize] {
        match self {
            Inputs::Images { set, .. } => &set.labels,
            Inputs::Cached { labels, .. } => labels,
        }
    }
}

/// Activations of the frozen stages, by level, for training and validation images.
pub struct ActivationCache {
    /// Levels the phases still to run will train on.
    needed: Vec<usize>,
    /// (level, train activations, val activations).
    entries: Vec<(usize, Tensor, Tensor)>,
}

impl ActivationCache {
    /// A cache for the `phases` that still have epochs to run after `epochs_done`; empty (never
    /// used) unless `precompute_frozen` is set.
    pub fn new(phases: &[Phase], epochs_done: usize, precompute_frozen: bool) -> Self {
        let mut start = 0;
        let needed = phases
            .iter()
            .filter_map(|p| {
                let (first, level) = (start, p.trainable_from);
                start += p.epochs;
                (precompute_frozen && p.epochs > 0 && first + p.epochs > epochs_done && level > 0)
                    .then_some(level)
            })
            .collect();
        ActivationCache {
            needed,
            entries: Vec::new(),
        }
    }

    /// Training and validation inputs at stage `level`: computed once (from the lowest level any
    /// remaining phase needs, each higher one from the one below it), then kept.
    pub fn inputs_at(
        &mut self,
        model: &dyn Classifier,
        sets: (&Arc<ImageSet>, &Arc<ImageSet>),
        level: usize,
        batch_size: usize,
        device: Device,
    ) -> Result<(Inputs, Inputs)> {
        let (train_set, val_set) = sets;
        let mut levels: Vec<usize> = self
            .needed
            .iter()
            .copied()
            .filter(|&l| l <= level)
            .collect();
        levels.push(level);
        levels.sort_unstable();
        levels.dedup();
        for l in levels {
            if self.entries.iter().any(|c| c.0 == l) {
                continue;
            }
            let started = Instant::now();
            let base = self.entries.iter().filter(|c| c.0 < l).max_by_key(|c| c.0);
            type Entry = (usize, Tensor, Tensor);
            let run = |set: &Arc<ImageSet>, pick: fn(&Entry) -> &Tensor| {
                let from = base.map(|c| (pick(c), c.0));
                precompute(model, set, from, l, batch_size, device)
            };
            let train_reps = run(train_set, |c| &c.1)?;
            let val_reps = run(val_set, |c| &c.2)?;
            progress::note(&format!(
                "stages {}..{l} frozen: their activations for {} images computed once in {:.1}s",
                base.map_or(0, |c| c.0),
                train_set.len() + val_set.len(),
                started.elapsed().as_secs_f64()
            ));
            self.entries.push((l, train_reps, val_reps));
            // The images and the frozen stages' activations are freed: give their pages back
            // before training allocates tensors of other sizes on top of them.
            crate::alloc::release_free_memory();
        }
        let c = self
            .entries
            .iter()
            .find(|c| c.0 == level)
            .expect("cached just above");
        let cached = |reps: &Tensor, set: &ImageSet| Inputs::Cached {
            reps: reps.shallow_clone(),
            labels: set.labels.clone(),
            level,
        };
        Ok((cached(&c.1, train_set), cached(&c.2, val_set)))
    }
}

/// Activations at stage `level` of every image of `set` (eval mode, no augmentation), computed
/// from `from` (activations at an earlier level) when given.
fn precompute(
    model: &dyn Classifier,
    set: &Arc<ImageSet>,
    from: Option<(&Tensor, usize)>,
    level: usize,
    batch_size: usize,
    device: Device,
) -> Result<Tensor> {
    let bar = progress::bar(set.len() as u64, "features");
    // The head pools first, so pooled activations are exact for it and far smaller (MobileNetV2's
    // last stage: 1280x7x7 a picture). Each batch is pooled as it comes and copied into one
    // tensor made at the first batch: collecting the batches and concatenating them held two
    // copies of every activation at once (2.5 GB for Kermany's 4,952 images at 224 px).
    let pool = level == model.num_stages();
    let n = set.len() as i64;
    let mut out: Option<Tensor> = None;
    let mut start = 0i64;
    let mut keep = |part: Tensor| {
        let part = if pool {
            part.adaptive_avg_pool2d([1, 1])
        } else {
            part
        };
        let len = part.size()[0];
        let all = out.get_or_insert_with(|| {
            let mut shape = part.size();
            shape[0] = n;
            let options = (part.kind(), Device::Cpu);
            // In the layout the stages give (channels-last where the precision runs so).
            if crate::torch_ext::is_channels_last(&part) {
                let (c, h, w) = (shape[1], shape[2], shape[3]);
                Tensor::empty([n, h, w, c], options).permute([0, 3, 1, 2])
            } else {
                Tensor::empty(shape.as_slice(), options)
            }
        });
        all.narrow(0, start, len).copy_(&part);
        start += len;
        bar.inc(len as u64);
    };
    match from {
        Some((reps, at)) => {
            let mut at_row = 0;
            while at_row < n {
                let len = (batch_size as i64).min(n - at_row);
                let xs = reps.narrow(0, at_row, len).to_device(device);
                keep(
                    tch::no_grad(|| model.run_stages(&xs, at, level, false)).to_device(Device::Cpu),
                );
                at_row += len;
            }
        }
        None => {
            let order: Vec<usize> = (0..set.len()).collect();
            for batch in stream_batches(set.clone(), order, batch_size, None, 0, 2) {
                let batch = batch?;
                let xs = batch.images_tensor(set.spec(), device);
                keep(
                    tch::no_grad(|| model.run_stages(&xs, 0, level, false)).to_device(Device::Cpu),
                );
            }
        }
    }
    bar.finish_and_clear();
    out.ok_or_else(|| anyhow::anyhow!("no images to compute activations for"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_freeze_and_unfreeze_settings() {
        let tc = TrainConfig {
            epochs: 10,
            lr: 1e-3,
            freeze_epochs: 4,
            unfreeze_stages: 2,
            finetune_lr_factor: 0.1,
            warmup_epochs: 1,
            ..TrainConfig::default()
        };
        let [frozen, finetune] = plan(&tc, 5);
        assert_eq!((frozen.epochs, frozen.trainable_from), (4, 5));
        assert_eq!((finetune.epochs, finetune.trainable_from), (6, 3));
        assert!((finetune.lr - 1e-4).abs() < 1e-15);
        assert_eq!((frozen.warmup_epochs, finetune.warmup_epochs), (1, 0));
        // A resumed run past the frozen phase needs only stage 3's activations.
        let cache = ActivationCache::new(&plan(&tc, 5), 5, true);
        assert_eq!(cache.needed, [3]);
    }
}
