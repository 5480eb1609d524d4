//! Operating points of a two-class screening model, and bootstrap confidence intervals.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::metrics::classification::counts_by_threshold;

/// A decision threshold on the positive class's probability, with its sensitivity and
/// specificity (positive when the probability is at least the threshold).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct OperatingPoint {
    /// The threshold.
    pub threshold: f64,
    /// True-positive rate at the threshold.
    pub sensitivity: f64,
    /// True-negative rate at the threshold.
    pub specificity: f64,
}

/// Sensitivity and specificity at `threshold`; `None` unless both classes occur.
pub fn at_threshold(scores: &[f64], positive: &[bool], threshold: f64) -> Option<OperatingPoint> {
    let (mut tp, mut fn_, mut tn, mut fp) = (0usize, 0usize, 0usize, 0usize);
    for (&s, &p) in scores.iter().zip(positive) {
        match (p, s >= threshold) {
            (true, true) => tp += 1,
            (true, false) => fn_ += 1,
            (false, false) => tn += 1,
            (false, true) => fp += 1,
        }
    }
    (tp + fn_ > 0 && tn + fp > 0).then(|| OperatingPoint {
        threshold,
        sensitivity: tp as f64 / (tp + fn_) as f64,
        specificity: tn as f64 / (tn + fp) as f64,
    })
}

/// Every distinct score's operating point, highest first. Each threshold sits midway between
/// that score and the next lower one: the same decisions on these scores, but a margin on both
/// sides for new ones (on perfectly separated validation scores a threshold at a positive's
/// score, often a saturated 1.0, would call most new positives negative). The lowest score
/// keeps itself as its threshold.
fn candidates(scores: &[f64], positive: &[bool]) -> Vec<OperatingPoint> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Vec::new();
    }
    let counts = counts_by_threshold(scores, positive);
    counts
        .iter()
        .enumerate()
        .map(|(i, &(score, tp, fp))| OperatingPoint {
            threshold: counts
                .get(i + 1)
                .map_or(score, |next| (score + next.0) / 2.0),
            sensitivity: tp as f64 / n_pos as f64,
            specificity: (n_neg - fp) as f64 / n_neg as f64,
        })
        .collect()
}

/// The threshold maximising Youden's J = sensitivity + specificity - 1 (the highest such
/// threshold on ties).
pub fn youden(scores: &[f64], positive: &[bool]) -> Option<OperatingPoint> {
    candidates(scores, positive)
        .into_iter()
        .fold(None, |best: Option<OperatingPoint>, p| {
            let j = p.sensitivity + p.specificity;
            match best {
                Some(b) if b.sensitivity + b.specificity >= j => Some(b),
                _ => Some(p),
            }
        })
}

/// The highest threshold whose sensitivity reaches `target` (screening: sensitivity first).
pub fn at_sensitivity(scores: &[f64], positive: &[bool], target: f64) -> Option<OperatingPoint> {
    candidates(scores, positive)
        .into_iter()
        .find(|p| p.sensitivity >= target)
}

/// A 95% interval of a statistic by the stratified bootstrap: each resample draws, with
/// replacement, as many samples of each class as the class has; the statistic is computed on
/// the resampled indices; the 2.5th and 97.5th percentiles of the defined values are returned.
pub fn bootstrap_ci95<F>(labels: &[usize], resamples: usize, seed: u64, stat: F) -> Option<[f64; 2]>
where
    F: Fn(&[usize]) -> Option<f64>,
{
    let own: Vec<usize> = (0..labels.len()).collect();
    cluster_bootstrap_ci95(labels, &own, resamples, seed, stat)
}

