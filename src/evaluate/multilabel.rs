//! `xray eval` of a multi-label model: per-label ROC-AUC with patient-grouped bootstrap
//! intervals, average precision, prevalence, decisions at the thresholds model.json holds,
//! the macro and micro averages, exact match and Hamming scores, and per-label calibration.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{clusters, CiBy, Labelled, BOOTSTRAP_RESAMPLES, ECE_BINS};
use crate::compute::scoring::{score_set, Scoring, SetScores};
use crate::config::Config;
use crate::data::loader::ImageSet;
use crate::data::split::SplitSet;
use crate::error::Error;
use crate::infer::Predictor;
use crate::metrics::multilabel::{
    calibrated, column, counts_at, exact_match, hamming_score, macro_f1, macro_mean, micro_ap,
    micro_auc, micro_f1, per_label_ap, per_label_auc, LabelCounts,
};
use crate::metrics::operating::cluster_bootstrap_ci95;
use crate::metrics::roc_auc;

/// One label's figures on the evaluated set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelReport {
    /// The label.
    pub label: String,
    /// Images positive for it.
    pub positives: usize,
    /// Images negative for it.
    pub negatives: usize,
    /// Images where it was masked (uncertain or blank under `ignore`).
    pub masked: usize,
    /// positives / (positives + negatives).
    pub prevalence: f64,
    /// ROC-AUC; absent without positives or negatives.
    pub roc_auc: Option<f64>,
    /// Its bootstrap 95% interval (patients resampled when known).
    pub roc_auc_ci95: Option<[f64; 2]>,
    /// Average precision (PR-AUC).
    pub pr_auc: Option<f64>,
    /// The decision threshold (model.json's, chosen on validation).
    pub threshold: f64,
    /// How the threshold was chosen ("youden" or "sensitivity >= T").
    pub threshold_rule: String,
    /// The temperature its logit is divided by (model.json's, fitted on validation).
    pub temperature: f64,
    /// Decisions at the threshold.
    pub counts: LabelCounts,
    /// Sensitivity at the threshold.
    pub sensitivity: Option<f64>,
    /// Specificity at the threshold.
    pub specificity: Option<f64>,
    /// Precision (positive predictive value) at the threshold.
    pub precision: Option<f64>,
    /// F1 at the threshold.
    pub f1: f64,
    /// Expected calibration error of its probability (15 bins), temperature applied.
    pub ece: Option<f64>,
    /// The same of the sigmoid of the raw logit (temperature 1).
    pub ece_uncalibrated: Option<f64>,
}

/// `report.json` of a multi-label model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MultiLabelReport {
    /// Always [`crate::config::Task::Multilabel`] (the file says "multilabel").
    pub task: crate::config::Task,
    /// The run folder evaluated.
    pub checkpoint: PathBuf,
    /// The model's architecture.
    pub arch: crate::models::Arch,
    /// The split evaluated.
    pub source: String,
    /// Images.
    pub n: usize,
    /// The labels, in output order.
    pub labels: Vec<String>,
    /// Each label's figures, in output order.
    pub per_label: Vec<LabelReport>,
    /// Mean of the defined per-label AUCs (scikit-learn's `average="macro"`).
    pub roc_auc_macro: Option<f64>,
    /// Its bootstrap 95% interval.
    pub roc_auc_macro_ci95: Option<[f64; 2]>,
    /// AUC of every unmasked entry pooled (`average="micro"`).
    pub roc_auc_micro: Option<f64>,
    /// Mean per-label average precision.
    pub pr_auc_macro: Option<f64>,
    /// Pooled average precision.
    pub pr_auc_micro: Option<f64>,
    /// Mean per-label F1 at the thresholds.
    pub f1_macro: f64,
    /// F1 of the pooled decisions.
    pub f1_micro: f64,
    /// Images with every unmasked label right (subset accuracy).
    pub exact_match: f64,
    /// Unmasked entries decided right (1 - Hamming loss).
    pub hamming_score: f64,
    /// What the intervals resample: "group" (patients) or "image"; and how many groups.
    pub ci_method: String,
    /// Groups resampled, with "group".
    pub groups: Option<usize>,
    /// How the probabilities are calibrated (the temperatures, in words).
    pub calibration: String,
    /// Mean masked binary cross-entropy of the raw logits.
    pub loss: f64,
    /// What the out-of-distribution guard flagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood: Option<super::OodSummary>,
}

/// One scored image: its file, truths and probabilities (predictions.csv).
#[derive(Debug, Clone)]
pub struct ScoredLabels {
    /// The image file.
    pub path: PathBuf,
    /// Its targets (1, 0 or masked).
    pub targets: Vec<f32>,
    /// Its probability per label.
    pub probs: Vec<f64>,
    /// Its out-of-distribution score.
    pub ood_score: Option<f64>,
}

