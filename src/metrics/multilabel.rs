//! Multi-label metrics: each label scored on its own (its masked entries left out), and the
//! averages scikit-learn computes on indicator matrices (`average="macro"`/`"micro"`).
//!
//! `probs[i][l]` is image i's probability for label l, `targets[i][l]` its truth: 1, 0, or
//! below zero when masked (uncertain or blank under `ignore`).

use serde::{Deserialize, Serialize};

use crate::metrics::calibration::fit_binary_temperature;
use crate::metrics::classification::{average_precision, roc_auc};
use crate::metrics::operating::{at_sensitivity, youden};

/// The probabilities and truths of label `l` over the images where it is not masked.
pub fn column(probs: &[Vec<f64>], targets: &[Vec<f32>], l: usize) -> (Vec<f64>, Vec<bool>) {
    probs
        .iter()
        .zip(targets)
        .filter(|(_, t)| t[l] >= 0.0)
        .map(|(p, t)| (p[l], t[l] == 1.0))
        .unzip()
}

/// Labels of the rows (0 when there are none).
fn n_labels(targets: &[Vec<f32>]) -> usize {
    targets.first().map_or(0, Vec::len)
}

/// ROC-AUC of each label; `None` where its unmasked images lack positives or negatives.
pub fn per_label_auc(probs: &[Vec<f64>], targets: &[Vec<f32>]) -> Vec<Option<f64>> {
    (0..n_labels(targets))
        .map(|l| {
            let (s, y) = column(probs, targets, l);
            roc_auc(&s, &y)
        })
        .collect()
}

/// Average precision of each label; `None` without positives.
pub fn per_label_ap(probs: &[Vec<f64>], targets: &[Vec<f32>]) -> Vec<Option<f64>> {
    (0..n_labels(targets))
        .map(|l| {
            let (s, y) = column(probs, targets, l);
            average_precision(&s, &y)
        })
        .collect()
}

/// The mean of the defined values (scikit-learn's macro average over the labels it can score).
pub fn macro_mean(values: &[Option<f64>]) -> Option<f64> {
    let defined: Vec<f64> = values.iter().flatten().copied().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

/// Every unmasked entry as one binary problem (scikit-learn's `average="micro"`).
pub fn flattened(probs: &[Vec<f64>], targets: &[Vec<f32>]) -> (Vec<f64>, Vec<bool>) {
    let mut s = Vec::new();
    let mut y = Vec::new();
    for l in 0..n_labels(targets) {
        let (a, b) = column(probs, targets, l);
        s.extend(a);
        y.extend(b);
    }
    (s, y)
}

/// Micro-averaged ROC-AUC.
pub fn micro_auc(probs: &[Vec<f64>], targets: &[Vec<f32>]) -> Option<f64> {
    let (s, y) = flattened(probs, targets);
    roc_auc(&s, &y)
}

/// Micro-averaged average precision.
pub fn micro_ap(probs: &[Vec<f64>], targets: &[Vec<f32>]) -> Option<f64> {
    let (s, y) = flattened(probs, targets);
    average_precision(&s, &y)
}

/// The macro AUC the training run monitors: over the labels with at least `min_positives`
/// positive (and one negative) validation images.
pub fn monitored_auc(
    probs: &[Vec<f64>],
    targets: &[Vec<f32>],
    min_positives: usize,
) -> Option<f64> {
    let aucs: Vec<Option<f64>> = (0..n_labels(targets))
        .map(|l| {
            let (s, y) = column(probs, targets, l);
            let pos = y.iter().filter(|&&p| p).count();
            (pos >= min_positives).then(|| roc_auc(&s, &y)).flatten()
        })
        .collect();
    macro_mean(&aucs)
}

/// Decisions and counts of one label at its threshold.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LabelCounts {
    /// Positives called positive.
    pub tp: usize,
    /// Negatives called positive.
    pub fp: usize,
    /// Negatives called negative.
    pub tn: usize,
    /// Positives called negative.
    pub fn_: usize,
}

