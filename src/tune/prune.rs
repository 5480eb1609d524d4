//! Pruning: stopping trials that are clearly behind before they finish.

/// The median rule (Golovin et al., "Google Vizier", 2017; Optuna's `MedianPruner`): after
/// `after_epochs` epochs, a trial whose best value so far is below the median of the earlier
/// trials' best values at the same epoch stops there. It waits for `startup_trials` completed
/// trials, so that the median means something.
#[derive(Debug, Clone, Copy)]
pub struct Median {
    /// Epochs every trial runs before it may be pruned.
    pub after_epochs: usize,
    /// Completed trials needed before any pruning.
    pub startup_trials: usize,
}

impl Median {
    /// Whether the trial with best-so-far values `curve` (one per epoch, higher is better)
    /// should stop, given the earlier trials' curves and how many of them completed.
    pub fn should_prune(&self, curve: &[f64], earlier: &[&[f64]], completed: usize) -> bool {
        let epoch = curve.len();
        if epoch < self.after_epochs || completed < self.startup_trials.max(1) {
            return false;
        }
        let mut at_epoch: Vec<f64> = earlier
            .iter()
            .filter_map(|c| c.get(epoch - 1).copied())
            .filter(|v| v.is_finite())
            .collect();
        if at_epoch.is_empty() {
            return false;
        }
        at_epoch.sort_by(f64::total_cmp);
        let n = at_epoch.len();
        let median = if n % 2 == 1 {
            at_epoch[n / 2]
        } else {
            0.5 * (at_epoch[n / 2 - 1] + at_epoch[n / 2])
        };
        curve[epoch - 1] < median
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_rule() {
        let p = Median {
            after_epochs: 2,
            startup_trials: 3,
        };
        let a = [0.6, 0.7, 0.8];
        let b = [0.5, 0.9, 0.95];
        let c = [0.7, 0.75, 0.9];
        let earlier: Vec<&[f64]> = vec![&a, &b, &c];
        // Median at epoch 2 is 0.75.
        assert!(p.should_prune(&[0.9, 0.74], &earlier, 3));
        assert!(!p.should_prune(&[0.9, 0.75], &earlier, 3));
        // Not before `after_epochs`, nor before enough trials completed.
        assert!(!p.should_prune(&[0.1], &earlier, 3));
        assert!(!p.should_prune(&[0.1, 0.1], &earlier, 2));
        // Epoch 4: no earlier trial got that far.
        assert!(!p.should_prune(&[0.1, 0.1, 0.1, 0.1], &earlier, 3));
        // An even count takes the mean of the middle two: epoch 3 of a, b, c, d = 0.85.
        let d = [0.1, 0.2, 0.3];
        let four: Vec<&[f64]> = vec![&a, &b, &c, &d];
        assert!(p.should_prune(&[0.9, 0.9, 0.84], &four, 4));
        assert!(!p.should_prune(&[0.9, 0.9, 0.86], &four, 4));
    }
}