/// The images of split `source` ("train", "val" or "test" of the model's split) with the
/// targets under the run's own `data.uncertain` and `data.blank`.
pub fn labelled_split(predictor: &Predictor, source: &str) -> Result<(Labelled, Vec<f32>)> {
    let Ok(source) = source.parse::<crate::data::split::Split>() else {
        return Err(Error::usage(format!(
            "{source}: a multi-label model is evaluated on its split (test, val or train), \
             whose labels file gives every label"
        ))
        .into());
    };
    let config = Config::load(&predictor.run_dir.join("config.toml"), &[])?;
    let split = SplitSet::read(&config.data.split)?;
    if !split.multilabel || split.classes != predictor.card.classes {
        return Err(Error::usage(format!(
            "the split's labels {:?} differ from the model's {:?}",
            split.classes, predictor.card.classes
        ))
        .into());
    }
    let (samples, targets) =
        split.multilabel_samples(source, config.data.uncertain, config.data.blank);
    Ok((
        Labelled {
            samples,
            groups: Some(split.groups(source)),
        },
        targets,
    ))
}

/// Scores the images and computes the report.
pub fn evaluate_multilabel(
    predictor: &Predictor,
    labelled: Labelled,
    targets: Vec<f32>,
    source: &str,
    batch_size: usize,
    ci_by: CiBy,
) -> Result<(MultiLabelReport, Vec<ScoredLabels>)> {
    if labelled.samples.is_empty() {
        return Err(Error::usage(format!("no images to evaluate in {source}")).into());
    }
    let (clusters, method) = clusters(&labelled, ci_by)?;
    let set = Arc::new(ImageSet::multilabel(
        labelled.samples,
        targets,
        predictor.input_spec(),
        false,
    ));
    let scores = score_set(
        predictor.model(),
        set.clone(),
        Scoring {
            batch_size,
            device: predictor.device,
            precision: predictor.precision,
            temperature: 1.0,
            what: "eval",
            ood: predictor.ood.as_ref(),
        },
    )?;
    // score_set's probabilities are the sigmoid of the raw logits (temperature 1).
    let mut scores = scores;
    let raw = std::mem::replace(
        &mut scores.probs,
        calibrated(&scores.logits, &predictor.card.label_temperatures()),
    );
    let report = report_of(predictor, source, &scores, &raw, &clusters, method);
    let scored = set
        .paths
        .iter()
        .enumerate()
        .map(|(i, path)| ScoredLabels {
            path: path.clone(),
            targets: scores.targets[i].clone(),
            probs: scores.probs[i].clone(),
            ood_score: scores.ood.as_ref().map(|o| o[i]),
        })
        .collect();
    Ok((report, scored))
}

/// The report of scored images (`raw`: their probabilities at temperature 1; `clusters`: each
/// image's group for the bootstrap).
fn report_of(
    predictor: &Predictor,
    source: &str,
    scores: &SetScores,
    raw: &[Vec<f64>],
    clusters: &[usize],
    method: &str,
) -> MultiLabelReport {
    let (probs, targets) = (&scores.probs, &scores.targets);
    let labels = predictor.card.classes.clone();
    let thresholds = predictor.card.label_thresholds();
    let temperatures = predictor.card.label_temperatures();
    let counts = counts_at(probs, targets, &thresholds);
    let aucs = per_label_auc(probs, targets);
    let aps = per_label_ap(probs, targets);
    let per_label = labels
        .iter()
        .enumerate()
        .map(|(l, name)| {
            let (s, y) = column(probs, targets, l);
            let positives = y.iter().filter(|&&p| p).count();
            LabelReport {
                label: name.clone(),
                positives,
                negatives: y.len() - positives,
                masked: probs.len() - y.len(),
                prevalence: positives as f64 / y.len().max(1) as f64,
                roc_auc: aucs[l],
                roc_auc_ci95: label_auc_ci(probs, targets, clusters, l),
                pr_auc: aps[l],
                threshold: thresholds[l],
                threshold_rule: predictor
                    .card
                    .threshold_rules
                    .get(l)
                    .cloned()
                    .unwrap_or_else(|| "youden".into()),
                temperature: temperatures[l],
                counts: counts[l],
                sensitivity: counts[l].sensitivity(),
                specificity: counts[l].specificity(),
                precision: counts[l].precision(),
                f1: counts[l].f1(),
                ece: binary_ece(&s, &y, ECE_BINS),
                ece_uncalibrated: {
                    let (raw_s, raw_y) = column(raw, targets, l);
                    binary_ece(&raw_s, &raw_y, ECE_BINS)
                },
            }
        })
        .collect();
    let all_one_stratum = vec![0usize; probs.len()];
    let macro_ci =
        cluster_bootstrap_ci95(&all_one_stratum, clusters, BOOTSTRAP_RESAMPLES, 0, |idx| {
            let p: Vec<Vec<f64>> = idx.iter().map(|&i| probs[i].clone()).collect();
            let t: Vec<Vec<f32>> = idx.iter().map(|&i| targets[i].clone()).collect();
            macro_mean(&per_label_auc(&p, &t))
        });
    MultiLabelReport {
        task: crate::config::Task::Multilabel,
        checkpoint: predictor.run_dir.clone(),
        arch: predictor.card.arch,
        source: source.to_string(),
        n: probs.len(),
        labels,
        per_label,
        roc_auc_macro: macro_mean(&aucs),
        roc_auc_macro_ci95: macro_ci,
        roc_auc_micro: micro_auc(probs, targets),
        pr_auc_macro: macro_mean(&aps),
        pr_auc_micro: micro_ap(probs, targets),
        f1_macro: macro_f1(&counts),
        f1_micro: micro_f1(&counts),
        exact_match: exact_match(probs, targets, &thresholds),
        hamming_score: hamming_score(probs, targets, &thresholds),
        ci_method: method.to_string(),
        groups: (method == "group").then(|| clusters.iter().max().map_or(0, |m| m + 1)),
        calibration: calibration_words(&temperatures),
        loss: scores.loss,
        ood: super::ood_summary(scores, predictor.card.ood.as_ref()),
    }
}

