//! The end of a run: the best weights back in place, temperature scaling and operating points
//! chosen on validation, the model card, and `checkpoints/latest`.

use std::path::Path;

use anyhow::Result;

use super::trainer::{Ending, Trainer};
use super::TrainOutcome;
use crate::compute::scoring::{score_set, Scoring, SetScores};
use crate::config::{EvalConfig, LabelTemperature, LabelThreshold};
use crate::error::TorchResultExt;
use crate::metrics::calibration::{fit_temperature, softmax_at_temperature};
use crate::metrics::multilabel::{
    calibrated, fit_label_temperatures, thresholds_by, ThresholdRule,
};
use crate::metrics::operating;
use crate::ood::{self, OodCard, OodDetector};
use crate::progress;
use crate::run::{update_latest, EpochMetrics, ModelCard, ValidationOperatingPoints};

/// What calibration on validation chose.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Logits are divided by this before the softmax.
    pub temperature: f64,
    /// Two classes: Youden's and the target-sensitivity operating points.
    pub operating_points: Option<ValidationOperatingPoints>,
    /// Two classes: the decision threshold (the target-sensitivity point's, else 0.5).
    pub threshold: f64,
}

/// What calibration on validation chose for a multi-label model, per label.
#[derive(Debug, Clone, Default)]
pub struct LabelCalibration {
    /// Logit divisors before the sigmoid.
    pub temperatures: Vec<f64>,
    /// Decision thresholds on the temperature-scaled probabilities.
    pub thresholds: Vec<f64>,
    /// How each threshold was chosen.
    pub rules: Vec<String>,
}

/// Each label's threshold rule: its own sensitivity target when `eval.label_sensitivity` names
/// it, else `eval.label_threshold`'s.
pub fn threshold_rules(eval: &EvalConfig, labels: &[String]) -> Vec<ThresholdRule> {
    labels
        .iter()
        .map(|l| match eval.label_sensitivity.get(l) {
            Some(&t) => ThresholdRule::Sensitivity(t),
            None => match eval.label_threshold {
                LabelThreshold::Youden => ThresholdRule::Youden,
                LabelThreshold::Sensitivity => ThresholdRule::Sensitivity(eval.target_sensitivity),
            },
        })
        .collect()
}

/// Fits the temperatures on validation logits (`eval.label_temperature`), then each label's
/// threshold on the scaled probabilities by its rule.
pub fn calibrate_labels(val: &SetScores, eval: &EvalConfig, labels: &[String]) -> LabelCalibration {
    let temperatures = match eval.label_temperature {
        LabelTemperature::PerLabel => fit_label_temperatures(&val.logits, &val.targets, false),
        LabelTemperature::Shared => fit_label_temperatures(&val.logits, &val.targets, true),
        LabelTemperature::None => vec![1.0; labels.len()],
    };
    let probs = calibrated(&val.logits, &temperatures);
    let rules = threshold_rules(eval, labels);
    LabelCalibration {
        thresholds: thresholds_by(&probs, &val.targets, &rules),
        rules: rules.iter().map(ToString::to_string).collect(),
        temperatures,
    }
}

/// Fits the temperature on validation logits and, for two classes, picks the operating points
/// on the temperature-scaled probabilities of the second class.
pub fn calibrate(val: &SetScores, n_classes: usize, target_sensitivity: f64) -> Calibration {
    let temperature = fit_temperature(&val.logits, &val.labels);
    let operating_points = (n_classes == 2).then(|| {
        let scores: Vec<f64> = val
            .logits
            .iter()
            .map(|z| softmax_at_temperature(z, temperature)[1])
            .collect();
        let positive: Vec<bool> = val.labels.iter().map(|&l| l == 1).collect();
        ValidationOperatingPoints {
            target_sensitivity,
            youden: operating::youden(&scores, &positive),
            at_sensitivity: operating::at_sensitivity(&scores, &positive, target_sensitivity),
        }
    });
    let threshold = operating_points
        .as_ref()
        .and_then(|o| o.at_sensitivity)
        .map_or(0.5, |p| p.threshold);
    Calibration {
        temperature,
        operating_points,
        threshold,
    }
}

