//! `xray eval`: score a trained model on a split or a folder and write its report.

pub mod multilabel;
pub mod runs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::compute::scoring::{score_set, Scoring, SetScores};
use crate::data::loader::ImageSet;
use crate::data::scan::scan_dataset;
use crate::data::split::SplitSet;
use crate::error::Error;
use crate::infer::Predictor;
use crate::metrics::calibration::{expected_calibration_error, softmax_at_temperature};
use crate::metrics::operating::{at_threshold, cluster_bootstrap_ci95, OperatingPoint};
use crate::metrics::{
    accuracy, average_precision, average_precision_ovr, balanced_accuracy, cohen_kappa,
    confusion_matrix, decide, macro_average, mean_defined, per_class, roc_auc, roc_auc_ovr,
    weighted_average, Averages, ClassMetrics,
};

/// `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The run folder evaluated.
    pub checkpoint: PathBuf,
    /// The model's architecture.
    pub arch: crate::models::Arch,
    /// What was evaluated: a split name or a folder.
    pub source: String,
    /// Number of images.
    pub n: usize,
    /// Class names, in confusion-matrix order.
    pub classes: Vec<String>,
    /// Share of correct decisions.
    pub accuracy: Option<f64>,
    /// Precision, recall, F1 and support per class.
    pub per_class: BTreeMap<String, ClassMetrics>,
    /// Unweighted means over classes.
    pub macro_avg: Averages,
    /// Support-weighted means over classes.
    pub weighted_avg: Averages,
    /// Rows = true class, columns = predicted class.
    pub confusion_matrix: Vec<Vec<usize>>,
    /// Two classes: AUC of the second class's probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
    /// More than two classes: one-vs-rest AUC per class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roc_auc_ovr: Option<BTreeMap<String, Option<f64>>>,
    /// More than two classes: mean of the defined one-vs-rest AUCs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roc_auc_macro: Option<f64>,
    /// Mean recall over the classes present.
    pub balanced_accuracy: Option<f64>,
    /// Cohen's kappa of predictions against labels.
    pub cohen_kappa: Option<f64>,
    /// Two classes: average precision (PR-AUC) of the second class; more: per class.
    pub pr_auc: BTreeMap<String, Option<f64>>,
    /// The two-class decision threshold used.
    pub threshold: f64,
    /// Two classes: sensitivity (recall of the second class) at `threshold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,
    /// Two classes: specificity (recall of the first class) at `threshold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub specificity: Option<f64>,
    /// Stratified bootstrap 95% intervals (1000 resamples, seed 0).
    pub ci95: Ci95,
    /// Expected calibration error (15 bins) before and after temperature scaling.
    pub ece: Ece,
    /// Two classes: the target sensitivity the screening point was chosen for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_sensitivity: Option<f64>,
    /// Two classes: Youden's threshold (chosen on validation) and its figures here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_youden: Option<OperatingPoint>,
    /// Two classes: the highest threshold with validation sensitivity >= the target, and its
    /// figures here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_at_sensitivity: Option<OperatingPoint>,
    /// Mean cross-entropy.
    pub loss: f64,
    /// What the out-of-distribution guard flagged here; absent when the run has no guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood: Option<OodSummary>,
}

/// The out-of-distribution guard over an evaluated set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OodSummary {
    /// The run's threshold.
    pub threshold: f64,
    /// Images scored above it.
    pub flagged: usize,
    /// Their share.
    pub flag_rate: f64,
    /// The counts that chance alone gives this many in-distribution images with 90%
    /// probability, from the guard's validation set ([`crate::ood::flag_count_range`]; absent
    /// for runs made before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_flags: Option<[usize; 2]>,
}

/// Bootstrap 95% intervals, `[low, high]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ci95 {
    /// Accuracy.
    pub accuracy: Option<[f64; 2]>,
    /// ROC-AUC (two classes) or macro one-vs-rest ROC-AUC.
    pub roc_auc: Option<[f64; 2]>,
    /// Two classes: sensitivity at the decision threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<[f64; 2]>,
    /// Two classes: specificity at the decision threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub specificity: Option<[f64; 2]>,
    /// What was resampled: "group" (whole patients, the cluster bootstrap) or "image".
    #[serde(default)]
    pub method: String,
    /// With "group": the number of groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<usize>,
}

