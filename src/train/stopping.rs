//! What an epoch's validation result does to the run: a new best, the reduce-on-plateau
//! rate, early stopping. Pure functions of [`RunState`], so they are tested without training.

use crate::config::{SchedulerKind, TrainConfig};
use crate::run::RunState;

/// Whether `score` (the monitored value, higher is better) with validation loss `val_loss`
/// beats the best so far. Ties (an AUC of 1.0 twice, say) go to the lower validation loss.
pub fn is_improvement(state: &RunState, score: Option<f64>, val_loss: f64) -> bool {
    match (score, state.best_value) {
        (Some(v), Some(best)) => {
            v > best + 1e-12 || ((v - best).abs() <= 1e-12 && val_loss < state.best_val_loss)
        }
        (Some(_), None) => true,
        _ => state.best_value.is_none(),
    }
}

/// Records epoch `epoch`'s outcome in `state`: the best value and epoch when it improved,
/// otherwise one more epoch without improvement.
pub fn record(
    state: &mut RunState,
    epoch: usize,
    improved: bool,
    score: Option<f64>,
    val_loss: f64,
) {
    if improved {
        state.best_value = score;
        state.best_val_loss = val_loss;
        state.best_epoch = epoch;
        state.epochs_without_improvement = 0;
    } else {
        state.epochs_without_improvement += 1;
    }
}

/// Reduce-on-plateau: counts epochs without improvement and, after `plateau_patience` of them,
/// multiplies the rate scale by `plateau_factor`. Returns whether the rate dropped now.
pub fn plateau_step(state: &mut RunState, improved: bool, tc: &TrainConfig) -> bool {
    if tc.scheduler != SchedulerKind::Plateau {
        return false;
    }
    state.plateau_wait = if improved { 0 } else { state.plateau_wait + 1 };
    if state.plateau_wait >= tc.plateau_patience.max(1) {
        state.lr_scale *= tc.plateau_factor;
        state.plateau_wait = 0;
        return true;
    }
    false
}

/// Early stopping: `patience` epochs in a row without improvement (0 = never).
pub fn should_stop(state: &RunState, tc: &TrainConfig) -> bool {
    tc.patience > 0 && state.epochs_without_improvement >= tc.patience
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lower_validation_loss() {
        let mut state = RunState::default();
        assert!(is_improvement(&state, Some(1.0), 0.3));
        record(&mut state, 1, true, Some(1.0), 0.3);
        assert!(!is_improvement(&state, Some(1.0), 0.4));
        assert!(is_improvement(&state, Some(1.0), 0.2));
        assert!(!is_improvement(&state, Some(0.99), 0.1));
    }

    #[test]
    fn plateau_halves_after_patience_and_patience_stops() {
        let tc = TrainConfig {
            scheduler: SchedulerKind::Plateau,
            plateau_patience: 2,
            plateau_factor: 0.5,
            patience: 3,
            ..TrainConfig::default()
        };
        let mut state = RunState::default();
        record(&mut state, 1, true, Some(0.8), 0.5);
        let mut drops = Vec::new();
        for epoch in 2..=4 {
            record(&mut state, epoch, false, Some(0.7), 0.6);
            drops.push(plateau_step(&mut state, false, &tc));
        }
        assert_eq!(drops, [false, true, false]);
        assert_eq!(state.lr_scale, 0.5);
        assert!(should_stop(&state, &tc));
        assert_eq!(state.best_epoch, 1);
    }
}