impl Trainer<'_> {
    /// A single-label model's temperature and operating points on validation, said on the
    /// terminal.
    fn class_calibration(&self, val: &SetScores) -> Calibration {
        let cal = calibrate(val, self.classes.len(), self.config.eval.target_sensitivity);
        progress::note(&format!(
            "calibration on validation: temperature {:.3}{}",
            cal.temperature,
            match &cal.operating_points {
                Some(o) => format!(
                    "; decision threshold {:.4} (sensitivity >= {} on validation)",
                    cal.threshold, o.target_sensitivity
                ),
                None => String::new(),
            }
        ));
        cal
    }

    /// A multi-label model's temperatures and thresholds on validation, said on the terminal.
    fn label_calibration(&self, val: &SetScores) -> LabelCalibration {
        let cal = calibrate_labels(val, &self.config.eval, &self.classes);
        let each: Vec<String> = (0..self.classes.len())
            .map(|l| {
                format!(
                    "{} {:.3} (T {:.2}, {})",
                    self.classes[l], cal.thresholds[l], cal.temperatures[l], cal.rules[l]
                )
            })
            .collect();
        progress::note(&format!(
            "thresholds per label on validation: {}",
            each.join(", ")
        ));
        cal
    }

    /// Loads the best weights, calibrates on validation, writes model.json and the finished
    /// state, and points `checkpoints/latest` at the run when asked.
    pub(super) fn finish(
        mut self,
        ending: Option<Ending>,
        point_latest: bool,
    ) -> Result<TrainOutcome> {
        let config = self.config;
        self.vs
            .load(self.run_dir.join("model.safetensors"))
            .torch()?;
        let best = self.history[self.state.best_epoch.max(1) - 1].clone();
        let val = match self.best_val.take() {
            Some(val) => val,
            None => score_set(
                self.model.as_ref(),
                self.val_set.clone(),
                Scoring {
                    batch_size: config.train.batch_size.max(64),
                    device: self.device,
                    precision: self.precision,
                    temperature: 1.0,
                    what: "calibrate",
                    ood: None,
                },
            )?,
        };
        let (cal, labels) = if val.targets.is_empty() {
            (self.class_calibration(&val), LabelCalibration::default())
        } else {
            // A multi-label card's single-label fields keep their neutral values.
            let neutral = Calibration {
                temperature: 1.0,
                operating_points: None,
                threshold: 0.5,
            };
            (neutral, self.label_calibration(&val))
        };
        let ood = if config.ood.enabled {
            Some(self.fit_ood_guard()?)
        } else {
            None
        };
        let card = ModelCard {
            arch: config.model.arch,
            classes: self.classes.clone(),
            task: config.model.task,
            thresholds: labels.thresholds,
            threshold_rules: labels.rules,
            temperatures: labels.temperatures,
            image_size: config.data.image_size,
            channels: config.data.channels,
            mean: config.data.mean.clone(),
            std: config.data.std.clone(),
            dropout: config.model.dropout,
            shape: config.model.shape(),
            threshold: cal.threshold,
            temperature: cal.temperature,
            best_epoch: best.epoch,
            metrics: best.clone(),
            xray_version: env!("CARGO_PKG_VERSION").to_string(),
            operating_points: cal.operating_points,
            ood,
            train_seconds: Some(self.started.elapsed().as_secs_f64()),
            train_precision: Some(self.precision.label().to_string()),
            precision_auto: self.state.auto_precision.clone(),
        };
        card.write(&self.run_dir)?;
        self.state.finished = true;
        self.state.write(&self.run_dir)?;
        if point_latest {
            update_latest(&self.run_dir)?;
        }
        Ok(TrainOutcome {
            run_dir: self.run_dir,
            history: self.history,
            best,
            stopped_early: ending == Some(Ending::Patience { before_last: true }),
            stopped_by_hook: ending == Some(Ending::Hook),
            device: self.device,
        })
    }
}

