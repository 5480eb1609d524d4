//! The out-of-distribution guard: "this image does not look like the images this model was
//! trained on", said before any class.
//!
//! Method: class-conditional Gaussians with one shared covariance on the penultimate features
//! (the last stage's feature maps, averaged over space), as Lee et al. (2018, "A simple unified
//! framework for detecting out-of-distribution samples"); an image's score is its smallest
//! squared Mahalanobis distance to a class mean. The covariance is shrunk towards a multiple of
//! the identity by the Ledoit-Wolf formula (sklearn's `ledoit_wolf`), as the features have
//! hundreds to a thousand dimensions and a few thousand training images. Why this and not the
//! classifier's own confidence: measured on the Kermany model (scripts/experiments/ood_measure.sh,
//! docs/serve.md), its AUROC against photos, noise and synth X-rays is 0.62-0.80, this one's
//! 0.999-1.000; a two-class head answers a photograph as confidently as an X-ray, while distance
//! in feature space does not depend on the head having an opinion. (The energy score of Liu et
//! al. 2020 reads the same logits; it was not measured here.) The threshold is set on the validation split so that at most
//! `ood.max_flag_rate` (default 5%) of in-distribution validation images are flagged.
//!
//! The detector lives beside the weights as `ood.safetensors` (class means, precision matrix,
//! threshold); model.json records its summary (`ood`). Run folders made before the guard have
//! neither and keep working: predict, eval and serve say that no guard is fitted.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::loader::{stream_batches, ImageSet};
use crate::error::TorchResultExt;
use crate::models::Classifier;
use crate::progress;

/// The detector's file in a run folder.
pub const FILE: &str = "ood.safetensors";

/// The plain message shown and printed for a flagged image.
pub const MESSAGE: &str = "this image does not look like the images this model was trained on";

/// What model.json records of the guard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodCard {
    /// How scores are computed: `mahalanobis` (the only method so far).
    pub method: String,
    /// Scores above this are out of distribution.
    pub threshold: f64,
    /// The largest share of validation images the threshold was allowed to flag.
    pub max_flag_rate: f64,
    /// The share it flags.
    pub val_flag_rate: f64,
    /// The share of new in-distribution images it is expected to flag, `(above + 1) / (n + 1)`
    /// ([`expected_flag_rate`]; absent in runs made before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_flag_rate: Option<f64>,
    /// Its 90% interval over draws of the validation set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_flag_interval: Option<[f64; 2]>,
    /// The validation images the threshold was set on, and how many of them it leaves above
    /// (absent in runs made before them): what [`flag_count_range`] predicts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<[usize; 2]>,
    /// Training images the class means and covariance were fitted on.
    pub fit_images: usize,
    /// Feature dimensions.
    pub dims: usize,
    /// Ledoit-Wolf shrinkage of the covariance towards a multiple of the identity (0 to 1).
    pub shrinkage: f64,
}

/// A fitted detector.
pub struct OodDetector {
    /// Class means, `[k, d]`, double.
    means: Tensor,
    /// Inverse of the shrunk shared covariance, `[d, d]`, double.
    precision: Tensor,
    /// Scores above this are out of distribution.
    pub threshold: f64,
    /// The covariance's shrinkage.
    pub shrinkage: f64,
}

