//! A run's history, `metrics.csv`: one row per epoch.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Monitor;

/// One row of metrics.csv.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (with augmentation, dropout on).
    pub train_acc: f64,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_acc: f64,
    /// Validation ROC-AUC (macro one-vs-rest for more than two classes); empty if undefined.
    pub val_auc: Option<f64>,
    /// Wall time of the epoch, training and validation.
    pub seconds: f64,
}

impl EpochMetrics {
    /// The metric `monitor` names, as training reports it (the AUC falls back to the accuracy
    /// when it is undefined, as on a validation set of one class).
    pub fn monitored(&self, monitor: Monitor) -> Option<f64> {
        match monitor {
            Monitor::ValLoss => Some(self.val_loss),
            Monitor::ValAcc => Some(self.val_acc),
            Monitor::ValAuc => self.val_auc.or(Some(self.val_acc)),
        }
    }

    /// [`EpochMetrics::monitored`] turned so that higher is always better (the loss negated):
    /// what comparisons use.
    pub fn monitored_score(&self, monitor: Monitor) -> Option<f64> {
        self.monitored(monitor).map(|v| monitor.to_score(v))
    }
}

/// Writes metrics.csv with every row so far, atomically.
pub fn write_metrics_csv(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    let bytes = w.into_inner().context("metrics.csv")?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// Reads a run's `metrics.csv` (written by [`write_metrics_csv`]).
pub fn read_metrics_csv(path: &Path) -> Result<Vec<EpochMetrics>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    reader
        .deserialize()
        .collect::<Result<Vec<EpochMetrics>, _>>()
        .with_context(|| format!("{} is not a valid metrics file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitored_metric_knows_its_direction() {
        let m = EpochMetrics {
            epoch: 1,
            lr: 0.1,
            train_loss: 1.0,
            train_acc: 0.5,
            val_loss: 0.7,
            val_acc: 0.6,
            val_auc: None,
            seconds: 1.0,
        };
        assert_eq!(m.monitored(Monitor::ValLoss), Some(0.7));
        assert_eq!(m.monitored_score(Monitor::ValLoss), Some(-0.7));
        assert_eq!(
            m.monitored(Monitor::ValAuc),
            Some(0.6),
            "AUC falls back to accuracy"
        );
        assert!(Monitor::ValAuc.higher_is_better() && !Monitor::ValLoss.higher_is_better());
    }
}
