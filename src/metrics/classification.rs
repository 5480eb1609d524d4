//! Accuracy, the confusion matrix, per-class precision/recall/F1 and ROC-AUC.
//!
//! A value that is mathematically undefined (precision of a class never predicted, AUC of a
//! class absent from the labels) is `None`, which becomes `null` in JSON: never a silent 0 or NaN.

use serde::{Deserialize, Serialize};

/// Confusion matrix with rows = true class, columns = predicted class.
pub fn confusion_matrix(y_true: &[usize], y_pred: &[usize], n_classes: usize) -> Vec<Vec<usize>> {
    let mut cm = vec![vec![0; n_classes]; n_classes];
    for (&t, &p) in y_true.iter().zip(y_pred) {
        cm[t][p] += 1;
    }
    cm
}

/// Share of correct predictions; `None` for no samples.
pub fn accuracy(y_true: &[usize], y_pred: &[usize]) -> Option<f64> {
    if y_true.is_empty() {
        return None;
    }
    let correct = y_true.iter().zip(y_pred).filter(|(t, p)| t == p).count();
    Some(correct as f64 / y_true.len() as f64)
}

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    /// TP / (TP + FP); undefined when the class is never predicted.
    pub precision: Option<f64>,
    /// TP / (TP + FN); undefined when the class never occurs.
    pub recall: Option<f64>,
    /// 2TP / (2TP + FP + FN), the harmonic mean of precision and recall; undefined only when
    /// the class neither occurs nor is predicted.
    pub f1: Option<f64>,
    /// Number of true samples of the class.
    pub support: usize,
}

