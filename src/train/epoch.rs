//! One epoch: the batches, the forward pass from the phase's first trainable stage, the loss,
//! the optimiser step, and the validation pass after it.

use std::time::{Duration, Instant};

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::loss::{multilabel_loss, training_loss};
use super::phases::Inputs;
use super::schedule::Schedule;
use super::trainer::Trainer;
use crate::compute::scoring::{
    masked_bce, probabilities, rows, score_set, sigmoid_probabilities, target_rows, Scoring,
    SetScores,
};
use crate::config::Sampler;
use crate::data::loader::{batch_seed, epoch_order, stream_batches, ImageSet, InputSpec};
use crate::models::Classifier;
use crate::progress;

/// Steps between reads of the running loss and accuracy on CUDA.
const SYNC_EVERY: usize = 16;

/// What the training half of an epoch measured.
pub struct EpochStats {
    /// Sum of the batch losses, each times its images.
    pub loss_sum: f64,
    /// Correct training predictions (multi-label: each image's share of correct labels).
    pub correct: f64,
    /// Training images seen.
    pub seen: usize,
    /// Seconds of the training half (without validation).
    pub train_seconds: f64,
    /// Time spent waiting for the next batch.
    pub data_wait: Duration,
}

/// An epoch's running training loss and accuracy, summed on the device and read on demand.
struct EpochTotals {
    loss: Tensor,
    hits: Tensor,
    pending: usize,
    steps: usize,
    loss_sum: f64,
    correct: f64,
    seen: usize,
}

impl EpochTotals {
    fn new(device: Device) -> Self {
        EpochTotals {
            loss: Tensor::zeros([], (Kind::Double, device)),
            hits: Tensor::zeros([], (Kind::Double, device)),
            pending: 0,
            steps: 0,
            loss_sum: 0.0,
            correct: 0.0,
            seen: 0,
        }
    }

    /// Adds a batch of `n` images: its mean loss and its correct predictions (multi-label,
    /// with `targets`: each image's share of correct unmasked labels at probability 0.5).
    fn add(
        &mut self,
        loss: &Tensor,
        logits: &Tensor,
        ys: &Tensor,
        targets: Option<&Tensor>,
        n: usize,
    ) {
        tch::no_grad(|| {
            let _ = self
                .loss
                .g_add_(&(loss.detach().to_kind(Kind::Double) * n as f64));
            let hits = match targets {
                Some(t) => {
                    let mask = t.ge(0.0).to_kind(Kind::Float);
                    let right = logits.ge(0.0).to_kind(Kind::Float).eq_tensor(t);
                    let per_image =
                        (right.to_kind(Kind::Float) * &mask).sum_dim_intlist(1, false, Kind::Float)
                            / mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
                    per_image.sum(Kind::Double)
                }
                None => logits.argmax(-1, false).eq_tensor(ys).sum(Kind::Double),
            };
            let _ = self.hits.g_add_(&hits);
        });
        self.pending += n;
        self.steps += 1;
    }

    /// Moves the device sums into `loss_sum`, `correct` and `seen` (one device-to-host read);
    /// an error once the loss is no longer finite.
    fn read(&mut self, epoch: usize, run_dir: &std::path::Path) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        self.loss_sum += self.loss.double_value(&[]);
        self.correct += self.hits.double_value(&[]);
        self.seen += self.pending;
        self.pending = 0;
        let _ = self.loss.zero_();
        let _ = self.hits.zero_();
        if !self.loss_sum.is_finite() {
            anyhow::bail!(
                "training diverged: the loss became {} by epoch {epoch}, step {} (try a lower \
                 train.lr); the last good checkpoint is kept in {}",
                self.loss_sum,
                self.steps,
                run_dir.display()
            );
        }
        Ok(())
    }
}