impl LabelCounts {
    /// tp / (tp + fn); `None` without positives.
    pub fn sensitivity(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// tn / (tn + fp); `None` without negatives.
    pub fn specificity(&self) -> Option<f64> {
        ratio(self.tn, self.tn + self.fp)
    }
    /// tp / (tp + fp); `None` when nothing is called positive.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }
    /// 2tp / (2tp + fp + fn), 0 when all three are 0 (scikit-learn's `zero_division=0`).
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_).unwrap_or(0.0)
    }
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// The labels (indices, in order) whose probability reaches their threshold: an image's
/// findings.
pub fn over_thresholds(probs: &[f64], thresholds: &[f64]) -> Vec<usize> {
    (0..probs.len())
        .filter(|&l| probs[l] >= thresholds[l])
        .collect()
}

/// Each label's counts at its threshold (positive when the probability is at least it).
pub fn counts_at(probs: &[Vec<f64>], targets: &[Vec<f32>], thresholds: &[f64]) -> Vec<LabelCounts> {
    (0..n_labels(targets))
        .map(|l| {
            let mut c = LabelCounts::default();
            for (p, t) in probs.iter().zip(targets) {
                let (t, called) = (t[l], p[l] >= thresholds[l]);
                if t < 0.0 {
                    continue;
                }
                match (t == 1.0, called) {
                    (true, true) => c.tp += 1,
                    (true, false) => c.fn_ += 1,
                    (false, true) => c.fp += 1,
                    (false, false) => c.tn += 1,
                }
            }
            c
        })
        .collect()
}

/// F1 of the pooled counts (scikit-learn's `f1_score(average="micro")`).
pub fn micro_f1(counts: &[LabelCounts]) -> f64 {
    let mut all = LabelCounts::default();
    for c in counts {
        all.tp += c.tp;
        all.fp += c.fp;
        all.fn_ += c.fn_;
    }
    all.f1()
}

/// The mean of the labels' F1 (scikit-learn's `f1_score(average="macro")`).
pub fn macro_f1(counts: &[LabelCounts]) -> f64 {
    counts.iter().map(LabelCounts::f1).sum::<f64>() / counts.len().max(1) as f64
}

/// The share of images whose every unmasked label is decided right (scikit-learn's
/// `accuracy_score` on indicator matrices, the "exact match" or subset accuracy).
pub fn exact_match(probs: &[Vec<f64>], targets: &[Vec<f32>], thresholds: &[f64]) -> f64 {
    let right = probs
        .iter()
        .zip(targets)
        .filter(|(p, t)| {
            t.iter()
                .enumerate()
                .all(|(l, &y)| y < 0.0 || (p[l] >= thresholds[l]) == (y == 1.0))
        })
        .count();
    right as f64 / probs.len().max(1) as f64
}

/// The share of unmasked entries decided right: 1 - scikit-learn's `hamming_loss`.
pub fn hamming_score(probs: &[Vec<f64>], targets: &[Vec<f32>], thresholds: &[f64]) -> f64 {
    let (mut right, mut all) = (0usize, 0usize);
    for (p, t) in probs.iter().zip(targets) {
        for (l, &y) in t.iter().enumerate() {
            if y >= 0.0 {
                all += 1;
                right += usize::from((p[l] >= thresholds[l]) == (y == 1.0));
            }
        }
    }
    right as f64 / all.max(1) as f64
}

/// How one label's threshold is chosen on validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdRule {
    /// Youden's J at its maximum.
    Youden,
    /// The highest threshold whose sensitivity reaches the target.
    Sensitivity(f64),
}

impl std::fmt::Display for ThresholdRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThresholdRule::Youden => write!(f, "youden"),
            ThresholdRule::Sensitivity(t) => write!(f, "sensitivity >= {t}"),
        }
    }
}

/// A threshold per label chosen on validation by its rule, or 0.5 where the label lacks
/// positives or negatives there.
pub fn thresholds_by(
    probs: &[Vec<f64>],
    targets: &[Vec<f32>],
    rules: &[ThresholdRule],
) -> Vec<f64> {
    (0..n_labels(targets))
        .map(|l| {
            let (s, y) = column(probs, targets, l);
            let point = match rules[l] {
                ThresholdRule::Youden => youden(&s, &y),
                ThresholdRule::Sensitivity(t) => at_sensitivity(&s, &y, t),
            };
            point.map_or(0.5, |p| p.threshold)
        })
        .collect()
}