impl Trainer<'_> {
    /// Fits the out-of-distribution guard on the best weights' penultimate features of (up to
    /// `ood.fit_images`) training images, sets its threshold on the validation split, writes
    /// `ood.safetensors` and returns what model.json records.
    fn fit_ood_guard(&self) -> Result<OodCard> {
        let oc = &self.config.ood;
        let batch = self.config.train.batch_size.max(64);
        // Multi-label: one class (an image's row is not a class), so one mean.
        let classes = if self.train_set.targets.is_some() {
            vec![0; self.train_set.len()]
        } else {
            self.train_set.labels.clone()
        };
        let subset = ood::stratified_subset(&classes, oc.fit_images);
        let fit_images = subset.len();
        let (train_x, train_y) = ood::set_features(
            self.model.as_ref(),
            self.train_set.clone(),
            subset,
            batch,
            self.device,
            "ood fit",
        )?;
        let (train_y, k) = if self.train_set.targets.is_some() {
            (vec![0; train_y.len()], 1)
        } else {
            (train_y, self.classes.len())
        };
        let mut detector = OodDetector::fit(&train_x, &train_y, k)?;
        let all_val: Vec<usize> = (0..self.val_set.len()).collect();
        let (val_x, _) = ood::set_features(
            self.model.as_ref(),
            self.val_set.clone(),
            all_val,
            batch,
            self.device,
            "ood threshold",
        )?;
        let val_scores = detector.scores(&val_x);
        let val_flag_rate = detector.set_threshold(&val_scores, oc.max_flag_rate);
        detector.save(&self.run_dir.join(ood::FILE))?;
        let above = (val_flag_rate * val_scores.len() as f64).round() as usize;
        let (expected, interval) = ood::expected_flag_rate(val_scores.len(), above);
        progress::note(&format!(
            "out-of-distribution guard: Mahalanobis distance on {} features of {fit_images} \
             training images (shrinkage {:.3}); threshold {:.1} flags {:.1}% of validation, \
             {:.1}% of new images expected (90%: {:.1}-{:.1}%)",
            detector.dims(),
            detector.shrinkage,
            detector.threshold,
            100.0 * val_flag_rate,
            100.0 * expected,
            100.0 * interval[0],
            100.0 * interval[1]
        ));
        Ok(OodCard {
            method: "mahalanobis".into(),
            threshold: detector.threshold,
            max_flag_rate: oc.max_flag_rate,
            val_flag_rate,
            expected_flag_rate: Some(expected),
            expected_flag_interval: Some(interval),
            calibration: Some([val_scores.len(), above]),
            fit_images,
            dims: detector.dims(),
            shrinkage: detector.shrinkage,
        })
    }
}

/// Draws curves.png atomically; a plotting failure is reported, never fatal to training.
pub fn write_curves(run_dir: &Path, history: &[EpochMetrics]) {
    let path = run_dir.join("curves.png");
    let result = crate::fsutil::write_with(&path, |tmp| {
        crate::report::plots::training_curves(tmp, history)
    });
    if let Err(e) = result {
        eprintln!("warning: could not draw {}: {e:#}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `eval.label_sensitivity` overrides `eval.label_threshold` for the labels it names.
    #[test]
    fn label_sensitivity_overrides_the_rule_for_its_labels() {
        let labels: Vec<String> = ["A", "B", "C"].iter().map(|s| s.to_string()).collect();
        let mut eval = EvalConfig::default();
        eval.label_sensitivity.insert("B".into(), 0.9);
        assert_eq!(
            threshold_rules(&eval, &labels),
            [
                ThresholdRule::Youden,
                ThresholdRule::Sensitivity(0.9),
                ThresholdRule::Youden
            ]
        );
        eval.label_threshold = LabelThreshold::Sensitivity;
        eval.target_sensitivity = 0.8;
        assert_eq!(
            threshold_rules(&eval, &labels),
            [
                ThresholdRule::Sensitivity(0.8),
                ThresholdRule::Sensitivity(0.9),
                ThresholdRule::Sensitivity(0.8)
            ]
        );
    }
}