impl Trainer<'_> {
    /// Trains one epoch on `inputs`: the sampler's order, one optimiser step per batch at the
    /// schedule's rate (from `first_step`, times the plateau scale), stages before
    /// `trainable_from` frozen.
    pub(super) fn train_epoch(
        &mut self,
        inputs: &Inputs,
        epoch: usize,
        schedule: &Schedule,
        first_step: usize,
        trainable_from: usize,
    ) -> Result<EpochStats> {
        // Long on purpose: the training step's loop in one place, so that its timing (data wait
        // against compute) is measured around the whole step.
        let (config, tc) = (self.config, &self.config.train);
        // Dropout draws from libtorch's generator: seeded per epoch, so a resumed run draws what
        // the uninterrupted one would have.
        tch::manual_seed(config.seed.wrapping_add(epoch as u64) as i64);
        let order = epoch_order(
            inputs.labels(),
            self.classes.len(),
            config.data.sampler == Sampler::Weighted,
            config.seed.wrapping_add(epoch as u64 * 7919),
        );
        let bar = progress::bar(order.len() as u64, &format!("epoch {epoch}"));
        let mut totals = EpochTotals::new(self.device);
        let batches = epoch_batches(
            inputs,
            order,
            tc.batch_size,
            config.seed ^ ((epoch as u64) << 40),
            config.data.prefetch,
            &self.spec,
            self.device,
        );
        let mut batches = batches.enumerate();
        let mut data_wait = Duration::ZERO;
        let train_started = Instant::now();
        loop {
            let waiting = Instant::now();
            let Some((step, batch)) = batches.next() else {
                break;
            };
            data_wait += waiting.elapsed();
            let batch = batch?;
            self.opt
                .set_lr(schedule.lr_at(first_step + step) * self.state.lr_scale);
            let xs = self.precision.input(batch.xs);
            let logits = self
                .precision
                .run(self.device, || {
                    forward_from(self.model.as_ref(), &xs, batch.level, trainable_from, true)
                })
                .to_kind(Kind::Float);
            let targets = batch_targets(&self.train_set, &batch.labels, self.device);
            let loss = match &targets {
                Some(t) => multilabel_loss(&logits, t, self.class_weights.as_ref(), tc),
                None => training_loss(&logits, &batch.ys, self.class_weights.as_ref(), tc)?,
            };
            // The running sums stay on the device between reads, so the GPU is not made to wait
            // for the host every step; on the CPU every step is read, and a diverged step is
            // caught before its update.
            let n = batch.labels.len();
            totals.add(&loss, &logits, &batch.ys, targets.as_ref(), n);
            if !self.device.is_cuda() || (step + 1) % SYNC_EVERY == 0 {
                if let Err(e) = totals.read(epoch, &self.run_dir) {
                    bar.finish_and_clear();
                    return Err(e);
                }
                bar.set_message(format!(
                    "loss {:.4} acc {:.3}",
                    totals.loss_sum / totals.seen as f64,
                    totals.correct / totals.seen as f64
                ));
            }
            if self.precision.needs_loss_scale() {
                self.opt
                    .backward_step_scaled(&loss, tc.grad_clip, &mut self.scaler);
            } else {
                self.opt.backward_step(&loss, tc.grad_clip);
            }
            bar.inc(n as u64);
        }
        let last_read = totals.read(epoch, &self.run_dir);
        bar.finish_and_clear();
        last_read?;
        Ok(EpochStats {
            loss_sum: totals.loss_sum,
            correct: totals.correct,
            seen: totals.seen,
            train_seconds: train_started.elapsed().as_secs_f64(),
            data_wait,
        })
    }

    /// Validation scores (eval mode) for images or cached activations.
    pub(super) fn validate(&self, inputs: &Inputs) -> Result<SetScores> {
        let batch_size = self.config.train.batch_size.max(64);
        let model = self.model.as_ref();
        match inputs {
            Inputs::Images { set, .. } => score_set(
                model,
                set.clone(),
                Scoring {
                    batch_size,
                    device: self.device,
                    precision: self.precision,
                    temperature: 1.0,
                    what: "val",
                    ood: None,
                },
            ),
            Inputs::Cached { labels, .. } => {
                let n = labels.len();
                let mut probs = vec![Vec::new(); n];
                let mut logits_out = vec![Vec::new(); n];
                let mut loss_sum = 0.0;
                let mut start = 0;
                let order = (0..n).collect();
                let batches =
                    epoch_batches(inputs, order, batch_size, 0, 1, &self.spec, self.device);
                for batch in batches {
                    let batch = batch?;
                    let xs = self.precision.input(batch.xs);
                    let logits = tch::no_grad(|| {
                        self.precision.run(self.device, || {
                            forward_from(model, &xs, batch.level, 0, false)
                        })
                    })
                    .to_kind(Kind::Float);
                    let (loss, batch_probs) =
                        match batch_targets(&self.val_set, &batch.labels, self.device) {
                            Some(t) => (
                                masked_bce(&logits, &t, None).double_value(&[]),
                                sigmoid_probabilities(&logits)?,
                            ),
                            None => (
                                logits.cross_entropy_for_logits(&batch.ys).double_value(&[]),
                                probabilities(&logits, 1.0)?,
                            ),
                        };
                    loss_sum += loss * batch.labels.len() as f64;
                    for (row, (p, l)) in batch_probs.into_iter().zip(rows(&logits)?).enumerate() {
                        probs[start + row] = p;
                        logits_out[start + row] = l;
                    }
                    start += batch.labels.len();
                }
                Ok(SetScores {
                    probs,
                    labels: labels.clone(),
                    loss: loss_sum / n.max(1) as f64,
                    logits: logits_out,
                    ood: None,
                    targets: target_rows(&self.val_set),
                })
            }
        }
    }
}

