//! `xray eval`: score a trained model on a split or a folder and write its report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::loader::ImageSet;
use crate::data::scan::scan_dataset;
use crate::data::split::SplitSet;
use crate::error::Error;
use crate::fsutil::write_json_atomic;
use crate::infer::{score_set, Predictor};
use crate::metrics::calibration::{
    expected_calibration_error, reliability_bins, softmax_at_temperature,
};
use crate::metrics::operating::{at_threshold, bootstrap_ci95, OperatingPoint};
use crate::metrics::{
    accuracy, average_precision, average_precision_ovr, balanced_accuracy, cohen_kappa,
    confusion_matrix, decide, macro_average, mean_defined, per_class, pr_curve, roc_auc,
    roc_auc_ovr, roc_curve, weighted_average, Averages, ClassMetrics,
};

/// `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The run folder evaluated.
    pub checkpoint: PathBuf,
    /// The model's architecture.
    pub arch: String,
    /// What was evaluated: a split name or a folder.
    pub source: String,
    /// Number of images.
    pub n: usize,
    /// Class names, in confusion-matrix order.
    pub classes: Vec<String>,
    /// Share of correct decisions.
    pub accuracy: Option<f64>,
    /// Precision, recall, F1 and support per class.
    pub per_class: BTreeMap<String, ClassMetrics>,
    /// Unweighted means over classes.
    pub macro_avg: Averages,
    /// Support-weighted means over classes.
    pub weighted_avg: Averages,
    /// Rows = true class, columns = predicted class.
    pub confusion_matrix: Vec<Vec<usize>>,
    /// Two classes: AUC of the second class's probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
    /// More than two classes: one-vs-rest AUC per class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roc_auc_ovr: Option<BTreeMap<String, Option<f64>>>,
    /// More than two classes: mean of the defined one-vs-rest AUCs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roc_auc_macro: Option<f64>,
    /// Mean recall over the classes present.
    pub balanced_accuracy: Option<f64>,
    /// Cohen's kappa of predictions against labels.
    pub cohen_kappa: Option<f64>,
    /// Two classes: average precision (PR-AUC) of the second class; more: per class.
    pub pr_auc: BTreeMap<String, Option<f64>>,
    /// The two-class decision threshold used.
    pub threshold: f64,
    /// Two classes: sensitivity (recall of the second class) at `threshold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,
    /// Two classes: specificity (recall of the first class) at `threshold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub specificity: Option<f64>,
    /// Stratified bootstrap 95% intervals (1000 resamples, seed 0).
    pub ci95: Ci95,
    /// Expected calibration error (15 bins) before and after temperature scaling.
    pub ece: Ece,
    /// Two classes: the target sensitivity the screening point was chosen for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_sensitivity: Option<f64>,
    /// Two classes: Youden's threshold (chosen on validation) and its figures here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_youden: Option<OperatingPoint>,
    /// Two classes: the highest threshold with validation sensitivity >= the target, and its
    /// figures here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_at_sensitivity: Option<OperatingPoint>,
    /// Mean cross-entropy.
    pub loss: f64,
}

/// Bootstrap 95% intervals, `[low, high]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ci95 {
    /// Accuracy.
    pub accuracy: Option<[f64; 2]>,
    /// ROC-AUC (two classes) or macro one-vs-rest ROC-AUC.
    pub roc_auc: Option<[f64; 2]>,
    /// Two classes: sensitivity at the decision threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<[f64; 2]>,
    /// Two classes: specificity at the decision threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub specificity: Option<[f64; 2]>,
}

/// Calibration before and after temperature scaling.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ece {
    /// ECE of the raw softmax.
    pub before: Option<f64>,
    /// ECE after dividing the logits by `temperature`.
    pub after: Option<f64>,
    /// The temperature fitted on validation (model.json).
    pub temperature: f64,
}

/// Bootstrap resamples for the intervals.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
/// Confidence bins for the ECE.
pub const ECE_BINS: usize = 15;

/// One scored image, for predictions.csv.
#[derive(Debug, Clone)]
pub struct ScoredImage {
    /// The image file.
    pub path: PathBuf,
    /// True label index.
    pub label: usize,
    /// Predicted label index.
    pub predicted: usize,
    /// Probability per class (temperature-scaled).
    pub probs: Vec<f64>,
    /// The raw logits.
    pub logits: Vec<f64>,
}