/// Calibration before and after temperature scaling.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ece {
    /// ECE of the raw softmax.
    pub before: Option<f64>,
    /// ECE after dividing the logits by `temperature`.
    pub after: Option<f64>,
    /// The temperature fitted on validation (model.json).
    pub temperature: f64,
}

/// Bootstrap resamples for the intervals.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
/// Confidence bins for the ECE.
pub const ECE_BINS: usize = 15;

/// One scored image, for predictions.csv.
#[derive(Debug, Clone)]
pub struct ScoredImage {
    /// The image file.
    pub path: PathBuf,
    /// True label index.
    pub label: usize,
    /// Predicted label index.
    pub predicted: usize,
    /// Probability per class (temperature-scaled).
    pub probs: Vec<f64>,
    /// The raw logits.
    pub logits: Vec<f64>,
    /// Its out-of-distribution score, when the run has a guard.
    pub ood_score: Option<f64>,
}

crate::choice::choice! {
    /// What the bootstrap intervals resample.
    CiBy, "--ci-by" {
        /// Patients (groups) when the images carry them (a split's images do), else images.
        Auto = "auto",
        /// Whole groups (the cluster bootstrap); an error when the images carry none.
        Group = "group",
        /// Images, as if each were independent.
        Image = "image",
    }
}

/// Images to evaluate, with their labels and, when known, their groups (patients).
#[derive(Debug, Clone)]
pub struct Labelled {
    /// (image file, label index).
    pub samples: Vec<(PathBuf, usize)>,
    /// The group of each sample (split.csv's `group`), in the same order.
    pub groups: Option<Vec<String>>,
}

/// Labelled images of `source`: "train", "val" or "test" of the split the model was trained
/// on (from its config.toml, with its groups), or a class-per-folder DATA_DIR whose classes
/// must match.
pub fn labelled_images(predictor: &Predictor, source: &str) -> Result<Labelled> {
    let classes = &predictor.card.classes;
    if let Ok(source) = source.parse::<crate::data::split::Split>() {
        let config_path = predictor.run_dir.join("config.toml");
        let config = crate::config::Config::load(&config_path, &[])?;
        let split = SplitSet::read(&config.data.split)?;
        if &split.classes != classes {
            return Err(Error::usage(format!(
                "the split's classes {:?} differ from the model's {:?}",
                split.classes, classes
            ))
            .into());
        }
        return Ok(Labelled {
            samples: split.samples(source)?,
            groups: Some(split.groups(source)),
        });
    }
    let scanned = scan_dataset(Path::new(source))?;
    let mut samples = Vec::new();
    for img in scanned.images {
        let name = &scanned.classes[img.label];
        let label = classes.iter().position(|c| c == name).ok_or_else(|| {
            Error::usage(format!(
                "class folder \"{name}\" is not one of the model's classes {classes:?}"
            ))
        })?;
        samples.push((scanned.root.join(img.rel_path), label));
    }
    Ok(Labelled {
        samples,
        groups: None,
    })
}

/// Each sample's cluster for the bootstrap (a group index, or its own index), and the method.
pub(crate) fn clusters(labelled: &Labelled, ci_by: CiBy) -> Result<(Vec<usize>, &'static str)> {
    let n = labelled.samples.len();
    match (&labelled.groups, ci_by) {
        (Some(groups), CiBy::Auto | CiBy::Group) => {
            let mut ids: std::collections::HashMap<&str, usize> = Default::default();
            let clusters = groups
                .iter()
                .map(|g| {
                    let next = ids.len();
                    *ids.entry(g.as_str()).or_insert(next)
                })
                .collect();
            Ok((clusters, "group"))
        }
        (None, CiBy::Group) => Err(Error::usage(
            "--ci-by group needs images with groups: evaluate a split (test, val or train)",
        )
        .into()),
        _ => Ok(((0..n).collect(), "image")),
    }
}