/// The cluster bootstrap: `clusters[i]` is sample i's group (a patient); each resample draws
/// whole groups with replacement, stratified by the group's class (its majority label, the
/// lowest on a tie), as many from each class as it has groups, and takes all their samples.
/// Several images of one patient are not independent, so this interval is the honest one when
/// groups are known. With every sample its own group it is [`bootstrap_ci95`], draw for draw.
pub fn cluster_bootstrap_ci95<F>(
    labels: &[usize],
    clusters: &[usize],
    resamples: usize,
    seed: u64,
    stat: F,
) -> Option<[f64; 2]>
where
    F: Fn(&[usize]) -> Option<f64>,
{
    let n_classes = labels.iter().max().map_or(0, |m| m + 1);
    // Members of each cluster, clusters in order of first appearance.
    let mut order: Vec<usize> = Vec::new();
    let mut members: std::collections::HashMap<usize, Vec<usize>> = Default::default();
    for (i, &c) in clusters.iter().enumerate() {
        members
            .entry(c)
            .or_insert_with(|| {
                order.push(c);
                Vec::new()
            })
            .push(i);
    }
    let mut by_class: Vec<Vec<&[usize]>> = vec![Vec::new(); n_classes];
    for c in &order {
        let m = &members[c];
        let mut votes = vec![0usize; n_classes];
        for &i in m {
            votes[labels[i]] += 1;
        }
        let class = (0..n_classes)
            .max_by_key(|&k| (votes[k], n_classes - k))
            .unwrap_or(0);
        by_class[class].push(m);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values: Vec<f64> = Vec::with_capacity(resamples);
    let mut idx = Vec::with_capacity(labels.len());
    for _ in 0..resamples {
        idx.clear();
        for groups in by_class.iter().filter(|g| !g.is_empty()) {
            for _ in 0..groups.len() {
                idx.extend_from_slice(groups[rng.gen_range(0..groups.len())]);
            }
        }
        if let Some(v) = stat(&idx) {
            values.push(v);
        }
    }
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let q =
        |p: f64| values[((p * (values.len() - 1) as f64).round() as usize).min(values.len() - 1)];
    Some([q(0.025), q(0.975)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cluster bootstrap by hand: labels [0,0,0,1,1], patients [a,a,b,c,c]. Class 0 has
    /// patients a (2 images) and b (1), class 1 has c (2): a resample draws two of {a, b} and
    /// one c, so its size is 2 + (4, 3 or 2). Replaying the generator's draws gives each
    /// resample's size; the image bootstrap always has 5.
    #[test]
    fn cluster_bootstrap_resamples_whole_patients() {
        let labels = [0, 0, 0, 1, 1];
        let clusters = [7, 7, 3, 9, 9];
        let size = |idx: &[usize]| Some(idx.len() as f64);
        let sizes_of = |resamples: usize, seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut sizes: Vec<f64> = (0..resamples)
                .map(|_| {
                    let class0: usize = (0..2).map(|_| [2, 1][rng.gen_range(0..2)]).sum();
                    let _ = rng.gen_range(0..1); // patient c, the only one of class 1
                    (class0 + 2) as f64
                })
                .collect();
            sizes.sort_by(|a, b| a.total_cmp(b));
            sizes
        };
        for seed in 0..5 {
            let hand = sizes_of(40, seed);
            let ci = cluster_bootstrap_ci95(&labels, &clusters, 40, seed, size).unwrap();
            let q = |p: f64| hand[(p * 39.0_f64).round() as usize];
            assert_eq!(ci, [q(0.025), q(0.975)], "seed {seed}");
        }
        assert_eq!(bootstrap_ci95(&labels, 40, 0, size), Some([5.0, 5.0]));
        // Every image its own patient: the image bootstrap, draw for draw.
        let auc_like = |idx: &[usize]| Some(idx.iter().map(|&i| (i * i) as f64).sum::<f64>());
        assert_eq!(
            cluster_bootstrap_ci95(&labels, &[0, 1, 2, 3, 4], 100, 3, auc_like),
            bootstrap_ci95(&labels, 100, 3, auc_like)
        );
    }

    // Scores and labels (1 = positive), worked by hand:
    // cut below 0.9: sens 1/4 spec 4/4 | 0.8: 2/4, 4/4 | 0.7: 2/4, 3/4 | 0.6: 3/4, 3/4 |
    // 0.4: 4/4, 3/4 | 0.3: 4/4, 2/4 | 0.2: 4/4, 1/4 | 0.1: 4/4, 0/4. The threshold of a cut
    // below score s is midway to the next lower score.
    const S: [f64; 8] = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1];
    const P: [bool; 8] = [true, true, false, true, true, false, false, false];

    #[test]
    fn youden_picks_the_best_j() {
        let p = youden(&S, &P).unwrap();
        assert!((p.threshold - 0.35).abs() < 1e-12, "{p:?}");
        assert_eq!((p.sensitivity, p.specificity), (1.0, 0.75));
    }

    #[test]
    fn highest_threshold_reaching_the_sensitivity() {
        let p = at_sensitivity(&S, &P, 0.7).unwrap();
        assert!((p.threshold - 0.5).abs() < 1e-12, "{p:?}");
        assert_eq!((p.sensitivity, p.specificity), (0.75, 0.75));
        let p = at_sensitivity(&S, &P, 0.95).unwrap();
        assert!((p.threshold - 0.35).abs() < 1e-12, "{p:?}");
        // The decisions at the threshold are the ones counted.
        assert_eq!(at_threshold(&S, &P, p.threshold), Some(p));
        // Perfectly separated, saturated positives: the threshold leaves a margin below 1.
        let p = at_sensitivity(&[1.0, 1.0, 0.2, 0.1], &[true, true, false, false], 0.95).unwrap();
        assert!((p.threshold - 0.6).abs() < 1e-12, "{p:?}");
    }

    #[test]
    fn bootstrap_interval_brackets_the_value_and_is_seeded() {
        let labels: Vec<usize> = (0..200).map(|i| usize::from(i % 4 == 0)).collect();
        let correct: Vec<bool> = (0..200).map(|i| i % 10 != 0).collect();
        let acc = |idx: &[usize]| {
            Some(idx.iter().filter(|&&i| correct[i]).count() as f64 / idx.len() as f64)
        };
        let ci = bootstrap_ci95(&labels, 1000, 7, acc).unwrap();
        assert!(ci[0] < 0.9 && 0.9 < ci[1] && ci[1] - ci[0] < 0.12, "{ci:?}");
        assert_eq!(Some(ci), bootstrap_ci95(&labels, 1000, 7, acc));
    }
}