/// Labelled images of `source`: "train", "val" or "test" of the split the model was trained
/// on (from its config.toml), or a class-per-folder DATA_DIR whose classes must match.
pub fn labelled_images(predictor: &Predictor, source: &str) -> Result<Vec<(PathBuf, usize)>> {
    let classes = &predictor.card.classes;
    if ["train", "val", "test"].contains(&source) {
        let config_path = predictor.run_dir.join("config.toml");
        let config = crate::config::Config::load(&config_path, &[])?;
        let split = SplitSet::read(&config.data.split)?;
        if &split.classes != classes {
            return Err(Error::usage(format!(
                "the split's classes {:?} differ from the model's {:?}",
                split.classes, classes
            ))
            .into());
        }
        return split.samples(source);
    }
    let scanned = scan_dataset(Path::new(source))?;
    let mut samples = Vec::new();
    for img in scanned.images {
        let name = &scanned.classes[img.label];
        let label = classes.iter().position(|c| c == name).ok_or_else(|| {
            Error::usage(format!(
                "class folder \"{name}\" is not one of the model's classes {classes:?}"
            ))
        })?;
        samples.push((scanned.root.join(img.rel_path), label));
    }
    Ok(samples)
}

/// Scores `samples` and computes the report.
pub fn evaluate(
    predictor: &Predictor,
    samples: Vec<(PathBuf, usize)>,
    source: &str,
    batch_size: usize,
) -> Result<(EvalReport, Vec<ScoredImage>)> {
    if samples.is_empty() {
        return Err(Error::usage(format!("no images to evaluate in {source}")).into());
    }
    let set = Arc::new(ImageSet::new(samples, predictor.input_spec(), false));
    let scores = score_set(
        predictor.model(),
        set.clone(),
        batch_size,
        predictor.device,
        predictor.card.temperature,
        "eval",
    )?;
    let classes = predictor.card.classes.clone();
    let k = classes.len();
    let threshold = predictor.card.threshold;
    let predicted: Vec<usize> = scores.probs.iter().map(|p| decide(p, threshold)).collect();
    let cm = confusion_matrix(&scores.labels, &predicted, k);
    let per = per_class(&cm);
    let (balanced_accuracy, cohen_kappa) = (balanced_accuracy(&cm), cohen_kappa(&cm));
    let labels = &scores.labels;
    let binary = k == 2;
    let positive: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
    // Two classes: the second class's probability is the score thresholds apply to.
    let pos_scores: Vec<f64> = if binary {
        scores.probs.iter().map(|p| p[1]).collect()
    } else {
        Vec::new()
    };
    let subset_auc = |idx: &[usize]| {
        let probs: Vec<Vec<f64>> = idx.iter().map(|&i| scores.probs[i].clone()).collect();
        let y: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
        crate::metrics::summary_auc(&probs, &y, k)
    };
    let rate = |want: bool| {
        let (predicted, labels) = (&predicted, labels);
        move |idx: &[usize]| {
            let rows: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&i| (labels[i] == 1) == want)
                .collect();
            (!rows.is_empty()).then(|| {
                rows.iter()
                    .filter(|&&i| (predicted[i] == 1) == want)
                    .count() as f64
                    / rows.len() as f64
            })
        }
    };
    let ci95 = Ci95 {
        accuracy: bootstrap_ci95(labels, BOOTSTRAP_RESAMPLES, 0, |idx| {
            Some(
                idx.iter().filter(|&&i| predicted[i] == labels[i]).count() as f64
                    / idx.len().max(1) as f64,
            )
        }),
        roc_auc: bootstrap_ci95(labels, BOOTSTRAP_RESAMPLES, 0, subset_auc),
        sensitivity: binary
            .then(|| bootstrap_ci95(labels, BOOTSTRAP_RESAMPLES, 0, rate(true)))
            .flatten(),
        specificity: binary
            .then(|| bootstrap_ci95(labels, BOOTSTRAP_RESAMPLES, 0, rate(false)))
            .flatten(),
    };
    let raw: Vec<Vec<f64>> = scores
        .logits
        .iter()
        .map(|z| softmax_at_temperature(z, 1.0))
        .collect();
    let ece = Ece {
        before: expected_calibration_error(&raw, labels, ECE_BINS),
        after: expected_calibration_error(&scores.probs, labels, ECE_BINS),
        temperature: predictor.card.temperature,
    };
    let chosen = predictor.card.operating_points.as_ref().filter(|_| binary);
    let here = |p: Option<OperatingPoint>| {
        p.and_then(|p| at_threshold(&pos_scores, &positive, p.threshold))
    };
    let (roc_auc_binary, ovr, ovr_macro) = if k == 2 {
        let s: Vec<f64> = scores.probs.iter().map(|p| p[1]).collect();
        let pos: Vec<bool> = scores.labels.iter().map(|&l| l == 1).collect();
        (roc_auc(&s, &pos), None, None)
    } else {
        let per_auc = roc_auc_ovr(&scores.probs, &scores.labels, k);
        let macro_auc = mean_defined(&per_auc);
        let map = classes.iter().cloned().zip(per_auc).collect();
        (None, Some(map), macro_auc)
    };
    let report = EvalReport {
        checkpoint: predictor.run_dir.clone(),
        arch: predictor.card.arch.clone(),
        source: source.to_string(),
        n: scores.labels.len(),
        classes: classes.clone(),
        accuracy: accuracy(&scores.labels, &predicted),
        per_class: classes.iter().cloned().zip(per.iter().cloned()).collect(),
        macro_avg: macro_average(&per),
        weighted_avg: weighted_average(&per),
        confusion_matrix: cm,
        roc_auc: roc_auc_binary,
        roc_auc_ovr: ovr,
        roc_auc_macro: ovr_macro,
        balanced_accuracy,
        cohen_kappa,
        pr_auc: if k == 2 {
            let s: Vec<f64> = scores.probs.iter().map(|p| p[1]).collect();
            let pos: Vec<bool> = scores.labels.iter().map(|&l| l == 1).collect();
            BTreeMap::from([(classes[1].clone(), average_precision(&s, &pos))])
        } else {
            classes
                .iter()
                .cloned()
                .zip(average_precision_ovr(&scores.probs, &scores.labels, k))
                .collect()
        },
        threshold,
        sensitivity: binary.then(|| per[1].recall).flatten(),
        specificity: binary.then(|| per[0].recall).flatten(),
        ci95,
        ece,
        target_sensitivity: chosen.map(|o| o.target_sensitivity),
        threshold_youden: chosen.and_then(|o| here(o.youden)),
        threshold_at_sensitivity: chosen.and_then(|o| here(o.at_sensitivity)),
        loss: scores.loss,
    };
    let scored = set
        .paths
        .iter()
        .zip(&scores.labels)
        .zip(predicted.iter().zip(scores.probs))
        .zip(scores.logits)
        .map(
            |(((path, &label), (&predicted, probs)), logits)| ScoredImage {
                path: path.clone(),
                label,
                predicted,
                probs,
                logits,
            },
        )
        .collect();
    Ok((report, scored))
}

