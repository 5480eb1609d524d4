//! `xray train`: the optimisation loop, its learning-rate schedule, early stopping and the run
//! folder it writes.

pub mod checkpoint;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use crate::config::{ClassWeights, Config};
use crate::data::augment::Normalize;
use crate::data::loader::{epoch_order, stream_batches, ImageSet, InputSpec};
use crate::data::split::SplitSet;
use crate::error::{Error, TorchResultExt};
use crate::infer::{resolve_device, score_set};
use crate::metrics::{accuracy, decide, summary_auc};
use crate::models::{build, ModelSpec};
use crate::progress;
use checkpoint::{save_weights, update_latest, write_metrics_csv, EpochMetrics, ModelCard};

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

/// The monitored value of `m` as "higher is better".
fn monitored(monitor: &str, m: &EpochMetrics) -> Option<f64> {
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

/// Trains a model as `config` says and writes its run folder.
pub fn train(config: &Config, out: Option<&Path>) -> Result<TrainOutcome> {
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

    let run_dir = run_dir_for(config, out);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    crate::fsutil::write_atomic(&run_dir.join("config.toml"), config.to_toml()?.as_bytes())?;

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
    let tc = &config.train;
    let mut opt = match tc.optimizer.as_str() {
        "adam" => nn::adam(0.9, 0.999, tc.weight_decay).build(&vs, tc.lr),
        "sgd" => nn::sgd(tc.momentum, 0.0, tc.weight_decay, true).build(&vs, tc.lr),
        "rmsprop" => {
            nn::rms_prop(0.99, 1e-8, tc.weight_decay, tc.momentum, false).build(&vs, tc.lr)
        }
        _ => nn::adamw(0.9, 0.999, tc.weight_decay).build(&vs, tc.lr),
    }
    .torch()?;
    let counts = train_set.class_counts(n_classes);
    let weights = class_weights(&tc.class_weights, &counts)?.map(|w| {
        Tensor::from_slice(&w)
            .to_kind(Kind::Float)
            .to_device(device)
    });

    let steps_per_epoch = train_set.len().div_ceil(tc.batch_size);
    let schedule = schedule::Schedule::from_config(tc, steps_per_epoch);
    let mut history: Vec<EpochMetrics> = Vec::new();
    let mut state = RunState {
        epochs_done: 0,
        best_value: None,
        best_val_loss: f64::INFINITY,
        best_epoch: 0,
        epochs_without_improvement: 0,
        finished: false,
    };
    let mut stopped_early = false;
    let weighted = config.data.sampler == "weighted";

    for epoch in 1..=tc.epochs {
        let started = Instant::now();
        let order = epoch_order(
            &train_set.labels,
            n_classes,
            weighted,
            config.seed.wrapping_add(epoch as u64 * 7919),
        );
        let bar = progress::bar(order.len() as u64, &format!("epoch {epoch}"));
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let batches = stream_batches(
            train_set.clone(),
            order,
            tc.batch_size,
            Some(config.data.augment.clone()),
            config.seed ^ ((epoch as u64) << 40),
            config.data.prefetch,
        );
        for (step, batch) in batches.enumerate() {
            let batch = batch?;
            let lr = schedule.lr_at((epoch - 1) * steps_per_epoch + step);
            opt.set_lr(lr);
            let xs = batch.images_tensor(&spec, device);
            let ys = batch.labels_tensor(device);
            let logits = model.forward_t(&xs, true);
            let loss = logits
                .f_cross_entropy_loss(
                    &ys,
                    weights.as_ref(),
                    tch::Reduction::Mean,
                    -100,
                    tc.label_smoothing,
                )
                .torch()?;
            let loss_value = loss.double_value(&[]);
            if !loss_value.is_finite() {
                bar.finish_and_clear();
                return Err(anyhow::anyhow!(
                    "training diverged: the loss became {loss_value} at epoch {epoch}, step {} \
                     (try a lower train.lr); the last good checkpoint is kept in {}",
                    step + 1,
                    run_dir.display()
                ));
            }
            if tc.grad_clip > 0.0 {
                opt.backward_step_clip_norm(&loss, tc.grad_clip);
            } else {
                opt.backward_step(&loss);
            }
            let n = batch.labels.len();
            loss_sum += loss_value * n as f64;
            let predicted = logits.argmax(-1, false).to_device(Device::Cpu);
            let predicted: Vec<i64> = Vec::try_from(&predicted).unwrap_or_default();
            correct += predicted
                .iter()
                .zip(&batch.labels)
                .filter(|(p, l)| p == l)
                .count();
            seen += n;
            bar.inc(n as u64);
            bar.set_message(format!(
                "loss {:.4} acc {:.3}",
                loss_sum / seen as f64,
                correct as f64 / seen as f64
            ));
        }
        bar.finish_and_clear();

        let val = score_set(
            model.as_ref(),
            val_set.clone(),
            tc.batch_size.max(64),
            device,
            1.0,
            "val",
        )?;
        let predicted: Vec<usize> = val.probs.iter().map(|p| decide(p, 0.5)).collect();
        let metrics = EpochMetrics {
            epoch,
            lr: schedule.lr_at(epoch * steps_per_epoch - 1),
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
        save_weights(&vs, &run_dir.join("last.safetensors"))?;
        if improved {
            state.best_value = value;
            state.best_val_loss = metrics.val_loss;
            state.best_epoch = epoch;
            state.epochs_without_improvement = 0;
            save_weights(&vs, &run_dir.join("model.safetensors"))?;
        } else {
            state.epochs_without_improvement += 1;
        }
        state.epochs_done = epoch;
        write_metrics_csv(&run_dir.join("metrics.csv"), &history)?;
        crate::fsutil::write_json_atomic(&run_dir.join("state.json"), &state)?;
        eprintln!(
            "epoch {epoch:>3}/{}  loss {:.4}  acc {:.3}  val_loss {:.4}  val_acc {:.3}  val_auc {}  {:.1}s{}",
            tc.epochs,
            metrics.train_loss,
            metrics.train_acc,
            metrics.val_loss,
            metrics.val_acc,
            metrics.val_auc.map_or("n/a".into(), |a| format!("{a:.4}")),
            metrics.seconds,
            if improved { "  *" } else { "" }
        );
        if tc.patience > 0 && state.epochs_without_improvement >= tc.patience {
            stopped_early = epoch < tc.epochs;
            break;
        }
    }

    // The best weights become the model.
    vs.load(run_dir.join("model.safetensors")).torch()?;
    let best = history[state.best_epoch.max(1) - 1].clone();
    let card = ModelCard {
        arch: config.model.arch.clone(),
        classes: split.classes.clone(),
        image_size: config.data.image_size,
        channels: config.data.channels,
        mean: config.data.mean.clone(),
        std: config.data.std.clone(),
        dropout: config.model.dropout,
        threshold: 0.5,
        temperature: 1.0,
        best_epoch: best.epoch,
        metrics: best.clone(),
        xray_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    card.write(&run_dir)?;
    state.finished = true;
    crate::fsutil::write_json_atomic(&run_dir.join("state.json"), &state)?;
    update_latest(&run_dir)?;
    Ok(TrainOutcome {
        run_dir,
        history,
        best,
        stopped_early,
        device,
    })
}