impl std::fmt::Debug for OodDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OodDetector")
            .field("dims", &self.dims())
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl OodDetector {
    /// Fits class means and a shared, Ledoit-Wolf-shrunk covariance to `features` (`[n, d]`)
    /// with class `labels` out of `k`; the threshold is left infinite until
    /// [`OodDetector::set_threshold`].
    pub fn fit(features: &Tensor, labels: &[usize], k: usize) -> Result<OodDetector> {
        let x = features.to_kind(Kind::Double).to_device(Device::Cpu);
        let (n, d) = (x.size()[0], x.size()[1]);
        anyhow::ensure!(
            n as usize == labels.len() && n > 1,
            "out-of-distribution guard: {n} feature rows for {} labels",
            labels.len()
        );
        let y = Tensor::from_slice(&labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
        let mut means = Vec::with_capacity(k);
        for c in 0..k as i64 {
            let rows = y.eq(c).nonzero().squeeze_dim(1);
            // A class without training images keeps a mean no image can be near.
            means.push(if rows.size()[0] == 0 {
                Tensor::full([d], 1e6, (Kind::Double, Device::Cpu))
            } else {
                x.index_select(0, &rows)
                    .mean_dim(&[0i64][..], false, Kind::Double)
            });
        }
        let means = Tensor::stack(&means, 0);
        let centred = &x - means.index_select(0, &y);
        let (cov, shrinkage) = ledoit_wolf(&centred);
        let precision = Tensor::linalg_inv(&cov);
        Ok(OodDetector {
            means,
            precision,
            threshold: f64::INFINITY,
            shrinkage,
        })
    }

    /// Feature dimensions.
    pub fn dims(&self) -> usize {
        self.precision.size()[0] as usize
    }

    /// Each row's smallest squared Mahalanobis distance to a class mean.
    pub fn scores(&self, features: &Tensor) -> Vec<f64> {
        let x = features.to_kind(Kind::Double).to_device(Device::Cpu);
        let per_class: Vec<Tensor> = (0..self.means.size()[0])
            .map(|c| {
                let diff = &x - self.means.get(c);
                (diff.matmul(&self.precision) * &diff).sum_dim_intlist(
                    &[1i64][..],
                    false,
                    Kind::Double,
                )
            })
            .collect();
        let min = Tensor::stack(&per_class, 1).amin(&[1i64][..], false);
        Vec::<f64>::try_from(min).unwrap_or_default()
    }

    /// Each image's score from the last stage's feature maps `[n, c, h, w]` (pooled over space
    /// first): what inference computes beside the head, from the same forward pass.
    pub fn score_maps(&self, maps: &Tensor) -> Vec<f64> {
        self.scores(&pool(maps))
    }

    /// Sets the threshold so that at most `max_flag_rate` of `val_scores` lie above it, and
    /// returns the share that does.
    pub fn set_threshold(&mut self, val_scores: &[f64], max_flag_rate: f64) -> f64 {
        self.threshold = threshold_for(val_scores, max_flag_rate);
        flag_rate(val_scores, self.threshold)
    }

    /// Writes the detector as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let threshold = Tensor::from_slice(&[self.threshold, self.shrinkage]);
        // safetensors takes only contiguous tensors (an inverse may come back transposed).
        let (means, precision) = (self.means.contiguous(), self.precision.contiguous());
        crate::fsutil::write_with(path, |tmp| {
            Tensor::write_safetensors(
                &[
                    ("means", &means),
                    ("precision", &precision),
                    ("threshold_shrinkage", &threshold),
                ],
                tmp,
            )
            .torch()
            .with_context(|| format!("cannot write {}", tmp.display()))
        })
    }

    /// Reads a detector written by [`OodDetector::save`].
    pub fn load(path: &Path) -> Result<OodDetector> {
        let named = Tensor::read_safetensors(path)
            .torch()
            .with_context(|| format!("cannot read {}", path.display()))?;
        let get = |name: &str| {
            named
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.to_kind(Kind::Double))
                .with_context(|| format!("{}: no tensor {name}", path.display()))
        };
        let ts = Vec::<f64>::try_from(get("threshold_shrinkage")?).unwrap_or_default();
        Ok(OodDetector {
            means: get("means")?,
            precision: get("precision")?,
            threshold: ts.first().copied().unwrap_or(f64::INFINITY),
            shrinkage: ts.get(1).copied().unwrap_or(0.0),
        })
    }
}

/// The covariance of centred rows `x` (`[n, d]`, divided by n) shrunk towards `mu I` (mu its
/// mean eigenvalue) by the Ledoit-Wolf (2004) estimate of the best shrinkage, and that
/// shrinkage. The same formula as scikit-learn's `ledoit_wolf` with `assume_centered=True`.
pub fn ledoit_wolf(x: &Tensor) -> (Tensor, f64) {
    let (n, d) = (x.size()[0] as f64, x.size()[1]);
    let s = x.tr().matmul(x) / n;
    let mu = s.trace().double_value(&[]) / d as f64;
    let eye = Tensor::eye(d, (Kind::Double, Device::Cpu));
    let delta = (&s - &eye * mu)
        .square()
        .sum(Kind::Double)
        .double_value(&[])
        / d as f64;
    // beta = (1/n^2) sum_i ||x_i x_i^T - S||_F^2 / d, expanded so that no d x d matrix per
    // image is formed: ||x_i||^4 - 2 x_i^T S x_i + ||S||_F^2.
    let norms2 = x.square().sum_dim_intlist(&[1i64][..], false, Kind::Double);
    let quad = (x.matmul(&s) * x).sum_dim_intlist(&[1i64][..], false, Kind::Double);
    let s_f2 = s.square().sum(Kind::Double).double_value(&[]);
    let total = (norms2.square() - quad * 2.0)
        .sum(Kind::Double)
        .double_value(&[])
        + n * s_f2;
    let beta = (total / (n * n) / d as f64).min(delta).max(0.0);
    let shrinkage = if delta > 0.0 { beta / delta } else { 1.0 };
    let cov = &s * (1.0 - shrinkage) + eye * (shrinkage * mu);
    (cov, shrinkage)
}

