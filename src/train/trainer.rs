//! The [`Trainer`]: everything a run holds (data, network, optimiser, run state, history), its
//! set-up, and the loop over phases and epochs. The epoch itself is in `epoch.rs`, the phases
//! and activation cache in `phases.rs`, the end of the run in `finish.rs`.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use tch::{nn, Device, Kind, Tensor};

use super::loss::{class_weights, pos_weights};
use super::optim::{LossScaler, Optimizer, Rule};
use super::phases::{self, ActivationCache, Inputs, Phase};
use super::probe;
use super::schedule::Schedule;
use super::stopping;
use super::{Hooks, TrainOutcome};
use crate::compute::device::resolve_device;
use crate::compute::precision::Precision;
use crate::compute::scoring::SetScores;
use crate::config::{Config, PrecisionChoice, Task};
use crate::data::augment::Normalize;
use crate::data::loader::{ImageSet, InputSpec};
use crate::data::on_device::{use_device_pipeline, DeviceImages};
use crate::data::split::{Split, SplitSet};
use crate::error::{Error, TorchResultExt};
use crate::metrics::{accuracy, decide, summary_auc};
use crate::models::pretrained::load_pretrained;
use crate::models::{build, Classifier, ModelSpec};
use crate::progress;
use crate::run::{
    pending_path, save_weights, settle_pending, write_metrics_csv, EpochMetrics, RunState,
};
use crate::torch_ext::auto_precision::AutoChoice;

/// Why the loop over epochs ended before the last one was planned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// Early stopping (`train.patience`); `before_last` when epochs were left.
    Patience {
        /// Whether epochs were left.
        before_last: bool,
    },
    /// [`Hooks::after_epoch`] said stop.
    Hook,
}

/// A training run in progress: owns its data, network, optimiser and run state.
pub(super) struct Trainer<'c> {
    pub(super) config: &'c Config,
    pub(super) run_dir: PathBuf,
    pub(super) device: Device,
    pub(super) vs: nn::VarStore,
    pub(super) model: Box<dyn Classifier>,
    pub(super) opt: Optimizer,
    pub(super) scaler: LossScaler,
    /// The arithmetic of the forward passes (float16 on CUDA with a loss scale, bfloat16, or
    /// float32).
    pub(super) precision: Precision,
    pub(super) class_weights: Option<Tensor>,
    pub(super) classes: Vec<String>,
    pub(super) spec: InputSpec,
    pub(super) train_set: Arc<ImageSet>,
    pub(super) val_set: Arc<ImageSet>,
    pub(super) state: RunState,
    pub(super) history: Vec<EpochMetrics>,
    /// Validation scores of the best epoch, for calibration at the end (a resumed run whose
    /// best epoch came before the interruption scores validation again).
    pub(super) best_val: Option<SetScores>,
    /// When this training command started (for model.json's `train_seconds`).
    pub(super) started: Instant,
    /// Whether the training images go on the device (`data.on_device` or its default).
    on_device: bool,
    /// The training images on the device, once decoded.
    device_images: Option<Rc<DeviceImages>>,
}

/// One line on the arithmetic chosen, and why when `auto` chose it on the CPU (`measured`:
/// what it timed, where it did).
fn precision_note(
    precision: &Precision,
    choice: PrecisionChoice,
    device: Device,
    measured: Option<&AutoChoice>,
) -> String {
    let why = match (choice, measured) {
        _ if device.is_cuda() => String::new(),
        (_, Some(m)) => format!(" ({})", m.note()),
        (PrecisionChoice::Auto, None) => " (auto: this CPU has no bfloat16 instructions)".into(),
        (PrecisionChoice::Bf16, _) if !crate::torch_ext::cpu_has_bf16() => {
            " (this CPU has no bfloat16 instructions: expect it to be several times slower than \
             fp32)"
                .into()
        }
        _ => String::new(),
    };
    let layout = if precision.channels_last {
        ", channels-last"
    } else {
        ""
    };
    format!("precision {}{layout}{why}", precision.label())
}

/// The split's classes and its train and val images, ready to load.
struct TrainData {
    classes: Vec<String>,
    spec: InputSpec,
    train: Arc<ImageSet>,
    val: Arc<ImageSet>,
}

