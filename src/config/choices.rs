//! Every closed set of names in the config and on the command line, as typed enums.
//!
//! Each enum reads and writes the same words as before (`"adamw"`, `"val_auc"`, ...), and an
//! unknown word is rejected when the config is deserialised, with the key and the valid words:
//! `train.optimizer = "lion" is not one of: adamw, adam, sgd, rmsprop`. Where a choice is also a
//! flag, [`crate::cli`] makes it a clap `ValueEnum` from the same words. The network
//! architectures ([`crate::models::Arch`]) are the models' own.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::choice::choice;

choice! {
    /// Where networks run: CUDA when available, the CPU, or CUDA required.
    DeviceChoice, "device" {
        /// CUDA when a device is available, else the CPU.
        Auto = "auto",
        /// The CPU.
        Cpu = "cpu",
        /// CUDA; an error when none is available.
        Cuda = "cuda",
    }
}

choice! {
    /// The arithmetic of the network: float32, bfloat16 autocast, or the machine's best.
    PrecisionChoice, "train.precision" {
        /// On a CPU with AVX512-BF16 or AMX, bfloat16 where timed steps are at least 1.15x
        /// faster than float32 (measured once per model on this machine); float32 on other
        /// CPUs; on CUDA, float16 when `train.amp` is set, else float32.
        Auto = "auto",
        /// float32 throughout.
        Fp32 = "fp32",
        /// bfloat16 autocast: convolutions and matrix products in bfloat16, reductions, losses
        /// and the weights and optimizer state in float32; tensors channels-last.
        Bf16 = "bf16",
    }
}

choice! {
    /// How training images are drawn each epoch.
    Sampler, "data.sampler" {
        /// A uniform shuffle.
        Shuffle = "shuffle",
        /// With replacement, by inverse class frequency.
        Weighted = "weighted",
    }
}

choice! {
    /// What a multi-label model learns from an uncertain label (`-1` in CheXpert/MIMIC): the
    /// CheXpert paper's U-Ignore, U-Zeros and U-Ones.
    UncertainPolicy, "data.uncertain" {
        /// Masked out of the loss and the metrics.
        Ignore = "ignore",
        /// Taken as negative.
        Zeros = "zeros",
        /// Taken as positive.
        Ones = "ones",
    }
}

choice! {
    /// How a multi-label model's threshold per label is chosen on validation.
    LabelThreshold, "eval.label_threshold", default = Youden {
        /// Youden's J (sensitivity + specificity - 1) at its maximum.
        Youden = "youden",
        /// The highest threshold reaching `eval.target_sensitivity` (or the label's own target
        /// in `eval.label_sensitivity`).
        Sensitivity = "sensitivity",
    }
}

choice! {
    /// How a multi-label model's probabilities are calibrated: the logits are divided by a
    /// temperature fitted on validation (binary NLL) before the sigmoid.
    LabelTemperature, "eval.label_temperature", default = PerLabel {
        /// A temperature per label.
        PerLabel = "per_label",
        /// One temperature for every label.
        Shared = "shared",
        /// No temperature: the sigmoid of the raw logits.
        None = "none",
    }
}

choice! {
    /// What a multi-label model learns from a blank label (the report did not mention it).
    BlankPolicy, "data.blank" {
        /// Taken as negative (what CheXpert's own labeller means by a blank).
        Zeros = "zeros",
        /// Masked out of the loss and the metrics.
        Ignore = "ignore",
    }
}

choice! {
    /// What the network predicts.
    Task, "model.task", default = Multiclass {
        /// One class per image (softmax, cross-entropy).
        Multiclass = "multiclass",
        /// Any number of labels per image (a sigmoid per label, binary cross-entropy).
        Multilabel = "multilabel",
    }
}

choice! {
    /// The optimiser's update rule.
    OptimizerKind, "train.optimizer" {
        /// Adam with decoupled weight decay (Loshchilov and Hutter).
        AdamW = "adamw",
        /// Adam with L2 weight decay.
        Adam = "adam",
        /// Stochastic gradient descent with momentum (Nesterov by `train.nesterov`).
        Sgd = "sgd",
        /// RMSprop with momentum.
        RmsProp = "rmsprop",
    }
}

