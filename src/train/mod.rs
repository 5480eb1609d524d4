//! `xray train`: the optimisation loop, its learning-rate schedule, early stopping and the run
//! folder it writes.

pub mod checkpoint;
pub mod optim;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::config::AugmentConfig;
use crate::config::{ClassWeights, Config};
use crate::data::augment::Normalize;
use crate::data::loader::{epoch_order, stream_batches, ImageSet, InputSpec};
use crate::data::split::SplitSet;
use crate::error::{Error, TorchResultExt};
use crate::infer::{resolve_device, score_set};
use crate::metrics::{accuracy, decide, summary_auc};
use crate::models::pretrained::load_pretrained;
use crate::models::{build, Classifier, ModelSpec};
use crate::progress;
use checkpoint::{
    pending_path, read_metrics_csv, save_weights, settle_pending, update_latest, write_metrics_csv,
    EpochMetrics, ModelCard, ValidationOperatingPoints,
};

/// Called after every epoch with the metrics so far; `false` stops the run.
pub type AfterEpoch<'a> = &'a mut dyn FnMut(&[EpochMetrics]) -> bool;

/// What a caller such as `xray tune` asks of a run beyond its config.
pub struct Hooks<'a> {
    /// Called after every epoch with the metrics so far; `false` stops the run there, which
    /// then finishes as an early stop does (best weights, calibration, model card).
    pub after_epoch: Option<AfterEpoch<'a>>,
    /// Point `checkpoints/latest` at the run when it finishes (default true).
    pub update_latest: bool,
}

impl Default for Hooks<'_> {
    fn default() -> Self {
        Hooks {
            after_epoch: None,
            update_latest: true,
        }
    }
}

/// What a finished training run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Metrics of every epoch run.
    pub history: Vec<EpochMetrics>,
    /// Metrics at the best epoch (whose weights are saved).
    pub best: EpochMetrics,
    /// Whether early stopping ended the run before `train.epochs`.
    pub stopped_early: bool,
    /// Whether [`Hooks::after_epoch`] ended the run.
    pub stopped_by_hook: bool,
    /// The device used.
    pub device: Device,
}

/// `state.json`: where an interrupted run stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Best monitored value so far.
    pub best_value: Option<f64>,
    /// Validation loss at the best epoch (breaks ties of the monitored value).
    pub best_val_loss: f64,
    /// Epoch (1-based) of the best value.
    pub best_epoch: usize,
    /// Epochs since the last improvement.
    pub epochs_without_improvement: usize,
    /// Whether the run has finished.
    pub finished: bool,
    /// Reduce-on-plateau: the factor applied to the scheduled rate so far.
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// Reduce-on-plateau: epochs since the last improvement or rate drop.
    #[serde(default)]
    pub plateau_wait: usize,
}

fn one() -> f64 {
    1.0
}

/// Steps between reads of the running loss and accuracy on CUDA.
const SYNC_EVERY: usize = 16;

/// An epoch's running training loss and accuracy, summed on the device and read on demand.
struct EpochTotals {
    loss: Tensor,
    hits: Tensor,
    pending: usize,
    steps: usize,
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

impl EpochTotals {
    fn new(device: Device) -> Self {
        EpochTotals {
            loss: Tensor::zeros([], (Kind::Double, device)),
            hits: Tensor::zeros([], (Kind::Int64, device)),
            pending: 0,
            steps: 0,
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
        }
    }

    /// Adds a batch of `n` images: its mean loss and its correct predictions.
    fn add(&mut self, loss: &Tensor, logits: &Tensor, ys: &Tensor, n: usize) {
        tch::no_grad(|| {
            let _ = self
                .loss
                .g_add_(&(loss.detach().to_kind(Kind::Double) * n as f64));
            let _ = self
                .hits
                .g_add_(&logits.argmax(-1, false).eq_tensor(ys).sum(Kind::Int64));
        });
        self.pending += n;
        self.steps += 1;
    }