/// Reads the split `data.split` names; both train and val must hold images, and a multi-label
/// split needs `model.task = "multilabel"` (and the other way round).
fn open_split(config: &Config) -> Result<TrainData> {
    let split = SplitSet::read(&config.data.split)?;
    check_task(config, &split)?;
    let spec = InputSpec {
        size: config.data.image_size,
        channels: config.data.channels,
        norm: Normalize {
            mean: config.data.mean.clone(),
            std: config.data.std.clone(),
        },
    };
    let cache = config.data.cache;
    let set = |name: Split| -> Result<ImageSet> {
        Ok(if split.multilabel {
            let (samples, targets) =
                split.multilabel_samples(name, config.data.uncertain, config.data.blank);
            ImageSet::multilabel(samples, targets, spec.clone(), cache)
        } else {
            ImageSet::new(split.samples(name)?, spec.clone(), cache)
        })
    };
    let (train, val) = (set(Split::Train)?, set(Split::Val)?);
    if train.is_empty() || val.is_empty() {
        return Err(Error::usage(format!(
            "{}: the train and val splits must both hold images (train {}, val {})",
            config.data.split.display(),
            train.len(),
            val.len()
        ))
        .into());
    }
    Ok(TrainData {
        classes: split.classes.clone(),
        train: Arc::new(train),
        val: Arc::new(val),
        spec,
    })
}

/// One clear line when the config's `model.task` does not fit the split's labels.
pub(crate) fn check_task(config: &Config, split: &SplitSet) -> Result<()> {
    let multilabel = config.model.task == Task::Multilabel;
    if split.multilabel && !multilabel {
        return Err(Error::usage(format!(
            "{} is multi-label ({} labels per image: {}); a single-label config cannot train \
             on it: set model.task = \"multilabel\"",
            config.data.split.display(),
            split.classes.len(),
            split.classes.join(", ")
        ))
        .into());
    }
    if multilabel && !split.multilabel {
        return Err(Error::usage(format!(
            "model.task = \"multilabel\" but {} has one label per image; split a multi-label \
             CSV (xray split DATA_DIR --labels FILE.csv) or set model.task = \"multiclass\"",
            config.data.split.display()
        ))
        .into());
    }
    if let Some(unknown) = config
        .eval
        .label_sensitivity
        .keys()
        .find(|l| !multilabel || !split.classes.contains(l))
    {
        return Err(Error::usage(format!(
            "eval.label_sensitivity names {unknown:?}, which is not a label of {} (labels: {})",
            config.data.split.display(),
            split.classes.join(", ")
        ))
        .into());
    }
    Ok(())
}

impl<'c> Trainer<'c> {
    /// Sets a run up: device, seed, data, network (pretrained weights for a new run), optimiser
    /// and class weights; a resumed run reloads its last weights and optimiser state.
    pub(super) fn new(
        config: &'c Config,
        run_dir: PathBuf,
        resumed: Option<(RunState, Vec<EpochMetrics>)>,
    ) -> Result<Self> {
        // Long on purpose: the set-up in dependency order (device, data, model, pretrained or
        // resumed weights, precision, optimizer, class weights), each step using the ones before.
        let device = resolve_device(config.device)?;
        if config.threads > 0 {
            tch::set_num_threads(config.threads as i32);
        }
        let data = open_split(config)?;
        let n_classes = data.classes.len();
        let spec = ModelSpec {
            arch: config.model.arch,
            in_channels: config.data.channels as i64,
            num_classes: n_classes as i64,
            dropout: config.model.dropout,
            shape: config.model.shape(),
            image_size: config.data.image_size,
            inference: false,
        };
        // Before timing anything: a missing weights file is a config error.
        let pretrained = match resumed {
            None => config.model.pretrained_file()?,
            Some(_) => None,
        };
        let tc = &config.train;
        // Before the seed: timing `auto`'s steps draws from libtorch's generator. A resumed run
        // keeps the precision it began with.
        let earlier = resumed.as_ref().and_then(|(s, _)| s.auto_precision.clone());
        let (precision, auto_choice) = probe::training_precision(config, &spec, device, earlier)?;
        tch::manual_seed(config.seed as i64);
        let mut vs = nn::VarStore::new(device);
        let model = build(&vs.root(), &spec)?;
        if let Some(path) = pretrained {
            let path = path.as_path();
            let report = load_pretrained(&mut vs, path, model.head_prefix())?;
            progress::note(&format!(
                "pretrained {}: {}",
                path.display(),
                report.summary()
            ));
        }
        // Before the optimizer: its moments take the weights' layout.
        precision.prepare_weights(&vs)?;
        progress::note(&precision_note(
            &precision,
            tc.precision,
            device,
            auto_choice.as_ref(),
        ));
        let mut opt = Optimizer::new(
            &vs,
            Rule::from_config(tc),
            tc.lr,
            tc.weight_decay,
            tc.momentum,
        );
        let (on_device, why) = use_device_pipeline(
            config.data.on_device,
            device,
            DeviceImages::bytes_needed(data.train.len(), &data.spec),
            crate::torch_ext::cuda::cuda_total_memory().filter(|_| device.is_cuda()),
        );
        if !why.is_empty() {
            progress::note(&why);
        }
        let weights = match &data.train.targets {
            Some(t) => pos_weights(&tc.class_weights, t, n_classes)?,
            None => class_weights(&tc.class_weights, &data.train.class_counts(n_classes))?,
        };
        let class_weights = weights.map(|w| {
            Tensor::from_slice(&w)
                .to_kind(Kind::Float)
                .to_device(device)
        });
        let (state, history) = match resumed {
            Some((state, history)) => {
                reload(&mut vs, &mut opt, &run_dir, &state)?;
                (state, history)
            }
            None => (
                RunState {
                    auto_precision: auto_choice,
                    ..RunState::default()
                },
                Vec::new(),
            ),
        };
        Ok(Trainer {
            config,
            run_dir,
            device,
            vs,
            model,
            opt,
            scaler: LossScaler::default(),
            precision,
            class_weights,
            classes: data.classes,
            spec: data.spec,
            train_set: data.train,
            val_set: data.val,
            state,
            history,
            best_val: None,
            started: Instant::now(),
            on_device,
            device_images: None,
        })
    }