/// Images in the error gallery.
pub const GALLERY_SIZE: usize = 12;

/// Writes `report.json`, `predictions.csv`, the pictures (`confusion.png`, `roc.png`,
/// `pr.png`, `calibration.png`, `errors.png`), `report.md` and the self-contained
/// `report.html` into `out`.
pub fn write_report(out: &Path, report: &EvalReport, scored: &[ScoredImage]) -> Result<()> {
    use crate::report::plots;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_json_atomic(&out.join("report.json"), report)?;
    write_predictions_csv(&out.join("predictions.csv"), report, scored)?;
    plots::confusion_matrix_png(
        &out.join("confusion.png"),
        &report.classes,
        &report.confusion_matrix,
    )?;
    let k = report.classes.len();
    // Two classes: the positive (second) class's curve; more: one per class against the rest.
    let curve_classes: Vec<usize> = if k == 2 { vec![1] } else { (0..k).collect() };
    let class_scores = |c: usize| -> (Vec<f64>, Vec<bool>) {
        (
            scored.iter().map(|s| s.probs[c]).collect(),
            scored.iter().map(|s| s.label == c).collect(),
        )
    };
    let mut roc = Vec::new();
    let mut pr = Vec::new();
    for &c in &curve_classes {
        let (scores, positive) = class_scores(c);
        let name = report.classes[c].clone();
        roc.push((
            name.clone(),
            roc_curve(&scores, &positive),
            roc_auc(&scores, &positive),
        ));
        pr.push((
            name,
            pr_curve(&scores, &positive),
            average_precision(&scores, &positive),
        ));
    }
    plots::roc_png(&out.join("roc.png"), &roc)?;
    let first = curve_classes[0];
    let prevalence =
        scored.iter().filter(|s| s.label == first).count() as f64 / scored.len().max(1) as f64;
    plots::pr_png(&out.join("pr.png"), &pr, prevalence)?;
    let labels: Vec<usize> = scored.iter().map(|s| s.label).collect();
    let raw: Vec<Vec<f64>> = scored
        .iter()
        .map(|s| softmax_at_temperature(&s.logits, 1.0))
        .collect();
    let scaled: Vec<Vec<f64>> = scored.iter().map(|s| s.probs.clone()).collect();
    plots::calibration_png(
        &out.join("calibration.png"),
        &reliability_bins(&raw, &labels, ECE_BINS),
        &reliability_bins(&scaled, &labels, ECE_BINS),
        (report.ece.before, report.ece.after),
        report.ece.temperature,
    )?;
    write_error_gallery(&out.join("errors.png"), report, scored)?;

    let mut figures = Vec::new();
    let curves = report.checkpoint.join("curves.png");
    let mut names: Vec<(PathBuf, String, &str)> = [
        ("confusion.png", "Confusion matrix"),
        ("roc.png", "ROC curves"),
        ("pr.png", "Precision-recall curves"),
        ("calibration.png", "Reliability diagram"),
        ("errors.png", "Most confident mistakes"),
    ]
    .into_iter()
    .map(|(f, t)| (out.join(f), f.to_string(), t))
    .collect();
    if curves.is_file() {
        let rel = pathdiff_or_absolute(&curves, out);
        names.push((curves, rel, "Training curves"));
    }
    for (path, file, title) in names {
        let png =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let wide =
            image::ImageReader::with_format(std::io::Cursor::new(&png), image::ImageFormat::Png)
                .into_dimensions()
                .is_ok_and(|(w, _)| w >= 800);
        figures.push(crate::report::page::Figure {
            file,
            title: title.to_string(),
            png,
            wide,
        });
    }
    crate::fsutil::write_atomic(
        &out.join("report.md"),
        crate::report::page::markdown(report, &report.arch, &figures).as_bytes(),
    )?;
    crate::fsutil::write_atomic(
        &out.join("report.html"),
        crate::report::page::html(report, &report.arch, &figures).as_bytes(),
    )
}