/// Multi-label: the targets of a batch whose labels are its images' rows in `set`.
fn batch_targets(set: &ImageSet, labels: &[i64], device: Device) -> Option<Tensor> {
    let rows: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    set.targets_tensor(&rows, device)
}

/// One batch ready for the network: inputs entering at stage `level`, and labels.
struct DeviceBatch {
    xs: Tensor,
    ys: Tensor,
    labels: Vec<i64>,
    level: usize,
}

/// Runs the network from stage `level`: stages before `trainable_from` in eval mode without
/// gradient (they are frozen), the rest and the head in `train` mode.
pub(super) fn forward_from(
    model: &dyn Classifier,
    xs: &Tensor,
    level: usize,
    trainable_from: usize,
    train: bool,
) -> Tensor {
    let n = model.num_stages();
    let mut h = xs.shallow_clone();
    let mut at = level;
    if at < trainable_from {
        let to = trainable_from.min(n);
        h = tch::no_grad(|| model.run_stages(&h, at, to, false));
        at = to;
    }
    if at < n {
        h = model.run_stages(&h, at, n, train);
    }
    model.head(&h, train)
}

/// `order` cut into batches of `batch_size` (the last one shorter).
fn batches_of(order: Vec<usize>, batch_size: usize) -> impl Iterator<Item = Vec<usize>> {
    let chunks: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    chunks.into_iter()
}

/// Iterates over the batches of one epoch of `inputs` in `order`.
fn epoch_batches<'a>(
    inputs: &'a Inputs,
    order: Vec<usize>,
    batch_size: usize,
    seed: u64,
    prefetch: usize,
    spec: &'a InputSpec,
    device: Device,
) -> Box<dyn Iterator<Item = Result<DeviceBatch>> + 'a> {
    match inputs {
        Inputs::Images {
            on_device: Some(images),
            augment,
            ..
        } => Box::new(
            batches_of(order, batch_size)
                .enumerate()
                .map(move |(b, chunk)| {
                    let (xs, ys) = images.batch(&chunk, augment.as_ref(), batch_seed(seed, b));
                    Ok(DeviceBatch {
                        xs,
                        ys,
                        labels: chunk.iter().map(|&i| images.label(i)).collect(),
                        level: 0,
                    })
                }),
        ),
        Inputs::Images {
            set,
            augment,
            on_device: None,
        } => Box::new(
            stream_batches(
                set.clone(),
                order,
                batch_size,
                augment.clone(),
                seed,
                prefetch,
            )
            .map(move |b| {
                let b = b?;
                Ok(DeviceBatch {
                    xs: b.images_tensor(spec, device),
                    ys: b.labels_tensor(device),
                    labels: b.labels,
                    level: 0,
                })
            }),
        ),
        Inputs::Cached {
            reps,
            labels,
            level,
        } => Box::new(batches_of(order, batch_size).map(move |chunk| {
            let idx: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
            let idx = Tensor::from_slice(&idx);
            let labels: Vec<i64> = chunk.iter().map(|&i| labels[i] as i64).collect();
            Ok(DeviceBatch {
                xs: reps.index_select(0, &idx).to_device(device),
                ys: Tensor::from_slice(&labels).to_device(device),
                labels,
                level: *level,
            })
        })),
    }
}