    /// Runs the phases' remaining epochs, then finishes the run (best weights, calibration,
    /// model card).
    pub(super) fn run(mut self, mut hooks: Hooks) -> Result<TrainOutcome> {
        let tc = &self.config.train;
        let phases = phases::plan(tc, self.model.num_stages());
        let mut cache = ActivationCache::new(&phases, self.state.epochs_done, tc.precompute_frozen);
        let mut ending = None;
        let mut phase_start = 0;
        for phase in phases.iter().filter(|p| p.epochs > 0) {
            let first_epoch = phase_start;
            phase_start += phase.epochs;
            // Skip the epochs a resumed run has done already.
            let done_here = self
                .state
                .epochs_done
                .saturating_sub(first_epoch)
                .min(phase.epochs);
            if done_here == phase.epochs {
                continue;
            }
            ending = self.run_phase(phase, first_epoch, done_here, &mut cache, &mut hooks)?;
            if ending.is_some() {
                break;
            }
        }
        drop(cache);
        // The epochs' freed tensors go back to the kernel before finishing builds the inference
        // network and scores the sets with tensors of other sizes.
        crate::alloc::release_free_memory();
        self.finish(ending, hooks.update_latest)
    }

    /// The training images on the device when `data.on_device` (or its default) says so,
    /// decoded on first use and kept for the rest of the run.
    fn train_on_device(&mut self) -> Result<Option<Rc<DeviceImages>>> {
        if !self.on_device {
            return Ok(None);
        }
        if self.device_images.is_none() {
            let images = DeviceImages::load(&self.train_set, self.device)?;
            self.device_images = Some(Rc::new(images));
        }
        Ok(self.device_images.clone())
    }

    /// Runs epochs `done_here..` of `phase`, whose first epoch is `first_epoch + 1`.
    fn run_phase(
        &mut self,
        phase: &Phase,
        first_epoch: usize,
        done_here: usize,
        cache: &mut ActivationCache,
        hooks: &mut Hooks,
    ) -> Result<Option<Ending>> {
        let tc = &self.config.train;
        phases::set_trainable(&self.vs, self.model.as_ref(), phase.trainable_from);
        let level = phase.trainable_from;
        let (train_inputs, val_inputs) = if tc.precompute_frozen && level > 0 {
            cache.inputs_at(
                self.model.as_ref(),
                (&self.train_set, &self.val_set),
                level,
                tc.batch_size.max(64),
                self.device,
            )?
        } else {
            (
                Inputs::Images {
                    set: self.train_set.clone(),
                    augment: Some(self.config.data.augment.clone()),
                    on_device: self.train_on_device()?,
                },
                Inputs::Images {
                    set: self.val_set.clone(),
                    augment: None,
                    on_device: None,
                },
            )
        };
        let steps_per_epoch = self.train_set.len().div_ceil(tc.batch_size);
        let schedule = Schedule::for_stage(
            tc,
            phase.lr,
            phase.epochs,
            phase.warmup_epochs,
            steps_per_epoch,
        );
        for phase_epoch in done_here..phase.epochs {
            let epoch = first_epoch + phase_epoch + 1;
            let started = Instant::now();
            let first_step = phase_epoch * steps_per_epoch;
            let stats = self.train_epoch(
                &train_inputs,
                epoch,
                &schedule,
                first_step,
                phase.trainable_from,
            )?;
            let val = self.validate(&val_inputs)?;
            let (val_acc, val_auc) = validation_summary(&val, self.classes.len());
            let metrics = EpochMetrics {
                epoch,
                lr: schedule.lr_at(first_step + steps_per_epoch - 1) * self.state.lr_scale,
                train_loss: stats.loss_sum / stats.seen.max(1) as f64,
                train_acc: stats.correct / stats.seen.max(1) as f64,
                val_loss: val.loss,
                val_acc,
                val_auc,
                seconds: started.elapsed().as_secs_f64(),
            };
            self.commit_epoch(metrics, val, &stats)?;
            if stopping::should_stop(&self.state, tc) {
                return Ok(Some(Ending::Patience {
                    before_last: epoch < tc.epochs,
                }));
            }
            if let Some(after_epoch) = hooks.after_epoch.as_mut() {
                if epoch < tc.epochs && !after_epoch(&self.history) {
                    return Ok(Some(Ending::Hook));
                }
            }
        }
        Ok(None)
    }

