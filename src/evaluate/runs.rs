//! Several trained runs of one task evaluated side by side (what `xray compare` computes;
//! [`crate::report::compare`] draws it): each run's test metrics with their 95% intervals, its
//! size and training time, its ROC curve and its training curves.
//! Every run is evaluated afresh on its own split's test images, so that the figures are
//! computed the same way whatever the runs' eval folders hold.

use std::path::{Path, PathBuf};

use anyhow::Result;
use tch::Device;

use crate::error::Error;
use crate::evaluate::{evaluate, labelled_images, CiBy, EvalReport, ScoredImage};
use crate::infer::Predictor;
use crate::metrics::{roc_auc, roc_curve};
use crate::run::{read_metrics_csv, run_name, EpochMetrics, ModelCard};

/// One run, summed up.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Its name (the folder's).
    pub name: String,
    /// Trainable parameters.
    pub parameters: i64,
    /// Epochs trained.
    pub epochs: usize,
    /// The epoch whose weights are kept.
    pub best_epoch: usize,
    /// Training time, seconds: model.json's `train_seconds` (the whole command), or for older
    /// runs the epochs' wall time from metrics.csv.
    pub train_seconds: f64,
    /// Whether `train_seconds` covers the epochs only (an older run folder).
    pub epochs_time_only: bool,
    /// The test evaluation.
    pub report: EvalReport,
    /// The ROC curve: the positive class's with two classes, else micro-averaged over the
    /// classes (every one-against-the-rest score pooled), with its area.
    pub roc: (Vec<(f64, f64)>, Option<f64>),
    /// metrics.csv.
    pub history: Vec<EpochMetrics>,
}

/// Refuses runs that cannot be compared (fewer than two, or different class lists) before any
/// is loaded.
pub fn check_comparable(runs: &[PathBuf]) -> Result<()> {
    if runs.len() < 2 {
        return Err(Error::usage("compare needs two run folders or more").into());
    }
    let cards = runs
        .iter()
        .map(|r| ModelCard::read(r))
        .collect::<Result<Vec<_>>>()?;
    for (run, card) in runs.iter().zip(&cards).skip(1) {
        if card.classes != cards[0].classes {
            return Err(Error::usage(format!(
                "{} has classes {:?} but {} has {:?}: only models of the same classes can be compared",
                run.display(),
                card.classes,
                runs[0].display(),
                cards[0].classes
            ))
            .into());
        }
    }
    Ok(())
}

/// Loads `run_dir` and evaluates it on its split's `source` images ("test" normally).
pub fn summarize(
    run_dir: &Path,
    device: Device,
    source: &str,
    batch_size: usize,
) -> Result<RunSummary> {
    let predictor = Predictor::load(run_dir, device)?;
    let labelled = labelled_images(&predictor, source)?;
    let (report, scored) = evaluate(&predictor, labelled, source, batch_size, CiBy::Auto)?;
    let history = read_metrics_csv(&run_dir.join("metrics.csv")).unwrap_or_default();
    Ok(RunSummary {
        run_dir: run_dir.to_path_buf(),
        name: run_name(run_dir),
        parameters: predictor.parameter_count(),
        epochs: history.len(),
        best_epoch: predictor.card.best_epoch,
        train_seconds: predictor
            .card
            .train_seconds
            .unwrap_or_else(|| history.iter().map(|m| m.seconds).sum()),
        epochs_time_only: predictor.card.train_seconds.is_none(),
        roc: pooled_roc(&scored, report.classes.len()),
        report,
        history,
    })
}

/// The ROC curve of the positive class (two classes) or micro-averaged (more), and its area.
fn pooled_roc(scored: &[ScoredImage], k: usize) -> (Vec<(f64, f64)>, Option<f64>) {
    let classes: Vec<usize> = if k == 2 { vec![1] } else { (0..k).collect() };
    let mut scores = Vec::new();
    let mut positive = Vec::new();
    for s in scored {
        for &c in &classes {
            scores.push(s.probs[c]);
            positive.push(s.label == c);
        }
    }
    (roc_curve(&scores, &positive), roc_auc(&scores, &positive))
}

/// The test ROC-AUC the table shows: binary, or the macro average over classes.
pub fn summary_auc(report: &EvalReport) -> Option<f64> {
    report.roc_auc.or(report.roc_auc_macro)
}
