//! `metrics.csv`: one row per epoch.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

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
