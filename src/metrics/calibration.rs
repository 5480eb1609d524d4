//! Calibration: expected calibration error and temperature scaling.

/// One confidence bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReliabilityBin {
    /// Lower edge (exclusive, but the first bin takes a confidence of exactly 0).
    pub lo: f64,
    /// Upper edge (inclusive).
    pub hi: f64,
    /// Samples whose top probability falls in the bin.
    pub count: usize,
    /// Mean top probability of those samples (`None` for an empty bin).
    pub confidence: Option<f64>,
    /// Share of those samples whose top class is right (`None` for an empty bin).
    pub accuracy: Option<f64>,
}

/// The reliability diagram's `bins` equal-width bins of top-class confidence (Guo et al.
/// 2017): per bin, how many samples, their mean confidence and their accuracy.
pub fn reliability_bins(probs: &[Vec<f64>], y_true: &[usize], bins: usize) -> Vec<ReliabilityBin> {
    let mut count = vec![0usize; bins];
    let mut conf_sum = vec![0f64; bins];
    let mut correct = vec![0usize; bins];
    for (p, &t) in probs.iter().zip(y_true) {
        let (k, &conf) = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("a probability row has a class");
        // Bins are (lo, hi]; a confidence of exactly 0 goes to the first.
        let b = ((conf * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[b] += 1;
        conf_sum[b] += conf;
        correct[b] += usize::from(k == t);
    }
    (0..bins)
        .map(|b| {
            let c = count[b] as f64;
            ReliabilityBin {
                lo: b as f64 / bins as f64,
                hi: (b + 1) as f64 / bins as f64,
                count: count[b],
                confidence: (count[b] > 0).then(|| conf_sum[b] / c),
                accuracy: (count[b] > 0).then(|| correct[b] as f64 / c),
            }
        })
        .collect()
}

/// Expected calibration error with `bins` equal-width confidence bins (Guo et al. 2017): the
/// confidence is the top probability, the bin's accuracy the share of its top classes that are
/// right; the gaps are weighted by the bin's share of samples. `None` for no samples.
pub fn expected_calibration_error(
    probs: &[Vec<f64>],
    y_true: &[usize],
    bins: usize,
) -> Option<f64> {
    if probs.is_empty() || bins == 0 {
        return None;
    }
    let n = probs.len() as f64;
    Some(
        reliability_bins(probs, y_true, bins)
            .iter()
            .filter_map(|b| {
                let (acc, conf) = (b.accuracy?, b.confidence?);
                Some((acc - conf).abs() * b.count as f64 / n)
            })
            .sum(),
    )
}

/// Mean negative log-likelihood of `logits / temperature`.
pub fn nll_at_temperature(logits: &[Vec<f64>], y_true: &[usize], temperature: f64) -> f64 {
    let total: f64 = logits
        .iter()
        .zip(y_true)
        .map(|(z, &t)| {
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max) / temperature;
            let lse = max
                + z.iter()
                    .map(|v| (v / temperature - max).exp())
                    .sum::<f64>()
                    .ln();
            lse - z[t] / temperature
        })
        .sum();
    total / logits.len().max(1) as f64
}

/// The temperature in [0.5, 10] that minimises the validation NLL (golden-section search on
/// log T; the NLL is unimodal there). 1 for no samples. The lower bound matters: on a
/// validation set the model separates perfectly, the NLL keeps falling as T goes to 0, which
/// would saturate every probability to 0 or 1.
pub fn fit_temperature(logits: &[Vec<f64>], y_true: &[usize]) -> f64 {
    if logits.is_empty() {
        return 1.0;
    }
    minimise_over_temperature(|t| nll_at_temperature(logits, y_true, t))
}

/// The temperature in [0.5, 10] minimising `nll` (unimodal in log T there), by golden-section
/// search on log T.
fn minimise_over_temperature(nll: impl Fn(f64) -> f64) -> f64 {
    let f = |log_t: f64| nll(log_t.exp());
    let (mut a, mut b) = (0.5f64.ln(), 10f64.ln());
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - ratio * (b - a);
    let mut d = a + ratio * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..80 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - ratio * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + ratio * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// Mean binary negative log-likelihood of `sigmoid(logit / temperature)` summed over the
/// columns `(logits, positive)` (one per label) and divided by their entries.
pub fn binary_nll_at_temperature(columns: &[(Vec<f64>, Vec<bool>)], temperature: f64) -> f64 {
    let mut total = 0.0;
    let mut n = 0usize;
    for (z, y) in columns {
        for (&z, &y) in z.iter().zip(y) {
            let s = z / temperature;
            // -log sigmoid(s) for a positive, -log sigmoid(-s) for a negative, stably.
            let m = if y { -s } else { s };
            total += m.max(0.0) + (-m.abs()).exp().ln_1p();
            n += 1;
        }
    }
    total / n.max(1) as f64
}

/// The temperature (in [0.5, 10]) minimising [`binary_nll_at_temperature`] over `columns`
/// together; 1 when no column has both a positive and a negative (the NLL of one class alone
/// falls all the way to a bound).
pub fn fit_binary_temperature(columns: &[(Vec<f64>, Vec<bool>)]) -> f64 {
    let usable: Vec<(Vec<f64>, Vec<bool>)> = columns
        .iter()
        .filter(|(_, y)| y.iter().any(|&p| p) && y.iter().any(|&p| !p))
        .cloned()
        .collect();
    if usable.is_empty() {
        return 1.0;
    }
    minimise_over_temperature(|t| binary_nll_at_temperature(&usable, t))
}

/// Softmax of `logits / temperature`.
pub fn softmax_at_temperature(logits: &[f64], temperature: f64) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits
        .iter()
        .map(|v| ((v - max) / temperature).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary NLL by hand: logits 2 (positive) and -1 (negative) at T = 2 are sigmoid(1) and
    /// 1 - sigmoid(-0.5): (ln(1 + e^-1) + ln(1 + e^-0.5)) / 2.
    #[test]
    fn binary_nll_by_hand() {
        let cols = vec![(vec![2.0, -1.0], vec![true, false])];
        let want = ((1.0 + (-1.0f64).exp()).ln() + (1.0 + (-0.5f64).exp()).ln()) / 2.0;
        assert!((binary_nll_at_temperature(&cols, 2.0) - want).abs() < 1e-12);
    }

    /// Overconfident logits (±6, a third of them on the wrong side): the fitted temperature is
    /// the NLL's minimum on a fine grid, well above 1, and beats T = 1; a column of one class
    /// alone gives T = 1.
    #[test]
    fn binary_temperature_is_the_nll_minimum() {
        let z: Vec<f64> = vec![6.0, 6.0, -6.0, 6.0, -6.0, -6.0, 3.0, -3.0, 6.0];
        let y = vec![true, true, false, false, false, true, true, false, true];
        let cols = vec![(z, y)];
        let t = fit_binary_temperature(&cols);
        let best_on_grid = (0..=950)
            .map(|i| 0.5 + i as f64 * 0.01)
            .min_by(|a, b| {
                binary_nll_at_temperature(&cols, *a)
                    .partial_cmp(&binary_nll_at_temperature(&cols, *b))
                    .unwrap()
            })
            .unwrap();
        assert!((t - best_on_grid).abs() < 0.011, "{t} vs {best_on_grid}");
        assert!(t > 1.5, "{t}");
        assert!(binary_nll_at_temperature(&cols, t) < binary_nll_at_temperature(&cols, 1.0));
        let one_class = vec![(vec![1.0, 2.0], vec![true, true])];
        assert_eq!(fit_binary_temperature(&one_class), 1.0);
    }

    /// By hand: confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (right) in 10 bins:
    /// bin (0.8, 0.9]: acc 0.5, conf 0.9, gap 0.4, weight 2/4; bin (0.5, 0.6]: acc 1, conf 0.575,
    /// gap 0.425, weight 2/4. ECE = 0.2 + 0.2125 = 0.4125.
    #[test]
    fn ece_by_hand() {
        let probs = vec![
            vec![0.9, 0.1],
            vec![0.1, 0.9],
            vec![0.4, 0.6],
            vec![0.55, 0.45],
        ];
        let y = [0, 0, 1, 0];
        let ece = expected_calibration_error(&probs, &y, 10).unwrap();
        assert!((ece - 0.4125).abs() < 1e-12, "{ece}");
        let bins = reliability_bins(&probs, &y, 10);
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 4);
        assert_eq!((bins[8].count, bins[8].accuracy), (2, Some(0.5)));
        assert_eq!((bins[5].count, bins[5].accuracy), (2, Some(1.0)));
        assert!((bins[5].confidence.unwrap() - 0.575).abs() < 1e-12);
        assert_eq!(bins[0].confidence, None);
    }

    /// Over-confident logits (true logits times 3) are fixed by T close to 3.
    #[test]
    fn temperature_undoes_overconfidence() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (mut logits, mut y) = (Vec::new(), Vec::new());
        for _ in 0..4000 {
            let z = [rng.gen_range(-2.0..2.0), rng.gen_range(-2.0..2.0)];
            let p1 = softmax_at_temperature(&z, 1.0)[1];
            y.push(usize::from(rng.gen::<f64>() < p1));
            logits.push(vec![z[0] * 3.0, z[1] * 3.0]);
        }
        let t = fit_temperature(&logits, &y);
        assert!((t - 3.0).abs() < 0.3, "temperature {t}");
        assert!(nll_at_temperature(&logits, &y, t) < nll_at_temperature(&logits, &y, 1.0));
    }
}