/// Whether a score is out of distribution at `threshold` (a score that is not a number is: an
/// image whose features overflowed is nothing the model has seen).
pub fn is_flagged(score: f64, threshold: f64) -> bool {
    score.is_nan() || score > threshold
}

/// The threshold set on in-distribution `scores` (validation) so that a new in-distribution
/// image is flagged with probability at most `rate`: split conformal prediction. Leaving `a` of
/// `n` scores above the threshold flags a new exchangeable score with probability
/// `(a + 1) / (n + 1)`, so `a = floor(rate (n + 1)) - 1`. (The plain empirical quantile, which
/// leaves `floor(rate n)` above, flags 6.6% of new images on 60 validation images at 5%.) With
/// fewer than `1 / rate - 1` scores no threshold can promise `rate`; the largest score is used.
pub fn threshold_for(scores: &[f64], rate: f64) -> f64 {
    let mut sorted: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    if sorted.is_empty() {
        return f64::INFINITY;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let allowed = ((rate.clamp(0.0, 1.0) * (n + 1) as f64).floor() as usize).saturating_sub(1);
    sorted[n - 1 - allowed.min(n - 1)]
}

/// The share of new in-distribution images a threshold flags when `above` of `n` validation
/// scores lie above it: its expectation `(above + 1) / (n + 1)` and a 90% interval. Over draws
/// of the validation set, the probability that a new score exceeds the threshold follows
/// Beta(above + 1, n - above) (the order statistic's coverage); the interval is its 5% and 95%
/// quantiles.
pub fn expected_flag_rate(n: usize, above: usize) -> (f64, [f64; 2]) {
    let (a, b) = ((above + 1) as f64, (n.saturating_sub(above)).max(1) as f64);
    (
        a / (a + b),
        [beta_quantile(0.05, a, b), beta_quantile(0.95, a, b)],
    )
}

/// The range of flag counts `[low, high]` that `n_new` new in-distribution images fall in
/// with probability at least 90%, for a threshold that left `above` of `n` validation scores
/// above it. The count is beta-binomial: Binomial(`n_new`, p) with p ~ Beta(above + 1,
/// n - above) as in [`expected_flag_rate`], so it carries both the validation set's and the
/// new set's sampling error. `low` and `high` leave at most 5% on each side. A set flagged more
/// often than `high` differs from validation by more than chance.
pub fn flag_count_range(n: usize, above: usize, n_new: usize) -> [usize; 2] {
    let pmf = beta_binomial_pmf(
        n_new,
        (above + 1) as f64,
        n.saturating_sub(above).max(1) as f64,
    );
    let (mut low, mut below) = (0, 0.0);
    while low < n_new && below + pmf[low] <= 0.05 {
        below += pmf[low];
        low += 1;
    }
    let (mut high, mut beyond) = (n_new, 0.0);
    while high > low && beyond + pmf[high] <= 0.05 {
        beyond += pmf[high];
        high -= 1;
    }
    [low, high]
}

/// P(K = k) for k = 0..=n of the beta-binomial distribution (n, a, b).
fn beta_binomial_pmf(n: usize, a: f64, b: f64) -> Vec<f64> {
    use puruspe::ln_gamma;
    let ln_beta = |x: f64, y: f64| ln_gamma(x) + ln_gamma(y) - ln_gamma(x + y);
    let nf = n as f64;
    (0..=n)
        .map(|k| {
            let k = k as f64;
            let ln_choose = ln_gamma(nf + 1.0) - ln_gamma(k + 1.0) - ln_gamma(nf - k + 1.0);
            (ln_choose + ln_beta(k + a, nf - k + b) - ln_beta(a, b)).exp()
        })
        .collect()
}

/// The `p` quantile of Beta(a, b): the inverse regularized incomplete beta function.
fn beta_quantile(p: f64, a: f64, b: f64) -> f64 {
    puruspe::invbetai(p, a, b)
}

/// The share of `scores` above `threshold`.
pub fn flag_rate(scores: &[f64], threshold: f64) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().filter(|&&s| s > threshold).count() as f64 / scores.len() as f64
}

/// The penultimate features of a batch: the last stage's maps averaged over space, `[n, c]`.
pub fn penultimate(model: &dyn Classifier, xs: &Tensor) -> Tensor {
    pool(&model.features(xs, false))
}