/// Each label's column of raw logits and truths, masked entries left out.
pub fn logit_columns(logits: &[Vec<f64>], targets: &[Vec<f32>]) -> Vec<(Vec<f64>, Vec<bool>)> {
    (0..n_labels(targets))
        .map(|l| column(logits, targets, l))
        .collect()
}

/// The temperatures fitted on validation logits, one per label, or with `shared` one fitted
/// on every label's entries together (repeated per label).
pub fn fit_label_temperatures(logits: &[Vec<f64>], targets: &[Vec<f32>], shared: bool) -> Vec<f64> {
    let columns = logit_columns(logits, targets);
    if shared {
        vec![fit_binary_temperature(&columns); columns.len()]
    } else {
        columns
            .iter()
            .map(|c| fit_binary_temperature(std::slice::from_ref(c)))
            .collect()
    }
}

/// `sigmoid(logit / temperature)` per label.
pub fn calibrated(logits: &[Vec<f64>], temperatures: &[f64]) -> Vec<Vec<f64>> {
    logits
        .iter()
        .map(|z| {
            z.iter()
                .zip(temperatures)
                .map(|(z, t)| 1.0 / (1.0 + (-z / t.max(1e-6)).exp()))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 images, 3 labels. The expected values are scikit-learn 1.9.1's on the same arrays:
    /// `roc_auc_score(y, p, average=None/"macro"/"micro")`, `average_precision_score`,
    /// `f1_score(y, p >= 0.5, average="macro"/"micro")`, `accuracy_score` and `hamming_loss`.
    fn fixture() -> (Vec<Vec<f64>>, Vec<Vec<f32>>) {
        let y = [
            [1, 0, 1],
            [0, 0, 1],
            [1, 1, 0],
            [0, 0, 0],
            [1, 0, 1],
            [0, 1, 0],
            [0, 0, 1],
            [1, 1, 1],
            [0, 0, 0],
            [1, 0, 0],
        ];
        let p = [
            [0.9, 0.2, 0.3],
            [0.3, 0.6, 0.6],
            [0.4, 0.7, 0.4],
            [0.2, 0.3, 0.5],
            [0.6, 0.1, 0.9],
            [0.4, 0.8, 0.3],
            [0.5, 0.4, 0.55],
            [0.7, 0.2, 0.8],
            [0.6, 0.2, 0.1],
            [0.5, 0.3, 0.45],
        ];
        (
            p.iter().map(|r| r.to_vec()).collect(),
            y.iter()
                .map(|r| r.iter().map(|&v| v as f32).collect())
                .collect(),
        )
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn aucs_and_aps_match_scikit_learn() {
        let (p, y) = fixture();
        let auc = per_label_auc(&p, &y);
        for (got, want) in auc.iter().zip([0.82, 0.7619047619047619, 0.86]) {
            close(got.unwrap(), want);
        }
        close(macro_mean(&auc).unwrap(), 0.813968253968254);
        close(micro_auc(&p, &y).unwrap(), 0.832579185520362);
        let ap = per_label_ap(&p, &y);
        for (got, want) in
            ap.iter()
                .zip([0.8083333333333333, 0.7777777777777777, 0.9111111111111112])
        {
            close(got.unwrap(), want);
        }
        close(macro_mean(&ap).unwrap(), 0.8324074074074074);
        close(micro_ap(&p, &y).unwrap(), 0.8212077396287922);
    }

    #[test]
    fn decisions_at_thresholds_match_scikit_learn() {
        let (p, y) = fixture();
        let t = [0.5; 3];
        let counts = counts_at(&p, &y, &t);
        for (c, want) in counts.iter().zip([0.727272727273, 0.666666666667, 0.8]) {
            assert!((c.f1() - want).abs() < 1e-9);
        }
        close(macro_f1(&counts), 0.7313131313131315);
        close(micro_f1(&counts), 0.7407407407407407);
        close(exact_match(&p, &y, &t), 0.3);
        close(hamming_score(&p, &y, &t), 1.0 - 0.23333333333333334);
    }

    /// A masked entry is left out of every metric: masking one equals deleting it.
    #[test]
    fn masked_entries_are_left_out() {
        let (p, mut y) = fixture();
        y[3][0] = -1.0;
        let (p0, y0): (Vec<f64>, Vec<bool>) = p
            .iter()
            .zip(&y)
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, (p, t))| (p[0], t[0] == 1.0))
            .unzip();
        close(
            per_label_auc(&p, &y)[0].unwrap(),
            roc_auc(&p0, &y0).unwrap(),
        );
        let c = counts_at(&p, &y, &[0.5; 3]);
        assert_eq!(c[0].tp + c[0].fp + c[0].tn + c[0].fn_, 9);
        // Image 3 is wrong only on label 2 (0.5 called positive): masked there, it matches.
        close(exact_match(&p, &y, &[0.5; 3]), 0.3);
        y[3][2] = -1.0;
        close(exact_match(&p, &y, &[0.5; 3]), 0.4);
    }

    /// By hand on the fixture. Label 0 with sensitivity 1: its lowest positive is 0.4, the
    /// next lower score 0.3, so 0.35. Label 1 by Youden: at 0.7, 2 of 3 positives and no
    /// negative (J 0.667, the best), the next lower score 0.6, so 0.65. Label 2 with
    /// sensitivity 0.6: 3 of its 5 positives are at 0.6 or above, the next lower score is
    /// 0.55, so 0.575.
    #[test]
    fn thresholds_by_rule_by_hand() {
        let (p, y) = fixture();
        let rules = [
            ThresholdRule::Sensitivity(1.0),
            ThresholdRule::Youden,
            ThresholdRule::Sensitivity(0.6),
        ];
        let t = thresholds_by(&p, &y, &rules);
        for (got, want) in t.iter().zip([0.35, 0.65, 0.575]) {
            assert!((got - want).abs() < 1e-12, "{t:?}");
        }
        assert_eq!(rules[2].to_string(), "sensitivity >= 0.6");
    }

    /// Temperatures: per label, each label's own NLL minimum; shared, one value minimising the
    /// pooled NLL; scaled probabilities are sigmoid(z / T).
    #[test]
    fn label_temperatures_and_scaled_probabilities() {
        use crate::metrics::calibration::binary_nll_at_temperature;
        let logits = vec![
            vec![6.0, 0.5],
            vec![-6.0, -0.5],
            vec![6.0, 1.0],
            vec![-6.0, 0.2],
            vec![6.0, -1.0],
        ];
        // Label 0: four of five right at ±6, the NLL minimum near T = 4.33 (a grid in Python);
        // label 1: one pair out of order, the minimum near T = 0.54.
        let targets = vec![
            vec![1.0, 0.0],
            vec![0.0, 0.0],
            vec![1.0, 1.0],
            vec![1.0, 1.0],
            vec![1.0, -1.0],
        ];
        let per = fit_label_temperatures(&logits, &targets, false);
        let shared = fit_label_temperatures(&logits, &targets, true);
        let cols = logit_columns(&logits, &targets);
        assert_eq!(cols[1].0.len(), 4, "the masked entry is left out");
        for (l, c) in cols.iter().enumerate() {
            let at = |t: f64| binary_nll_at_temperature(std::slice::from_ref(c), t);
            assert!(at(per[l]) <= at(per[l] * 1.02) && at(per[l]) <= at(per[l] / 1.02));
        }
        assert!(
            (per[0] - 4.33).abs() < 0.01 && (per[1] - 0.54).abs() < 0.01,
            "{per:?}"
        );
        assert_eq!(shared[0], shared[1]);
        let pooled = |t: f64| binary_nll_at_temperature(&cols, t);
        assert!(pooled(shared[0]) <= pooled(shared[0] * 1.02));
        assert!(pooled(shared[0]) <= pooled(shared[0] / 1.02));
        let p = calibrated(&logits, &per);
        let want = 1.0 / (1.0 + (-6.0 / per[0]).exp());
        assert!((p[0][0] - want).abs() < 1e-12);
    }
}