/// The temperatures in words: none, one shared, or one per label.
fn calibration_words(temperatures: &[f64]) -> String {
    if temperatures.iter().all(|&t| t == 1.0) {
        "sigmoid of the raw logits (no temperature)".into()
    } else if temperatures.windows(2).all(|w| w[0] == w[1]) {
        format!(
            "sigmoid(logit / {:.3}): one temperature, fitted on validation",
            temperatures[0]
        )
    } else {
        "sigmoid(logit / T): a temperature per label, fitted on validation".into()
    }
}

/// The bootstrap interval of label `l`'s AUC: its unmasked images, whole groups resampled,
/// stratified by the group's majority truth for the label.
fn label_auc_ci(
    probs: &[Vec<f64>],
    targets: &[Vec<f32>],
    clusters: &[usize],
    l: usize,
) -> Option<[f64; 2]> {
    let rows: Vec<usize> = (0..probs.len()).filter(|&i| targets[i][l] >= 0.0).collect();
    let truth: Vec<usize> = rows
        .iter()
        .map(|&i| usize::from(targets[i][l] == 1.0))
        .collect();
    let groups: Vec<usize> = rows.iter().map(|&i| clusters[i]).collect();
    cluster_bootstrap_ci95(&truth, &groups, BOOTSTRAP_RESAMPLES, 0, |idx| {
        let s: Vec<f64> = idx.iter().map(|&j| probs[rows[j]][l]).collect();
        let y: Vec<bool> = idx.iter().map(|&j| truth[j] == 1).collect();
        roc_auc(&s, &y)
    })
}

/// Expected calibration error of binary probabilities: over `bins` equal-width bins of the
/// probability, the share of images in each times |mean probability - share positive|.
pub fn binary_ece(scores: &[f64], positive: &[bool], bins: usize) -> Option<f64> {
    if scores.is_empty() {
        return None;
    }
    let mut sum_p = vec![0.0; bins];
    let mut sum_y = vec![0.0; bins];
    let mut n = vec![0usize; bins];
    for (&s, &y) in scores.iter().zip(positive) {
        let b = ((s * bins as f64) as usize).min(bins - 1);
        sum_p[b] += s;
        sum_y[b] += f64::from(u8::from(y));
        n[b] += 1;
    }
    Some(
        (0..bins)
            .filter(|&b| n[b] > 0)
            .map(|b| (sum_p[b] - sum_y[b]).abs() / scores.len() as f64)
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By hand: scores 0.1, 0.2 (negatives) and 0.9 (positive), 0.95 (negative) in 10 bins:
    /// bin 1 |0.1 - 0|, bin 2 |0.2 - 0|, bin 9 |1.85 - 1| over 4 images = 1.15 / 4.
    #[test]
    fn binary_ece_by_hand() {
        let e = binary_ece(&[0.1, 0.2, 0.9, 0.95], &[false, false, true, false], 10).unwrap();
        assert!((e - 1.15 / 4.0).abs() < 1e-12, "{e}");
    }
}