/// Feature maps `[n, c, h, w]` averaged over space, `[n, c]`.
fn pool(maps: &Tensor) -> Tensor {
    maps.mean_dim(&[2i64, 3][..], false, Kind::Float)
}

/// Penultimate features `[n, d]` (CPU, double) and labels of the images `indices` of `set`.
pub fn set_features(
    model: &dyn Classifier,
    set: Arc<ImageSet>,
    indices: Vec<usize>,
    batch_size: usize,
    device: Device,
    what: &str,
) -> Result<(Tensor, Vec<usize>)> {
    let spec = set.spec().clone();
    let bar = progress::bar(indices.len() as u64, what);
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    for batch in stream_batches(set.clone(), indices, batch_size, None, 0, 2) {
        let batch = batch?;
        let xs = batch.images_tensor(&spec, device);
        let f = tch::no_grad(|| penultimate(model, &xs));
        feats.push(f.to_kind(Kind::Double).to_device(Device::Cpu));
        labels.extend(batch.indices.iter().map(|&i| set.labels[i]));
        bar.inc(batch.indices.len() as u64);
    }
    bar.finish_and_clear();
    anyhow::ensure!(
        !feats.is_empty(),
        "no images for the out-of-distribution guard"
    );
    Ok((Tensor::cat(&feats, 0), labels))
}