/// `target` relative to `dir` when `dir` is its grandparent's child (the eval folder inside the
/// run folder), otherwise its absolute form.
fn pathdiff_or_absolute(target: &Path, dir: &Path) -> String {
    let same_parent = target
        .parent()
        .zip(dir.parent())
        .is_some_and(|(a, b)| a == b);
    match (same_parent, target.file_name()) {
        (true, Some(name)) => format!("../{}", name.to_string_lossy()),
        _ => std::fs::canonicalize(target)
            .unwrap_or_else(|_| target.to_path_buf())
            .display()
            .to_string(),
    }
}

/// `errors.png`: the most confident mistakes (highest probability of the wrong prediction),
/// each with its true and predicted label, that probability and the file name.
fn write_error_gallery(path: &Path, report: &EvalReport, scored: &[ScoredImage]) -> Result<()> {
    let mut mistakes: Vec<&ScoredImage> =
        scored.iter().filter(|s| s.predicted != s.label).collect();
    mistakes.sort_by(|a, b| b.probs[b.predicted].total_cmp(&a.probs[a.predicted]));
    let tiles: Vec<crate::report::plots::GalleryTile> = mistakes
        .iter()
        .take(GALLERY_SIZE)
        .map(|s| {
            // An image that cannot be read again (moved since scoring) is drawn grey.
            let image = crate::data::decode::decode_image(&s.path)
                .map(|img| img.to_rgb8())
                .unwrap_or_else(|_| image::RgbImage::from_pixel(8, 8, image::Rgb([128; 3])));
            let name = s
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            crate::report::plots::GalleryTile {
                image,
                caption: vec![
                    format!("true: {}", report.classes[s.label]),
                    format!(
                        "predicted: {} {:.1}%",
                        report.classes[s.predicted],
                        100.0 * s.probs[s.predicted]
                    ),
                    name,
                ],
            }
        })
        .collect();
    let title = format!(
        "the {} most confident of {} mistakes (of {} images)",
        tiles.len(),
        mistakes.len(),
        scored.len()
    );
    crate::report::plots::gallery_png(
        path,
        &title,
        &tiles,
        &format!("no mistakes among {} images", scored.len()),
    )
}