/// Scores `samples` and computes the report.
pub fn evaluate(
    predictor: &Predictor,
    labelled: Labelled,
    source: &str,
    batch_size: usize,
    ci_by: CiBy,
) -> Result<(EvalReport, Vec<ScoredImage>)> {
    // Long on purpose: the report's fields filled one after another from one scoring pass.
    if labelled.samples.is_empty() {
        return Err(Error::usage(format!("no images to evaluate in {source}")).into());
    }
    let (clusters, method) = clusters(&labelled, ci_by)?;
    let set = Arc::new(ImageSet::new(
        labelled.samples,
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
            temperature: predictor.card.temperature,
            what: "eval",
            ood: predictor.ood.as_ref(),
        },
    )?;
    let classes = predictor.card.classes.clone();
    let k = classes.len();
    let threshold = predictor.card.threshold;
    let predicted: Vec<usize> = scores.probs.iter().map(|p| decide(p, threshold)).collect();
    let cm = confusion_matrix(&scores.labels, &predicted, k);
    let per = per_class(&cm);
    let (balanced_accuracy, cohen_kappa) = (balanced_accuracy(&cm), cohen_kappa(&cm));
    let labels = &scores.labels;
    let binary = k == 2;
    let positive: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
    // Two classes: the second class's probability is the score thresholds apply to.
    let pos_scores: Vec<f64> = if binary {
        scores.probs.iter().map(|p| p[1]).collect()
    } else {
        Vec::new()
    };
    let mut ci95 = bootstrap_intervals(&scores.probs, labels, &predicted, k, &clusters);
    ci95.method = method.to_string();
    ci95.groups = (method == "group").then(|| clusters.iter().max().map_or(0, |m| m + 1));
    let ece = calibration(&scores, predictor.card.temperature);
    let chosen = predictor.card.operating_points.as_ref().filter(|_| binary);
    let here = |p: Option<OperatingPoint>| {
        p.and_then(|p| at_threshold(&pos_scores, &positive, p.threshold))
    };
    let (roc_auc_binary, ovr, ovr_macro) = roc_aucs(&classes, &scores);
    let report = EvalReport {
        checkpoint: predictor.run_dir.clone(),
        arch: predictor.card.arch,
        source: source.to_string(),
        n: scores.labels.len(),
        classes: classes.clone(),
        accuracy: accuracy(&scores.labels, &predicted),
        per_class: classes.iter().cloned().zip(per.iter().cloned()).collect(),
        macro_avg: macro_average(&per),
        weighted_avg: weighted_average(&per),
        confusion_matrix: cm,
        roc_auc: roc_auc_binary,
        roc_auc_ovr: ovr,
        roc_auc_macro: ovr_macro,
        balanced_accuracy,
        cohen_kappa,
        pr_auc: pr_aucs(&classes, &scores),
        threshold,
        sensitivity: binary.then(|| per[1].recall).flatten(),
        specificity: binary.then(|| per[0].recall).flatten(),
        ci95,
        ece,
        target_sensitivity: chosen.map(|o| o.target_sensitivity),
        threshold_youden: chosen.and_then(|o| here(o.youden)),
        threshold_at_sensitivity: chosen.and_then(|o| here(o.at_sensitivity)),
        loss: scores.loss,
        ood: ood_summary(&scores, predictor.card.ood.as_ref()),
    };
    let scored = scored_images(&set.paths, &scores, &predicted);
    Ok((report, scored))
}

/// Expected calibration error before (temperature 1) and after temperature scaling.
fn calibration(scores: &SetScores, temperature: f64) -> Ece {
    let raw: Vec<Vec<f64>> = scores
        .logits
        .iter()
        .map(|z| softmax_at_temperature(z, 1.0))
        .collect();
    Ece {
        before: expected_calibration_error(&raw, &scores.labels, ECE_BINS),
        after: expected_calibration_error(&scores.probs, &scores.labels, ECE_BINS),
        temperature,
    }
}