/// At most `limit` indices of `labels`, spread evenly over each class (deterministic): the
/// images the guard is fitted on when the training set is larger.
pub fn stratified_subset(labels: &[usize], limit: usize) -> Vec<usize> {
    if labels.len() <= limit {
        return (0..labels.len()).collect();
    }
    let keep = limit as f64 / labels.len() as f64;
    let k = labels.iter().max().map_or(0, |m| m + 1);
    let mut out = Vec::with_capacity(limit);
    for c in 0..k {
        let members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        let take = ((members.len() as f64 * keep).round() as usize).max(1.min(members.len()));
        let step = members.len() as f64 / take.max(1) as f64;
        out.extend((0..take).map(|j| members[(j as f64 * step) as usize]));
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_flag_at_most_the_rate() {
        let scores: Vec<f64> = (1..=100).map(f64::from).collect();
        // floor(0.05 * 101) - 1 = 4 left above: a new score exceeds the 96th of 100 with
        // probability 5/101 <= 5%.
        let t = threshold_for(&scores, 0.05);
        assert_eq!(t, 96.0);
        assert_eq!(flag_rate(&scores, t), 0.04);
        let more: Vec<f64> = (1..=119).map(f64::from).collect();
        assert_eq!(flag_rate(&more, threshold_for(&more, 0.05)), 5.0 / 119.0);
        // Too few scores to promise 5%: the largest.
        assert_eq!(threshold_for(&[3.0, 1.0, 2.0], 0.05), 3.0);
        assert_eq!(threshold_for(&scores, 0.0), 100.0);
        assert_eq!(flag_rate(&scores, threshold_for(&scores, 0.0)), 0.0);
        assert!(threshold_for(&[], 0.05).is_infinite());
    }

    /// The expected rate is (above + 1) / (n + 1); the interval holds Beta quantiles, checked
    /// against closed forms: Beta(1, b) has F(x) = 1 - (1 - x)^b, Beta(2, 2) has 3x^2 - 2x^3.
    #[test]
    fn expected_flag_rates_and_their_intervals() {
        let (mean, [lo, hi]) = expected_flag_rate(100, 4);
        assert!((mean - 5.0 / 101.0).abs() < 1e-12);
        assert!(lo < mean && mean < hi && lo > 0.0 && hi < 0.15, "{lo} {hi}");
        for (p, b) in [(0.05, 20.0), (0.5, 3.0), (0.95, 60.0)] {
            let exact = 1.0 - (1.0f64 - p).powf(1.0 / b);
            assert!((beta_quantile(p, 1.0, b) - exact).abs() < 1e-9, "{p} {b}");
        }
        for p in [0.05, 0.3, 0.5, 0.95] {
            let x = beta_quantile(p, 2.0, 2.0);
            assert!((3.0 * x * x - 2.0 * x * x * x - p).abs() < 1e-9, "{p}");
        }
    }

    /// The beta-binomial probabilities match a hand computation (n = 2, a = 1, b = 1: uniform
    /// over 0, 1, 2; n = 3, a = 2, b = 3: C(3, k) B(k + 2, 6 - k) / B(2, 3) = 10/35, 12/35,
    /// 9/35, 4/35), and the range holds at least 90% of them.
    #[test]
    fn flag_counts_of_a_new_set_follow_the_beta_binomial() {
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(&beta_binomial_pmf(2, 1.0, 1.0), &[1.0 / 3.0; 3]));
        let expect = [10.0 / 35.0, 12.0 / 35.0, 9.0 / 35.0, 4.0 / 35.0];
        assert!(close(&beta_binomial_pmf(3, 2.0, 3.0), &expect));
        for (n, above, n_new) in [(40, 1, 60), (100, 4, 60), (500, 24, 1000), (19, 0, 5)] {
            let pmf = beta_binomial_pmf(n_new, (above + 1) as f64, (n - above) as f64);
            assert!((pmf.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            let [lo, hi] = flag_count_range(n, above, n_new);
            let inside: f64 = pmf[lo..=hi].iter().sum();
            assert!(
                inside >= 0.9,
                "{n} {above} {n_new}: {lo}..{hi} holds {inside}"
            );
            // Narrowest such range from each side: one more count out would leave over 5%.
            assert!(pmf[..=lo].iter().sum::<f64>() > 0.05 || lo == 0);
            assert!(pmf[hi..].iter().sum::<f64>() > 0.05);
        }
        // 40 validation images, 1 above (expected 4.9%): on 60 test images 0 to 8 flags are
        // chance, 9 or more are not.
        assert_eq!(flag_count_range(40, 1, 60), [0, 8]);
    }

    /// Shrinkage and covariance match scikit-learn 1.9's `ledoit_wolf(X,
    /// assume_centered=True)` on X[i][j] = sin(1.3 i + 0.7 j) (j + 1), i < 10, j < 3.
    #[test]
    fn ledoit_wolf_matches_sklearn() {
        let rows: Vec<f64> = (0..10)
            .flat_map(|i| {
                (0..3).map(move |j| ((1.3 * i as f64 + 0.7 * j as f64).sin()) * (j + 1) as f64)
            })
            .collect();
        let x = Tensor::from_slice(&rows).view([10, 3]);
        let (cov, shrinkage) = ledoit_wolf(&x);
        assert!(
            (shrinkage - 0.11470531021961551).abs() < 1e-9,
            "{shrinkage}"
        );
        let c = Vec::<f64>::try_from(cov.flatten(0, 1)).unwrap();
        let sklearn = [
            0.69704528, 0.6390398, 0.17585143, 0.6390398, 1.97101376, 1.99301988, 0.17585143,
            1.99301988, 4.31238061,
        ];
        for (a, b) in c.iter().zip(sklearn) {
            assert!((a - b).abs() < 1e-7, "{c:?}");
        }
    }

    #[test]
    fn far_points_score_higher_than_near_ones() {
        // Two classes around (0, 0) and (10, 0), unit spread.
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..200 {
            let (a, b) = ((i as f64 * 0.37).sin(), (i as f64 * 0.71).cos());
            let c = i % 2;
            rows.extend([10.0 * c as f64 + a, b]);
            labels.push(c);
        }
        let x = Tensor::from_slice(&rows).view([200, 2]);
        let mut det = OodDetector::fit(&x, &labels, 2).unwrap();
        let near = Tensor::from_slice(&[0.2f64, 0.1, 9.8, -0.3]).view([2, 2]);
        let far = Tensor::from_slice(&[5.0f64, 0.0, 0.0, 8.0]).view([2, 2]);
        let (sn, sf) = (det.scores(&near), det.scores(&far));
        assert!(sn.iter().all(|&s| s < 1.0), "{sn:?}");
        assert!(sf.iter().all(|&s| s > 10.0), "{sf:?}");
        let rate = det.set_threshold(&det.scores(&x), 0.05);
        assert!(rate <= 0.05);
        let dir = tempfile::tempdir().unwrap();
        det.save(&dir.path().join(FILE)).unwrap();
        let back = OodDetector::load(&dir.path().join(FILE)).unwrap();
        assert_eq!(back.threshold, det.threshold);
        assert_eq!(back.scores(&far), sf);
    }

    #[test]
    fn subsets_keep_every_class() {
        let labels: Vec<usize> = (0..1000).map(|i| usize::from(i % 10 == 0)).collect();
        let s = stratified_subset(&labels, 100);
        assert!((95..=105).contains(&s.len()), "{}", s.len());
        let ones = s.iter().filter(|&&i| labels[i] == 1).count();
        assert!((8..=12).contains(&ones), "{ones}");
        assert_eq!(stratified_subset(&labels[..50], 100).len(), 50);
    }
}