/// `predictions.csv`: path, label, predicted, one probability column per class.
fn write_predictions_csv(path: &Path, report: &EvalReport, scored: &[ScoredImage]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["path".to_string(), "label".into(), "predicted".into()];
    header.extend(report.classes.iter().map(|c| format!("p_{c}")));
    w.write_record(&header)?;
    for s in scored {
        let mut row = vec![
            s.path.display().to_string(),
            report.classes[s.label].clone(),
            report.classes[s.predicted].clone(),
        ];
        row.extend(s.probs.iter().map(|p| format!("{p:.6}")));
        w.write_record(&row)?;
    }
    let bytes = w.into_inner().context("predictions.csv")?;
    crate::fsutil::write_atomic(path, &bytes)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.4}"))
}

/// A compact, readable table of the report.
pub fn report_table(r: &EvalReport) -> String {
    let width = r.classes.iter().map(|c| c.len()).max().unwrap_or(5).max(12);
    let mut s = String::new();
    s.push_str(&format!("{} images from {}\n\n", r.n, r.source));
    s.push_str(&format!(
        "{:<width$}  {:>9}  {:>9}  {:>9}  {:>7}\n",
        "class", "precision", "recall", "f1", "support"
    ));
    for c in &r.classes {
        let m = &r.per_class[c];
        s.push_str(&format!(
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>7}\n",
            c,
            fmt(m.precision),
            fmt(m.recall),
            fmt(m.f1),
            m.support
        ));
    }
    for (name, a) in [
        ("macro avg", &r.macro_avg),
        ("weighted avg", &r.weighted_avg),
    ] {
        s.push_str(&format!(
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>7}\n",
            name,
            fmt(a.precision),
            fmt(a.recall),
            fmt(a.f1),
            r.n
        ));
    }
    let ci = |c: Option<[f64; 2]>| {
        c.map_or(String::new(), |c| {
            format!("  [95% CI {:.4}-{:.4}]", c[0], c[1])
        })
    };
    s.push_str(&format!(
        "\naccuracy  {}{}\n",
        fmt(r.accuracy),
        ci(r.ci95.accuracy)
    ));
    s.push_str(&format!("balanced  {}\n", fmt(r.balanced_accuracy)));
    s.push_str(&format!("kappa     {}\n", fmt(r.cohen_kappa)));
    if let Some(auc) = r.roc_auc {
        s.push_str(&format!(
            "ROC-AUC   {auc:.4}{}  (positive class: {})\n",
            ci(r.ci95.roc_auc),
            r.classes[1]
        ));
    }
    if let (Some(se), Some(sp)) = (r.sensitivity, r.specificity) {
        s.push_str(&format!(
            "at threshold {:.4}: sensitivity {se:.4}{}, specificity {sp:.4}{}\n",
            r.threshold,
            ci(r.ci95.sensitivity),
            ci(r.ci95.specificity)
        ));
    }
    for (name, p) in [
        ("Youden", r.threshold_youden),
        ("sensitivity target", r.threshold_at_sensitivity),
    ] {
        if let Some(p) = p {
            s.push_str(&format!(
                "{name} threshold {:.4} (from validation): sensitivity {:.4}, specificity {:.4}\n",
                p.threshold, p.sensitivity, p.specificity
            ));
        }
    }
    s.push_str(&format!(
        "ECE (15 bins) {} before, {} after temperature scaling (T = {:.3})\n",
        fmt(r.ece.before),
        fmt(r.ece.after),
        r.ece.temperature
    ));
    if r.classes.len() == 2 {
        let ap = r.pr_auc.get(&r.classes[1]).copied().flatten();
        s.push_str(&format!("PR-AUC    {}  (average precision)\n", fmt(ap)));
    }
    if let Some(auc) = r.roc_auc_macro {
        s.push_str(&format!(
            "ROC-AUC   {auc:.4}{}  (macro one-vs-rest)\n",
            ci(r.ci95.roc_auc)
        ));
    }
    s.push_str("\nconfusion matrix (rows = true, columns = predicted)\n");
    let cw = width.min(14);
    s.push_str(&format!("{:<width$}", ""));
    for c in &r.classes {
        s.push_str(&format!("  {:>cw$}", truncate(c, cw)));
    }
    s.push('\n');
    for (c, row) in r.classes.iter().zip(&r.confusion_matrix) {
        s.push_str(&format!("{c:<width$}"));
        for v in row {
            s.push_str(&format!("  {v:>cw$}"));
        }
        s.push('\n');
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