    /// Records an epoch: best-so-far and plateau bookkeeping, then its files, staged and
    /// committed by state.json (see [`pending_path`]), and its line on the terminal.
    fn commit_epoch(
        &mut self,
        metrics: EpochMetrics,
        val: SetScores,
        stats: &super::epoch::EpochStats,
    ) -> Result<()> {
        let tc = &self.config.train;
        let (epoch, run_dir) = (metrics.epoch, &self.run_dir);
        self.history.push(metrics.clone());
        let score = metrics.monitored_score(tc.monitor);
        let improved = stopping::is_improvement(&self.state, score, metrics.val_loss);
        save_weights(&self.vs, &pending_path(run_dir, "last.safetensors", epoch))?;
        let opt_path = pending_path(run_dir, "optimizer.safetensors", epoch);
        self.opt.save(&opt_path, epoch)?;
        stopping::record(&mut self.state, epoch, improved, score, metrics.val_loss);
        if improved {
            save_weights(&self.vs, &pending_path(run_dir, "model.safetensors", epoch))?;
            self.best_val = Some(val);
        }
        if stopping::plateau_step(&mut self.state, improved, tc) {
            progress::note(&format!(
                "validation plateau: learning rate x{}",
                tc.plateau_factor
            ));
        }
        self.state.epochs_done = epoch;
        write_metrics_csv(&run_dir.join("metrics.csv"), &self.history)?;
        super::finish::write_curves(run_dir, &self.history);
        self.state.write(run_dir)?;
        settle_pending(run_dir, epoch)?;
        let train_seconds = stats.train_seconds.max(1e-9);
        progress::note(&format!(
            "epoch {epoch:>3}/{}  loss {:.4}  acc {:.3}  val_loss {:.4}  val_acc {:.3}  val_auc {}  {:.1}s  {:.1} img/s  data wait {:.1}%{}",
            tc.epochs,
            metrics.train_loss,
            metrics.train_acc,
            metrics.val_loss,
            metrics.val_acc,
            metrics.val_auc.map_or("n/a".into(), |a| format!("{a:.4}")),
            metrics.seconds,
            stats.seen as f64 / train_seconds,
            100.0 * stats.data_wait.as_secs_f64() / train_seconds,
            if improved { "  *" } else { "" }
        ));
        Ok(())
    }
}

/// Validation positives a label needs to count in a multi-label run's monitored macro AUC.
pub const MONITOR_MIN_POSITIVES: usize = 5;

/// An epoch's validation accuracy and AUC: for one label per image, accuracy at the most
/// probable class and the (macro one-vs-rest) AUC; multi-label, the share of unmasked labels
/// decided right at probability 0.5 and the macro AUC over the labels with at least
/// [`MONITOR_MIN_POSITIVES`] validation positives (all labels when none has that many).
fn validation_summary(val: &SetScores, n_classes: usize) -> (f64, Option<f64>) {
    if val.targets.is_empty() {
        let predicted: Vec<usize> = val.probs.iter().map(|p| decide(p, 0.5)).collect();
        return (
            accuracy(&val.labels, &predicted).unwrap_or(0.0),
            summary_auc(&val.probs, &val.labels, n_classes),
        );
    }
    use crate::metrics::multilabel;
    let half = vec![0.5; n_classes];
    let auc = multilabel::monitored_auc(&val.probs, &val.targets, MONITOR_MIN_POSITIVES)
        .or_else(|| multilabel::monitored_auc(&val.probs, &val.targets, 1));
    (
        multilabel::hamming_score(&val.probs, &val.targets, &half),
        auc,
    )
}

/// A resumed run's weights and optimiser state, which must be of the epoch state.json records.
fn reload(
    vs: &mut nn::VarStore,
    opt: &mut Optimizer,
    run_dir: &Path,
    state: &RunState,
) -> Result<()> {
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
    Ok(())
}
