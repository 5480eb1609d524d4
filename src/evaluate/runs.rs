//! Several trained runs of one task evaluated side by side (what `xray compare` computes;
//! [`crate::report::compare`] draws it): each run's test metrics with their 95% intervals, its
//! size and training time, its ROC curve and its training curves.
//! Every run is evaluated afresh on its own split's test images, so that the figures are
//! computed the same way whatever the runs' eval folders hold.

use std::path::{Path, PathBuf};

use anyhow::Result;
use tch::Device;

use crate::error::Error;
use crate::evaluate::multilabel::{evaluate_multilabel, labelled_split, MultiLabelReport};
use crate::evaluate::{evaluate, labelled_images, CiBy, EvalReport, ScoredImage};
use crate::infer::Predictor;
use crate::metrics::multilabel::flattened;
use crate::metrics::{roc_auc, roc_curve};
use crate::run::{read_metrics_csv, run_name, EpochMetrics, ModelCard};

/// One run, summed up, with its evaluation report `R` (a multi-label run's is a
/// [`MultiLabelReport`]).
#[derive(Debug, Clone)]
pub struct RunSummary<R = EvalReport> {
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
    pub report: R,
    /// The ROC curve: the positive class's with two classes, else micro-averaged over the
    /// classes (every one-against-the-rest score pooled; multi-label: every unmasked label of
    /// every image pooled), with its area.
    pub roc: (Vec<(f64, f64)>, Option<f64>),
    /// metrics.csv.
    pub history: Vec<EpochMetrics>,
}

/// Refuses runs that cannot be compared (fewer than two, different class lists, or single- and
/// multi-label runs together) before any is loaded; says whether they are multi-label.
pub fn check_comparable(runs: &[PathBuf]) -> Result<bool> {
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
        if card.task != cards[0].task {
            return Err(Error::usage(format!(
                "{} is {} but {} is {}: single- and multi-label runs cannot be compared",
                run.display(),
                card.task,
                runs[0].display(),
                cards[0].task
            ))
            .into());
        }
    }
    Ok(cards[0].task == crate::config::Task::Multilabel)
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
    let roc = pooled_roc(&scored, report.classes.len());
    Ok(summary_of(&predictor, report, roc))
}

/// Loads the multi-label run `run_dir` and evaluates it on its split's `source` images.
pub fn summarize_labels(
    run_dir: &Path,
    device: Device,
    source: &str,
    batch_size: usize,
) -> Result<RunSummary<MultiLabelReport>> {
    let predictor = Predictor::load(run_dir, device)?;
    let (labelled, targets) = labelled_split(&predictor, source)?;
    let (report, scored) = evaluate_multilabel(
        &predictor,
        labelled,
        targets,
        source,
        batch_size,
        CiBy::Auto,
    )?;
    let probs: Vec<Vec<f64>> = scored.iter().map(|s| s.probs.clone()).collect();
    let targets: Vec<Vec<f32>> = scored.iter().map(|s| s.targets.clone()).collect();
    let (scores, positive) = flattened(&probs, &targets);
    let roc = (roc_curve(&scores, &positive), report.roc_auc_micro);
    Ok(summary_of(&predictor, report, roc))
}

/// The run's size, training time and history beside its evaluation.
fn summary_of<R>(
    predictor: &Predictor,
    report: R,
    roc: (Vec<(f64, f64)>, Option<f64>),
) -> RunSummary<R> {
    let run_dir = &predictor.run_dir;
    let history = read_metrics_csv(&run_dir.join("metrics.csv")).unwrap_or_default();
    RunSummary {
        run_dir: run_dir.clone(),
        name: run_name(run_dir),
        parameters: predictor.parameter_count(),
        epochs: history.len(),
        best_epoch: predictor.card.best_epoch,
        train_seconds: predictor
            .card
            .train_seconds
            .unwrap_or_else(|| history.iter().map(|m| m.seconds).sum()),
        epochs_time_only: predictor.card.train_seconds.is_none(),
        roc,
        report,
        history,
    }
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