/// ROC-AUC: of the positive (second) class for two classes; else each class against the rest
/// (by name) and their macro mean.
#[allow(clippy::type_complexity)]
fn roc_aucs(
    classes: &[String],
    scores: &SetScores,
) -> (
    Option<f64>,
    Option<BTreeMap<String, Option<f64>>>,
    Option<f64>,
) {
    let k = classes.len();
    if k == 2 {
        let s: Vec<f64> = scores.probs.iter().map(|p| p[1]).collect();
        let pos: Vec<bool> = scores.labels.iter().map(|&l| l == 1).collect();
        (roc_auc(&s, &pos), None, None)
    } else {
        let per_auc = roc_auc_ovr(&scores.probs, &scores.labels, k);
        let macro_auc = mean_defined(&per_auc);
        let map = classes.iter().cloned().zip(per_auc).collect();
        (None, Some(map), macro_auc)
    }
}

/// Average precision: of the positive (second) class for two classes, else of each class
/// against the rest.
fn pr_aucs(classes: &[String], scores: &SetScores) -> BTreeMap<String, Option<f64>> {
    if classes.len() == 2 {
        let s: Vec<f64> = scores.probs.iter().map(|p| p[1]).collect();
        let pos: Vec<bool> = scores.labels.iter().map(|&l| l == 1).collect();
        BTreeMap::from([(classes[1].clone(), average_precision(&s, &pos))])
    } else {
        classes
            .iter()
            .cloned()
            .zip(average_precision_ovr(
                &scores.probs,
                &scores.labels,
                classes.len(),
            ))
            .collect()
    }
}

/// How many of the set the guard flags, when the run has one.
pub(crate) fn ood_summary(
    scores: &SetScores,
    guard: Option<&crate::ood::OodCard>,
) -> Option<OodSummary> {
    let (s, o) = scores.ood.as_ref().zip(guard)?;
    let flagged = s
        .iter()
        .filter(|&&v| crate::ood::is_flagged(v, o.threshold))
        .count();
    Some(OodSummary {
        threshold: o.threshold,
        flagged,
        flag_rate: flagged as f64 / s.len().max(1) as f64,
        expected_flags: o
            .calibration
            .map(|[n, above]| crate::ood::flag_count_range(n, above, s.len())),
    })
}

/// Stratified bootstrap 95% intervals of accuracy, AUC and (two classes) sensitivity and
/// specificity: 1000 resamples of the clusters (groups, or each image its own), seed 0.
fn bootstrap_intervals(
    probs: &[Vec<f64>],
    labels: &[usize],
    predicted: &[usize],
    k: usize,
    clusters: &[usize],
) -> Ci95 {
    let ci = |stat: &dyn Fn(&[usize]) -> Option<f64>| {
        cluster_bootstrap_ci95(labels, clusters, BOOTSTRAP_RESAMPLES, 0, stat)
    };
    let binary = k == 2;
    let subset_auc = |idx: &[usize]| {
        let probs: Vec<Vec<f64>> = idx.iter().map(|&i| probs[i].clone()).collect();
        let y: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
        crate::metrics::summary_auc(&probs, &y, k)
    };
    let rate = |want: bool| {
        move |idx: &[usize]| {
            let rows: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&i| (labels[i] == 1) == want)
                .collect();
            (!rows.is_empty()).then(|| {
                rows.iter()
                    .filter(|&&i| (predicted[i] == 1) == want)
                    .count() as f64
                    / rows.len() as f64
            })
        }
    };
    Ci95 {
        accuracy: ci(&|idx| {
            Some(
                idx.iter().filter(|&&i| predicted[i] == labels[i]).count() as f64
                    / idx.len().max(1) as f64,
            )
        }),
        roc_auc: ci(&subset_auc),
        sensitivity: binary.then(|| ci(&rate(true))).flatten(),
        specificity: binary.then(|| ci(&rate(false))).flatten(),
        method: "image".into(),
        groups: None,
    }
}

/// Each image with its label, decision, probabilities and logits, for predictions.csv.
fn scored_images(paths: &[PathBuf], scores: &SetScores, predicted: &[usize]) -> Vec<ScoredImage> {
    paths
        .iter()
        .zip(&scores.labels)
        .zip(predicted)
        .enumerate()
        .map(|(i, ((path, &label), &predicted))| ScoredImage {
            path: path.clone(),
            label,
            predicted,
            probs: scores.probs[i].clone(),
            logits: scores.logits[i].clone(),
            ood_score: scores.ood.as_ref().map(|o| o[i]),
        })
        .collect()
}