/// Per-class metrics from a confusion matrix.
pub fn per_class(cm: &[Vec<usize>]) -> Vec<ClassMetrics> {
    let n = cm.len();
    (0..n)
        .map(|c| {
            let tp = cm[c][c] as f64;
            let predicted: usize = (0..n).map(|r| cm[r][c]).sum();
            let support: usize = cm[c].iter().sum();
            let precision = (predicted > 0).then(|| tp / predicted as f64);
            let recall = (support > 0).then(|| tp / support as f64);
            // 2TP / (2TP + FP + FN): defined whenever the class occurs or is predicted.
            let denominator = predicted + support;
            let f1 = (denominator > 0).then(|| 2.0 * tp / denominator as f64);
            ClassMetrics {
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect()
}

/// Averages of per-class metrics over the classes where each is defined.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Averages {
    /// Mean precision.
    pub precision: Option<f64>,
    /// Mean recall.
    pub recall: Option<f64>,
    /// Mean F1.
    pub f1: Option<f64>,
}

fn average(
    per: &[ClassMetrics],
    weighted: bool,
    pick: fn(&ClassMetrics) -> Option<f64>,
) -> Option<f64> {
    let mut sum = 0.0;
    let mut weight = 0.0;
    for m in per {
        if let Some(v) = pick(m) {
            let w = if weighted { m.support as f64 } else { 1.0 };
            sum += w * v;
            weight += w;
        }
    }
    (weight > 0.0).then(|| sum / weight)
}

/// Unweighted mean over classes (macro average), skipping undefined values.
pub fn macro_average(per: &[ClassMetrics]) -> Averages {
    Averages {
        precision: average(per, false, |m| m.precision),
        recall: average(per, false, |m| m.recall),
        f1: average(per, false, |m| m.f1),
    }
}

/// Support-weighted mean over classes, skipping undefined values.
pub fn weighted_average(per: &[ClassMetrics]) -> Averages {
    Averages {
        precision: average(per, true, |m| m.precision),
        recall: average(per, true, |m| m.recall),
        f1: average(per, true, |m| m.f1),
    }
}

/// Area under the ROC curve for `scores` against boolean `positive` labels, by the
/// Mann-Whitney statistic with tied scores given their average rank (as scikit-learn).
/// `None` when either class is absent.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let mean_rank = (i + j + 2) as f64 / 2.0;
        for &k in &order[i..=j] {
            if positive[k] {
                rank_sum_pos += mean_rank;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// Walking the scores from the highest down, tied scores together: at each distinct score,
/// that threshold and the true and false positives at or above it.
pub fn counts_by_threshold(scores: &[f64], positive: &[bool]) -> Vec<(f64, usize, usize)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out = Vec::new();
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < order.len() {
        let threshold = scores[order[i]];
        while i < order.len() && scores[order[i]] == threshold {
            if positive[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        out.push((threshold, tp, fp));
    }
    out
}

/// Average precision (area under the precision-recall curve as scikit-learn computes it:
/// the sum over score thresholds of the recall gained times the precision there, tied scores
/// taken together). `None` without positives.
pub fn average_precision(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    if n_pos == 0 {
        return None;
    }
    let mut prev_recall = 0.0;
    let mut ap = 0.0;
    for (_, tp, fp) in counts_by_threshold(scores, positive) {
        let recall = tp as f64 / n_pos as f64;
        ap += (recall - prev_recall) * tp as f64 / (tp + fp) as f64;
        prev_recall = recall;
    }
    Some(ap)
}

/// One-vs-rest average precision per class.
pub fn average_precision_ovr(
    probs: &[Vec<f64>],
    y_true: &[usize],
    n_classes: usize,
) -> Vec<Option<f64>> {
    one_vs_rest(probs, y_true, n_classes, average_precision)
}

/// A binary score metric applied to each class against the rest.
fn one_vs_rest(
    probs: &[Vec<f64>],
    y_true: &[usize],
    n_classes: usize,
    metric: fn(&[f64], &[bool]) -> Option<f64>,
) -> Vec<Option<f64>> {
    (0..n_classes)
        .map(|c| {
            let scores: Vec<f64> = probs.iter().map(|p| p[c]).collect();
            let positive: Vec<bool> = y_true.iter().map(|&t| t == c).collect();
            metric(&scores, &positive)
        })
        .collect()
}

/// Balanced accuracy: the mean recall over the classes present in the labels.
pub fn balanced_accuracy(cm: &[Vec<usize>]) -> Option<f64> {
    let recalls: Vec<Option<f64>> = per_class(cm).iter().map(|m| m.recall).collect();
    mean_defined(&recalls)
}

/// Cohen's kappa: agreement between labels and predictions beyond chance. `None` when chance
/// agreement is already perfect (a single class everywhere).
pub fn cohen_kappa(cm: &[Vec<usize>]) -> Option<f64> {
    let n: usize = cm.iter().flatten().sum();
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let observed = (0..cm.len()).map(|k| cm[k][k]).sum::<usize>() as f64 / n;
    let expected: f64 = (0..cm.len())
        .map(|k| {
            let row: usize = cm[k].iter().sum();
            let col: usize = cm.iter().map(|r| r[k]).sum();
            row as f64 * col as f64 / (n * n)
        })
        .sum();
    (expected < 1.0).then(|| (observed - expected) / (1.0 - expected))
}

/// The ROC curve: (false-positive rate, true-positive rate) at every distinct threshold, from
/// (0, 0) to (1, 1). Empty unless both classes occur.
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64)> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Vec::new();
    }
    let points = counts_by_threshold(scores, positive)
        .into_iter()
        .map(|(_, tp, fp)| (fp as f64 / n_neg as f64, tp as f64 / n_pos as f64));
    std::iter::once((0.0, 0.0)).chain(points).collect()
}

/// The precision-recall curve as (recall, precision) at every distinct threshold, from the
/// lowest recall up, starting at scikit-learn's (0, 1). Empty without positives.
pub fn pr_curve(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64)> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    if n_pos == 0 {
        return Vec::new();
    }
    let points = counts_by_threshold(scores, positive)
        .into_iter()
        .map(|(_, tp, fp)| (tp as f64 / n_pos as f64, tp as f64 / (tp + fp) as f64));
    std::iter::once((0.0, 1.0)).chain(points).collect()
}

/// One-vs-rest ROC-AUC per class from probabilities `probs[sample][class]`.
pub fn roc_auc_ovr(probs: &[Vec<f64>], y_true: &[usize], n_classes: usize) -> Vec<Option<f64>> {
    one_vs_rest(probs, y_true, n_classes, roc_auc)
}

/// Mean of the defined values; `None` when none is.
pub fn mean_defined(values: &[Option<f64>]) -> Option<f64> {
    let defined: Vec<f64> = values.iter().flatten().copied().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

/// The summary AUC: the positive class's AUC for two classes, the macro one-vs-rest AUC for more.
pub fn summary_auc(probs: &[Vec<f64>], y_true: &[usize], n_classes: usize) -> Option<f64> {
    if n_classes == 2 {
        let scores: Vec<f64> = probs.iter().map(|p| p[1]).collect();
        let positive: Vec<bool> = y_true.iter().map(|&t| t == 1).collect();
        roc_auc(&scores, &positive)
    } else {
        mean_defined(&roc_auc_ovr(probs, y_true, n_classes))
    }
}

/// The predicted class: for two classes, class 1 when its probability reaches `threshold`;
/// for more, the most probable class.
pub fn decide(probs: &[f64], threshold: f64) -> usize {
    if probs.len() == 2 {
        usize::from(probs[1] >= threshold)
    } else {
        most_probable(probs)
    }
}

/// The index of the highest probability (the first on a tie; 0 for none).
pub fn most_probable(probs: &[f64]) -> usize {
    probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}
