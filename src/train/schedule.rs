//! Learning-rate schedules, evaluated per optimisation step.

use crate::config::{SchedulerKind, TrainConfig};

/// A learning rate as a function of the global step.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: SchedulerKind,
    base_lr: f64,
    warmup_steps: usize,
    total_steps: usize,
    steps_per_epoch: usize,
    step_epochs: usize,
    step_gamma: f64,
}

impl Schedule {
    /// The schedule of `train.scheduler` for a run of `train.epochs` epochs.
    pub fn from_config(tc: &TrainConfig, steps_per_epoch: usize) -> Self {
        Self::for_stage(tc, tc.lr, tc.epochs, tc.warmup_epochs, steps_per_epoch)
    }

    /// The schedule of `train.scheduler` over one training stage of `epochs` epochs, from
    /// `base_lr`, with `warmup_epochs` of linear warm-up.
    pub fn for_stage(
        tc: &TrainConfig,
        base_lr: f64,
        epochs: usize,
        warmup_epochs: usize,
        steps_per_epoch: usize,
    ) -> Self {
        Schedule {
            kind: tc.scheduler,
            base_lr,
            warmup_steps: warmup_epochs.min(epochs) * steps_per_epoch,
            total_steps: (epochs * steps_per_epoch).max(1),
            steps_per_epoch: steps_per_epoch.max(1),
            step_epochs: tc.step_epochs.max(1),
            step_gamma: tc.step_gamma,
        }
    }

    /// The learning rate at 0-based global `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            SchedulerKind::Cosine => {
                let span = (self.total_steps - self.warmup_steps.min(self.total_steps)).max(1);
                let t = (step - self.warmup_steps) as f64 / span as f64;
                0.5 * self.base_lr * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
            SchedulerKind::Step => {
                let epoch = step / self.steps_per_epoch;
                self.base_lr * self.step_gamma.powi((epoch / self.step_epochs) as i32)
            }
            // Plateau scales the rate from outside (RunState::lr_scale).
            SchedulerKind::None | SchedulerKind::Plateau => self.base_lr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_with_warmup() {
        let tc = TrainConfig {
            epochs: 10,
            lr: 1.0,
            warmup_epochs: 1,
            scheduler: SchedulerKind::Cosine,
            ..TrainConfig::default()
        };
        let s = Schedule::from_config(&tc, 10);
        assert!((s.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(55) - 0.5).abs() < 1e-12);
        assert!(s.lr_at(99) < 0.001);
    }

    #[test]
    fn step_decay() {
        let tc = TrainConfig {
            lr: 1.0,
            scheduler: SchedulerKind::Step,
            step_epochs: 2,
            step_gamma: 0.5,
            ..TrainConfig::default()
        };
        let s = Schedule::from_config(&tc, 5);
        assert_eq!(s.lr_at(9), 1.0);
        assert_eq!(s.lr_at(10), 0.5);
        assert_eq!(s.lr_at(20), 0.25);
    }
}