    /// Moves the device sums into `loss_sum`, `correct` and `seen` (one device-to-host read);
    /// an error once the loss is no longer finite.
    fn read(&mut self, epoch: usize, run_dir: &Path) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        self.loss_sum += self.loss.double_value(&[]);
        self.correct += self.hits.int64_value(&[]) as usize;
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

/// The training loss: cross-entropy (class weights, label smoothing) or focal loss (class
/// weights as alpha), averaged with the weights as torch's weighted cross-entropy is.
fn training_loss(
    logits: &Tensor,
    ys: &Tensor,
    weights: Option<&Tensor>,
    tc: &crate::config::TrainConfig,
) -> Result<Tensor> {
    if tc.loss == "focal" {
        let log_p = logits.log_softmax(-1, Kind::Float);
        let log_pt = log_p.gather(1, &ys.unsqueeze(1), false).squeeze_dim(1);
        let pt = log_pt.exp();
        let per_sample = (pt.neg() + 1.0).pow_tensor_scalar(tc.focal_gamma).neg() * &log_pt;
        return Ok(match weights {
            Some(w) => {
                let wt = w.index_select(0, ys);
                (per_sample * &wt).sum(Kind::Float) / wt.sum(Kind::Float)
            }
            None => per_sample.mean(Kind::Float),
        });
    }
    logits
        .f_cross_entropy_loss(ys, weights, tch::Reduction::Mean, -100, tc.label_smoothing)
        .torch()
}

/// Where the run folder goes: `out`, else `checkpoints/<name>-<timestamp>`.
pub fn run_dir_for(config: &Config, out: Option<&Path>) -> PathBuf {
    match out {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("checkpoints").join(format!(
            "{}-{}",
            config.name,
            chrono::Local::now().format("%Y%m%d-%H%M%S")
        )),
    }
}

/// The monitored value of `m` as "higher is better" (the validation loss negated; the accuracy
/// when the AUC is undefined).
pub fn monitored(monitor: &str, m: &EpochMetrics) -> Option<f64> {
    match monitor {
        "val_loss" => Some(-m.val_loss),
        "val_acc" => Some(m.val_acc),
        _ => m.val_auc.or(Some(m.val_acc)),
    }
}

/// Loss weights per class for `train.class_weights`.
pub fn class_weights(setting: &ClassWeights, counts: &[usize]) -> Result<Option<Vec<f64>>> {
    match setting {
        ClassWeights::Keyword(k) if k == "none" => Ok(None),
        ClassWeights::Keyword(_) => {
            // "balanced": n / (k * count), as scikit-learn's compute_class_weight.
            let n: usize = counts.iter().sum();
            let k = counts.len() as f64;
            Ok(Some(
                counts
                    .iter()
                    .map(|&c| {
                        if c == 0 {
                            0.0
                        } else {
                            n as f64 / (k * c as f64)
                        }
                    })
                    .collect(),
            ))
        }
        ClassWeights::Explicit(w) if w.len() == counts.len() => Ok(Some(w.clone())),
        ClassWeights::Explicit(w) => Err(Error::usage(format!(
            "train.class_weights has {} values but the dataset has {} classes",
            w.len(),
            counts.len()
        ))
        .into()),
    }
}

/// The inputs of one training phase: images, or activations of the frozen stages computed once.
enum Inputs {
    /// Decoded (and, for training, augmented) images, entering at stage 0.
    Images {
        set: Arc<ImageSet>,
        augment: Option<AugmentConfig>,
    },
    /// Activations entering at stage `level`, kept on the CPU, one row per image.
    Cached {
        reps: Tensor,
        labels: Vec<usize>,
        level: usize,
    },
}

impl Inputs {
    fn labels(&self) -> &[usize] {
        match self {
            Inputs::Images { set, .. } => &set.labels,
            Inputs::Cached { labels, .. } => labels,
        }
    }
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
fn forward_from(
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
        Inputs::Images { set, augment } => Box::new(
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
        } => {
            let chunks: Vec<Vec<usize>> = order
                .chunks(batch_size.max(1))
                .map(<[usize]>::to_vec)
                .collect();
            Box::new(chunks.into_iter().map(move |chunk| {
                let idx: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
                let idx = Tensor::from_slice(&idx);
                let labels: Vec<i64> = chunk.iter().map(|&i| labels[i] as i64).collect();
                Ok(DeviceBatch {
                    xs: reps.index_select(0, &idx).to_device(device),
                    ys: Tensor::from_slice(&labels).to_device(device),
                    labels,
                    level: *level,
                })
            }))
        }
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
    what: &str,
) -> Result<Tensor> {
    let bar = progress::bar(set.len() as u64, what);
    let mut parts = Vec::new();
    match from {
        Some((reps, at)) => {
            let n = reps.size()[0];
            let mut start = 0;
            while start < n {
                let len = (batch_size as i64).min(n - start);
                let xs = reps.narrow(0, start, len).to_device(device);
                parts.push(
                    tch::no_grad(|| model.run_stages(&xs, at, level, false)).to_device(Device::Cpu),
                );
                bar.inc(len as u64);
                start += len;
            }
        }
        None => {
            let order: Vec<usize> = (0..set.len()).collect();
            for batch in stream_batches(set.clone(), order, batch_size, None, 0, 2) {
                let batch = batch?;
                let xs = batch.images_tensor(set.spec(), device);
                parts.push(
                    tch::no_grad(|| model.run_stages(&xs, 0, level, false)).to_device(Device::Cpu),
                );
                bar.inc(batch.labels.len() as u64);
            }
        }
    }
    bar.finish_and_clear();
    let reps = Tensor::cat(&parts, 0);
    // The head pools first, so pooled activations are exact for it and far smaller.
    Ok(if level == model.num_stages() {
        reps.adaptive_avg_pool2d([1, 1])
    } else {
        reps
    })
}

/// Marks the variables of stages before `trainable_from` as frozen, the rest as trainable.
fn set_trainable(vs: &nn::VarStore, model: &dyn Classifier, trainable_from: usize) {
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

/// One phase of training: its epochs, the first trainable stage and its learning rate.
struct Phase {
    epochs: usize,
    trainable_from: usize,
    lr: f64,
    warmup_epochs: usize,
}

/// Trains a model as `config` says and writes its run folder.
pub fn train(config: &Config, out: Option<&Path>) -> Result<TrainOutcome> {
    train_with(config, out, Hooks::default())
}

/// [`train`] with [`Hooks`].
pub fn train_with(config: &Config, out: Option<&Path>, hooks: Hooks) -> Result<TrainOutcome> {
    let run_dir = run_dir_for(config, out);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    crate::fsutil::write_atomic(&run_dir.join("config.toml"), config.to_toml()?.as_bytes())?;
    run(config, run_dir, None, hooks)
}

/// Continues an interrupted run from its last completed epoch: weights, optimizer state,
/// schedule position, early-stopping counters and metrics.csv carry on; the random streams are
/// seeded per epoch, so they carry on too.
pub fn resume(run_dir: &Path) -> Result<TrainOutcome> {
    resume_with(run_dir, Hooks::default())
}

/// [`resume`] with [`Hooks`].
pub fn resume_with(run_dir: &Path, hooks: Hooks) -> Result<TrainOutcome> {
    let state_path = run_dir.join("state.json");
    if !state_path.is_file() {
        return Err(Error::usage(format!(
            "{} cannot be resumed: no state.json (it never finished an epoch)",
            run_dir.display()
        ))
        .into());
    }
    let config = Config::load(&run_dir.join("config.toml"), &[])?;
    let state: RunState = serde_json::from_slice(&std::fs::read(&state_path)?)
        .with_context(|| format!("{} is not a valid run state", state_path.display()))?;
    if state.finished {
        return Err(Error::usage(format!(
            "{} has already finished ({} epochs); nothing to resume",
            run_dir.display(),
            state.epochs_done
        ))
        .into());
    }
    // Killed between staging an epoch and committing it: that epoch never happened. Killed
    // after the commit but before the staged files were renamed: the renames finish here.
    settle_pending(run_dir, state.epochs_done)?;
    let mut history = read_metrics_csv(&run_dir.join("metrics.csv"))?;
    if history.len() == state.epochs_done + 1 {
        history.pop();
    }
    if history.len() != state.epochs_done {
        anyhow::bail!(
            "{}: metrics.csv has {} epochs but state.json says {}",
            run_dir.display(),
            history.len(),
            state.epochs_done
        );
    }
    progress::note(&format!(
        "resuming {} after epoch {}",
        run_dir.display(),
        state.epochs_done
    ));
    run(
        &config,
        run_dir.to_path_buf(),
        Some((state, history)),
        hooks,
    )
}

/// The training loop proper, from scratch or from a saved state.
fn run(
    config: &Config,
    run_dir: PathBuf,
    resumed: Option<(RunState, Vec<EpochMetrics>)>,
    mut hooks: Hooks,
) -> Result<TrainOutcome> {
    let device = resolve_device(&config.device)?;
    if config.threads > 0 {
        tch::set_num_threads(config.threads as i32);
    }
    tch::manual_seed(config.seed as i64);

    let split = SplitSet::read(&config.data.split)?;
    let n_classes = split.classes.len();
    let train_samples = split.samples("train")?;
    let val_samples = split.samples("val")?;
    if train_samples.is_empty() || val_samples.is_empty() {
        return Err(Error::usage(format!(
            "{}: the train and val splits must both hold images (train {}, val {})",
            config.data.split.display(),
            train_samples.len(),
            val_samples.len()
        ))
        .into());
    }
    let spec = InputSpec {
        size: config.data.image_size,
        channels: config.data.channels,
        norm: Normalize {
            mean: config.data.mean.clone(),
            std: config.data.std.clone(),
        },
    };
    let train_set = Arc::new(ImageSet::new(
        train_samples,
        spec.clone(),
        config.data.cache,
    ));
    let val_set = Arc::new(ImageSet::new(val_samples, spec.clone(), config.data.cache));

    let mut vs = nn::VarStore::new(device);
    let model = build(
        &vs.root(),
        &ModelSpec {
            arch: config.model.arch.clone(),
            in_channels: config.data.channels as i64,
            num_classes: n_classes as i64,
            dropout: config.model.dropout,
        },
    )?;
    if config.model.pretrained != "none" && resumed.is_none() {
        let path = Path::new(&config.model.pretrained);
        let report = load_pretrained(&mut vs, path, model.head_prefix())?;
        progress::note(&format!(
            "pretrained {}: {}",
            path.display(),
            report.summary()
        ));
    }
    let tc = &config.train;
    let rule = match tc.optimizer.as_str() {
        "adam" => optim::Rule::Adam,
        "sgd" => optim::Rule::Sgd {
            nesterov: tc.nesterov,
        },
        "rmsprop" => optim::Rule::RmsProp,
        _ => optim::Rule::AdamW,
    };
    let mut opt = optim::Optimizer::new(&vs, rule, tc.lr, tc.weight_decay, tc.momentum);
    let counts = train_set.class_counts(n_classes);
    let weights = class_weights(&tc.class_weights, &counts)?.map(|w| {
        Tensor::from_slice(&w)
            .to_kind(Kind::Float)
            .to_device(device)
    });

    let n_stages = model.num_stages();
    let stage_two_from = if tc.unfreeze_stages == 0 {
        0
    } else {
        n_stages.saturating_sub(tc.unfreeze_stages)
    };
    let phases = [
        Phase {
            epochs: tc.freeze_epochs,
            trainable_from: n_stages,
            lr: tc.lr,
            warmup_epochs: tc.warmup_epochs,
        },
        Phase {
            epochs: tc.epochs - tc.freeze_epochs,
            trainable_from: stage_two_from,
            lr: if tc.freeze_epochs > 0 {
                tc.lr * tc.finetune_lr_factor
            } else {
                tc.lr
            },
            warmup_epochs: if tc.freeze_epochs > 0 {
                0
            } else {
                tc.warmup_epochs
            },
        },
    ];

    let (mut state, mut history) = match resumed {
        Some((state, history)) => {
            vs.load(run_dir.join("last.safetensors"))
                .torch()
                .context("cannot load last.safetensors")?;
            let saved_at = opt.load(&run_dir.join("optimizer.safetensors"))?;
            if saved_at != state.epochs_done {
                anyhow::bail!(
                    "{}: optimizer state is from epoch {saved_at} but state.json says {}",
                    run_dir.display(),
                    state.epochs_done
                );
            }
            (state, history)
        }
        None => (
            RunState {
                epochs_done: 0,
                best_value: None,
                best_val_loss: f64::INFINITY,
                best_epoch: 0,
                epochs_without_improvement: 0,
                finished: false,
                lr_scale: 1.0,
                plateau_wait: 0,
            },
            Vec::new(),
        ),
    };
    let mut stopped_early = false;
    let mut stopped_by_hook = false;
    let weighted = config.data.sampler == "weighted";
    // Cached activations by level: (train, val).
    let mut cache: Vec<(usize, Tensor, Tensor)> = Vec::new();
    // Validation scores of the best epoch, for calibration at the end (a resumed run whose
    // best epoch came before the interruption scores validation again).
    let mut best_val: Option<crate::infer::SetScores> = None;
    let mut phase_start = 0;
    let amp = tc.amp && device.is_cuda();
    let mut scaler = optim::LossScaler::default();
    // Levels whose activations the phases still to run will train on.
    let precompute_levels: Vec<usize> = if tc.precompute_frozen {
        let mut start = 0;
        phases
            .iter()
            .filter_map(|p| {
                let (first, level) = (start, p.trainable_from);
                start += p.epochs;
                (p.epochs > 0 && first + p.epochs > state.epochs_done && level > 0).then_some(level)
            })
            .collect()
    } else {
        Vec::new()
    };

    'phases: for phase in phases.iter().filter(|p| p.epochs > 0) {
        let first_epoch = phase_start;
        phase_start += phase.epochs;
        // Skip the epochs a resumed run has done already.
        let done_here = state
            .epochs_done
            .saturating_sub(first_epoch)
            .min(phase.epochs);
        if done_here == phase.epochs {
            continue;
        }
        set_trainable(&vs, model.as_ref(), phase.trainable_from);
        let level = phase.trainable_from;
        let (train_inputs, val_inputs) = if config.train.precompute_frozen && level > 0 {
            // Compute the lowest level any remaining phase needs first, and each higher one
            // from it: the frozen stages run once over the images.
            let mut levels: Vec<usize> = precompute_levels
                .iter()
                .copied()
                .filter(|&l| l <= level)
                .collect();
            levels.push(level);
            levels.sort_unstable();
            levels.dedup();
            for l in levels {
                if cache.iter().any(|c| c.0 == l) {
                    continue;
                }
                let started = Instant::now();
                let base = cache.iter().filter(|c| c.0 < l).max_by_key(|c| c.0);
                let batch = tc.batch_size.max(64);
                let train_reps = precompute(
                    model.as_ref(),
                    &train_set,
                    base.map(|c| (&c.1, c.0)),
                    l,
                    batch,
                    device,
                    "features",
                )?;
                let val_reps = precompute(
                    model.as_ref(),
                    &val_set,
                    base.map(|c| (&c.2, c.0)),
                    l,
                    batch,
                    device,
                    "features",
                )?;
                progress::note(&format!(
                    "stages {}..{l} frozen: their activations for {} images computed once in {:.1}s",
                    base.map_or(0, |c| c.0),
                    train_set.len() + val_set.len(),
                    started.elapsed().as_secs_f64()
                ));
                cache.push((l, train_reps, val_reps));
            }
            let c = cache
                .iter()
                .find(|c| c.0 == level)
                .expect("cached just above");
            (
                Inputs::Cached {
                    reps: c.1.shallow_clone(),
                    labels: train_set.labels.clone(),
                    level,
                },
                Inputs::Cached {
                    reps: c.2.shallow_clone(),
                    labels: val_set.labels.clone(),
                    level,
                },
            )
        } else {
            (
                Inputs::Images {
                    set: train_set.clone(),
                    augment: Some(config.data.augment.clone()),
                },
                Inputs::Images {
                    set: val_set.clone(),
                    augment: None,
                },
            )
        };

        let steps_per_epoch = train_set.len().div_ceil(tc.batch_size);
        let schedule = schedule::Schedule::for_stage(
            tc,
            phase.lr,
            phase.epochs,
            phase.warmup_epochs,
            steps_per_epoch,
        );
        for phase_epoch in done_here..phase.epochs {
            let epoch = first_epoch + phase_epoch + 1;
            // Dropout draws from libtorch's generator: seeded per epoch, so a resumed run
            // draws what the uninterrupted one would have.
            tch::manual_seed(config.seed.wrapping_add(epoch as u64) as i64);
            let started = Instant::now();
            let order = epoch_order(
                train_inputs.labels(),
                n_classes,
                weighted,
                config.seed.wrapping_add(epoch as u64 * 7919),
            );
            let bar = progress::bar(order.len() as u64, &format!("epoch {epoch}"));
            let mut totals = EpochTotals::new(device);
            let batches = epoch_batches(
                &train_inputs,
                order,
                tc.batch_size,
                config.seed ^ ((epoch as u64) << 40),
                config.data.prefetch,
                &spec,
                device,
            );
            let mut batches = batches.enumerate();
            let mut data_wait = std::time::Duration::ZERO;
            let train_started = Instant::now();
            loop {
                let waiting = Instant::now();
                let Some((step, batch)) = batches.next() else {
                    break;
                };
                data_wait += waiting.elapsed();
                let batch = batch?;
                let lr = schedule.lr_at(phase_epoch * steps_per_epoch + step) * state.lr_scale;
                opt.set_lr(lr);
                let logits = tch::autocast(amp, || {
                    forward_from(
                        model.as_ref(),
                        &batch.xs,
                        batch.level,
                        phase.trainable_from,
                        true,
                    )
                })
                .to_kind(Kind::Float);
                let loss = training_loss(&logits, &batch.ys, weights.as_ref(), tc)?;
                // The running sums stay on the device between reads, so the GPU is not made to
                // wait for the host every step; on the CPU every step is read, and a diverged
                // step is caught before its update.
                let n = batch.labels.len();
                totals.add(&loss, &logits, &batch.ys, n);
                if !device.is_cuda() || (step + 1) % SYNC_EVERY == 0 {
                    if let Err(e) = totals.read(epoch, &run_dir) {
                        bar.finish_and_clear();
                        return Err(e);
                    }
                    bar.set_message(format!(
                        "loss {:.4} acc {:.3}",
                        totals.loss_sum / totals.seen as f64,
                        totals.correct as f64 / totals.seen as f64
                    ));
                }
                if amp {
                    opt.backward_step_scaled(&loss, tc.grad_clip, &mut scaler);
                } else {
                    opt.backward_step(&loss, tc.grad_clip);
                }
                bar.inc(n as u64);
            }
            let last_read = totals.read(epoch, &run_dir);
            bar.finish_and_clear();
            last_read?;
            let (loss_sum, correct, seen) = (totals.loss_sum, totals.correct, totals.seen);
            let train_seconds = train_started.elapsed().as_secs_f64();

            let val = validate(
                model.as_ref(),
                &val_inputs,
                tc.batch_size.max(64),
                &spec,
                device,
            )?;
            let predicted: Vec<usize> = val.probs.iter().map(|p| decide(p, 0.5)).collect();
            let metrics = EpochMetrics {
                epoch,
                lr: schedule.lr_at((phase_epoch + 1) * steps_per_epoch - 1) * state.lr_scale,
                train_loss: loss_sum / seen.max(1) as f64,
                train_acc: correct as f64 / seen.max(1) as f64,
                val_loss: val.loss,
                val_acc: accuracy(&val.labels, &predicted).unwrap_or(0.0),
                val_auc: summary_auc(&val.probs, &val.labels, n_classes),
                seconds: started.elapsed().as_secs_f64(),
            };
            history.push(metrics.clone());

            let value = monitored(&tc.monitor, &metrics);
            // Ties (an AUC of 1.0 twice, say) go to the lower validation loss.
            let improved = match (value, state.best_value) {
                (Some(v), Some(best)) => {
                    v > best + 1e-12
                        || ((v - best).abs() <= 1e-12 && metrics.val_loss < state.best_val_loss)
                }
                (Some(_), None) => true,
                _ => state.best_value.is_none(),
            };
            // Staged, committed by state.json below, then settled (checkpoint::pending_path).
            save_weights(&vs, &pending_path(&run_dir, "last.safetensors", epoch))?;
            opt.save(
                &pending_path(&run_dir, "optimizer.safetensors", epoch),
                epoch,
            )?;
            if improved {
                state.best_value = value;
                state.best_val_loss = metrics.val_loss;
                state.best_epoch = epoch;
                state.epochs_without_improvement = 0;
                save_weights(&vs, &pending_path(&run_dir, "model.safetensors", epoch))?;
                best_val = Some(val);
            } else {
                state.epochs_without_improvement += 1;
            }
            if tc.scheduler == "plateau" {
                state.plateau_wait = if improved { 0 } else { state.plateau_wait + 1 };
                if state.plateau_wait >= tc.plateau_patience.max(1) {
                    state.lr_scale *= tc.plateau_factor;
                    state.plateau_wait = 0;
                    progress::note(&format!(
                        "validation plateau: learning rate x{}",
                        tc.plateau_factor
                    ));
                }
            }
            state.epochs_done = epoch;
            write_metrics_csv(&run_dir.join("metrics.csv"), &history)?;
            write_curves(&run_dir, &history);
            crate::fsutil::write_json_atomic(&run_dir.join("state.json"), &state)?;
            settle_pending(&run_dir, epoch)?;
            progress::note(&format!(
                "epoch {epoch:>3}/{}  loss {:.4}  acc {:.3}  val_loss {:.4}  val_acc {:.3}  val_auc {}  {:.1}s  {:.1} img/s  data wait {:.1}%{}",
                tc.epochs,
                metrics.train_loss,
                metrics.train_acc,
                metrics.val_loss,
                metrics.val_acc,
                metrics.val_auc.map_or("n/a".into(), |a| format!("{a:.4}")),
                metrics.seconds,
                seen as f64 / train_seconds.max(1e-9),
                100.0 * data_wait.as_secs_f64() / train_seconds.max(1e-9),
                if improved { "  *" } else { "" }
            ));
            if tc.patience > 0 && state.epochs_without_improvement >= tc.patience {
                stopped_early = epoch < tc.epochs;
                break 'phases;
            }
            if let Some(after_epoch) = hooks.after_epoch.as_mut() {
                if epoch < tc.epochs && !after_epoch(&history) {
                    stopped_by_hook = true;
                    break 'phases;
                }
            }
        }
    }
    drop(cache);

    // The best weights become the model.
    vs.load(run_dir.join("model.safetensors")).torch()?;
    let best = history[state.best_epoch.max(1) - 1].clone();
    // Calibration and operating points, on validation with the best weights.
    let val = match best_val {
        Some(val) => val,
        None => score_set(
            model.as_ref(),
            val_set.clone(),
            tc.batch_size.max(64),
            device,
            1.0,
            "calibrate",
        )?,
    };
    let temperature = crate::metrics::calibration::fit_temperature(&val.logits, &val.labels);
    let operating_points = (n_classes == 2).then(|| {
        let scores: Vec<f64> = val
            .logits
            .iter()
            .map(|z| crate::metrics::calibration::softmax_at_temperature(z, temperature)[1])
            .collect();
        let positive: Vec<bool> = val.labels.iter().map(|&l| l == 1).collect();
        ValidationOperatingPoints {
            target_sensitivity: config.eval.target_sensitivity,
            youden: crate::metrics::operating::youden(&scores, &positive),
            at_sensitivity: crate::metrics::operating::at_sensitivity(
                &scores,
                &positive,
                config.eval.target_sensitivity,
            ),
        }
    });
    let threshold = operating_points
        .as_ref()
        .and_then(|o| o.at_sensitivity)
        .map_or(0.5, |p| p.threshold);
    progress::note(&format!(
        "calibration on validation: temperature {temperature:.3}{}",
        match &operating_points {
            Some(o) => format!(
                "; decision threshold {threshold:.4} (sensitivity >= {} on validation)",
                o.target_sensitivity
            ),
            None => String::new(),
        }
    ));
    let card = ModelCard {
        arch: config.model.arch.clone(),
        classes: split.classes.clone(),
        image_size: config.data.image_size,
        channels: config.data.channels,
        mean: config.data.mean.clone(),
        std: config.data.std.clone(),
        dropout: config.model.dropout,
        threshold,
        temperature,
        best_epoch: best.epoch,
        metrics: best.clone(),
        xray_version: env!("CARGO_PKG_VERSION").to_string(),
        operating_points,
    };
    card.write(&run_dir)?;
    state.finished = true;
    crate::fsutil::write_json_atomic(&run_dir.join("state.json"), &state)?;
    if hooks.update_latest {
        update_latest(&run_dir)?;
    }
    Ok(TrainOutcome {
        run_dir,
        history,
        best,
        stopped_early,
        stopped_by_hook,
        device,
    })
}

/// Draws curves.png atomically; a plotting failure is reported, never fatal to training.
fn write_curves(run_dir: &Path, history: &[EpochMetrics]) {
    let path = run_dir.join("curves.png");
    let tmp = crate::fsutil::temp_sibling(&path).with_extension("tmp.png");
    let result = crate::report::plots::training_curves(&tmp, history)
        .and_then(|_| std::fs::rename(&tmp, &path).map_err(Into::into));
    if let Err(e) = result {
        eprintln!("warning: could not draw {}: {e:#}", path.display());
    }
}

/// Validation scores for images or cached activations.
fn validate(
    model: &dyn Classifier,
    inputs: &Inputs,
    batch_size: usize,
    spec: &InputSpec,
    device: Device,
) -> Result<crate::infer::SetScores> {
    match inputs {
        Inputs::Images { set, .. } => score_set(model, set.clone(), batch_size, device, 1.0, "val"),
        Inputs::Cached { labels, .. } => {
            let n = labels.len();
            let mut probs = vec![Vec::new(); n];
            let mut logits_out = vec![Vec::new(); n];
            let mut loss_sum = 0.0;
            let mut start = 0;
            for batch in epoch_batches(inputs, (0..n).collect(), batch_size, 0, 1, spec, device) {
                let batch = batch?;
                let logits = tch::no_grad(|| forward_from(model, &batch.xs, batch.level, 0, false));
                loss_sum += logits.cross_entropy_for_logits(&batch.ys).double_value(&[])
                    * batch.labels.len() as f64;
                let raw = logits.to_kind(Kind::Double).to_device(Device::Cpu);
                for (row, p) in crate::infer::probabilities(&logits, 1.0)
                    .into_iter()
                    .enumerate()
                {
                    probs[start + row] = p;
                    logits_out[start + row] =
                        Vec::<f64>::try_from(raw.get(row as i64)).unwrap_or_default();
                }
                start += batch.labels.len();
            }
            Ok(crate::infer::SetScores {
                probs,
                labels: labels.clone(),
                loss: loss_sum / n.max(1) as f64,
                logits: logits_out,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;

    /// Focal loss by hand: logits [2, 0], true class 0: p = e^2 / (e^2 + 1) = 0.880797,
    /// FL = -(1 - p)^2 ln p = 0.0018035; with gamma 0 it is the cross-entropy, -ln p = 0.126928.
    #[test]
    fn focal_loss_matches_hand_computation() {
        let logits = Tensor::from_slice(&[2.0f32, 0.0]).view([1, 2]);
        let ys = Tensor::from_slice(&[0i64]);
        let mut tc = TrainConfig {
            loss: "focal".into(),
            focal_gamma: 2.0,
            ..TrainConfig::default()
        };
        let fl = training_loss(&logits, &ys, None, &tc)
            .unwrap()
            .double_value(&[]);
        assert!((fl - 0.0018035).abs() < 1e-6, "{fl}");
        tc.focal_gamma = 0.0;
        let ce = training_loss(&logits, &ys, None, &tc)
            .unwrap()
            .double_value(&[]);
        assert!((ce - 0.126928).abs() < 1e-5, "{ce}");
    }

    /// Weighted focal loss averages with the weights, as torch's weighted cross-entropy does.
    #[test]
    fn focal_loss_weights_average_like_cross_entropy() {
        let logits = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.5, 0.5]).view([3, 2]);
        let ys = Tensor::from_slice(&[0i64, 0, 1]);
        let w = Tensor::from_slice(&[1.0f32, 3.0]);
        let tc = TrainConfig {
            loss: "focal".into(),
            focal_gamma: 0.0,
            ..TrainConfig::default()
        };
        let fl = training_loss(&logits, &ys, Some(&w), &tc)
            .unwrap()
            .double_value(&[]);
        let ce = training_loss(&logits, &ys, Some(&w), &TrainConfig::default())
            .unwrap()
            .double_value(&[]);
        assert!((fl - ce).abs() < 1e-6, "{fl} vs {ce}");
    }

    #[test]
    fn balanced_class_weights_follow_sklearn() {
        // sklearn.utils.class_weight.compute_class_weight("balanced", classes=[0,1], y) with
        // 30 of class 0 and 10 of class 1: n / (k * count) = 40/60, 40/20.
        let w = class_weights(&ClassWeights::Keyword("balanced".into()), &[30, 10])
            .unwrap()
            .unwrap();
        assert!((w[0] - 2.0 / 3.0).abs() < 1e-12 && (w[1] - 2.0).abs() < 1e-12);
    }
}