choice! {
    /// The learning-rate schedule.
    SchedulerKind, "train.scheduler" {
        /// A constant rate.
        None = "none",
        /// Cosine decay to zero, after the linear warm-up.
        Cosine = "cosine",
        /// The rate times `step_gamma` every `step_epochs`.
        Step = "step",
        /// The rate times `plateau_factor` after `plateau_patience` epochs without improvement.
        Plateau = "plateau",
    }
}

choice! {
    /// The training loss.
    LossKind, "train.loss" {
        /// Cross-entropy with class weights and label smoothing.
        CrossEntropy = "cross_entropy",
        /// Focal loss (Lin et al. 2017); class weights act as alpha.
        Focal = "focal",
    }
}

choice! {
    /// The validation metric that picks the best epoch (and that tune optimises).
    Monitor, "train.monitor" {
        /// ROC-AUC (macro one-vs-rest beyond two classes).
        ValAuc = "val_auc",
        /// Accuracy.
        ValAcc = "val_acc",
        /// Cross-entropy; lower is better.
        ValLoss = "val_loss",
    }
}

impl Task {
    /// Whether this is [`Task::Multiclass`] (model.json leaves the default out).
    pub fn is_multiclass(&self) -> bool {
        *self == Task::Multiclass
    }
}

impl Monitor {
    /// Whether a higher value is better (false only for the loss).
    pub fn higher_is_better(self) -> bool {
        self != Monitor::ValLoss
    }

    /// A reported value turned so that higher is better.
    pub fn to_score(self, value: f64) -> f64 {
        if self.higher_is_better() {
            value
        } else {
            -value
        }
    }
}

choice! {
    /// How `xray tune` proposes trials.
    Strategy, "tune.strategy" {
        /// Every combination of the listed values, in order.
        Grid = "grid",
        /// Uniform draws (log-uniform for log ranges).
        Random = "random",
        /// A tree-structured Parzen estimator.
        Tpe = "tpe",
    }
}

choice! {
    /// Whether `xray tune` stops unpromising trials early.
    Prune, "tune.prune" {
        /// Stop a trial below the median of the earlier trials at the same epoch.
        Median = "median",
        /// Run every trial to the end.
        None = "none",
    }
}

choice! {
    /// The keyword forms of `train.class_weights`.
    ClassWeightKeyword, "train.class_weights" {
        /// No weights.
        None = "none",
        /// `n / (k * count)` per class, as scikit-learn's `compute_class_weight("balanced")`.
        Balanced = "balanced",
    }
}

/// Class weights for the loss: a keyword or one number per class.
#[derive(Debug, Clone, PartialEq)]
pub enum ClassWeights {
    /// "none" or "balanced".
    Keyword(ClassWeightKeyword),
    /// One weight per class, in class order.
    Explicit(Vec<f64>),
}

impl Serialize for ClassWeights {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ClassWeights::Keyword(k) => k.serialize(s),
            ClassWeights::Explicit(w) => w.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ClassWeights {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Numbers(Vec<f64>),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(format!(
                "{} must be one of: {}, or a list of one number per class",
                ClassWeightKeyword::KEY,
                ClassWeightKeyword::words()
            ))
        })? {
            Raw::Word(w) => w
                .parse()
                .map(ClassWeights::Keyword)
                .map_err(serde::de::Error::custom),
            Raw::Numbers(w) => Ok(ClassWeights::Explicit(w)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for &o in OptimizerKind::ALL {
            assert_eq!(o.as_str().parse::<OptimizerKind>().unwrap(), o);
        }
        for &m in Monitor::ALL {
            assert_eq!(m.as_str().parse::<Monitor>().unwrap(), m);
        }
    }

    #[test]
    fn unknown_word_names_key_and_choices() {
        let err = "lion".parse::<OptimizerKind>().unwrap_err();
        assert_eq!(
            err,
            "train.optimizer = \"lion\" is not one of: adamw, adam, sgd, rmsprop"
        );
    }
}
