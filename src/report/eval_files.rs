//! The files of `xray eval`: report.json, predictions.csv, the pictures and the pages.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::html::Html;
use super::markdown::Markdown;
use super::plots::{self, GalleryTile};
use super::{ClassOrder, Exporter, Figure};
use crate::evaluate::{EvalReport, ScoredImage, ECE_BINS};
use crate::fsutil::{write_atomic, write_json_atomic};
use crate::metrics::calibration::{reliability_bins, softmax_at_temperature};
use crate::metrics::{average_precision, pr_curve, roc_auc, roc_curve};

/// Images in the error gallery.
pub const GALLERY_SIZE: usize = 12;

/// Writes `report.json`, `predictions.csv`, the pictures (`confusion.png`, `roc.png`,
/// `pr.png`, `calibration.png`, `errors.png`, `gallery.png`), `report.md` and the self-contained
/// `report.html` into `out`.
pub fn write_eval_report(
    out: &Path,
    report: &EvalReport,
    scored: &[ScoredImage],
    order: ClassOrder,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_json_atomic(&out.join("report.json"), report)?;
    write_predictions_csv(&out.join("predictions.csv"), report, scored)?;
    plots::confusion_matrix_png(
        &out.join("confusion.png"),
        &report.classes,
        &report.confusion_matrix,
    )?;
    write_curve_pictures(out, report, scored)?;
    write_error_gallery(&out.join("errors.png"), report, scored)?;
    write_class_gallery(&out.join("gallery.png"), report, scored)?;
    let figures = read_figures(out, report)?;
    let exporters: [&dyn Exporter; 2] = [&Markdown, &Html];
    for exporter in exporters {
        let page = exporter.render(report, &figures, order);
        write_atomic(&out.join(exporter.file_name()), page.as_bytes())?;
    }
    Ok(())
}

/// `roc.png`, `pr.png` and `calibration.png`.
fn write_curve_pictures(out: &Path, report: &EvalReport, scored: &[ScoredImage]) -> Result<()> {
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
    let prevalences: Vec<f64> = curve_classes
        .iter()
        .map(|&c| {
            scored.iter().filter(|s| s.label == c).count() as f64 / scored.len().max(1) as f64
        })
        .collect();
    plots::pr_png(&out.join("pr.png"), &pr, &prevalences)?;
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
    )
}

/// The eval folder's pictures (and the run's training curves, when there) for the pages.
fn read_figures(out: &Path, report: &EvalReport) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let curves = report.checkpoint.join("curves.png");
    let mut names: Vec<(PathBuf, String, &str)> = [
        ("confusion.png", "Confusion matrix"),
        ("roc.png", "ROC curves"),
        ("pr.png", "Precision-recall curves"),
        ("calibration.png", "Reliability diagram"),
        ("errors.png", "Most confident mistakes"),
        ("gallery.png", "Right and wrong answers per class"),
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
        figures.push(Figure {
            file,
            title: title.to_string(),
            png,
            wide,
        });
    }
    Ok(figures)
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
    let tiles: Vec<GalleryTile> = mistakes
        .iter()
        .take(GALLERY_SIZE)
        .map(|s| scored_tile(s, &report.classes))
        .collect();
    let title = format!(
        "the {} most confident of {} mistakes (of {} images)",
        tiles.len(),
        mistakes.len(),
        scored.len()
    );
    plots::gallery_png(
        path,
        &title,
        &tiles,
        &format!("no mistakes among {} images", scored.len()),
    )
}

/// A scored image as a gallery tile: the picture (grey when it cannot be read again, moved
/// since scoring), true and predicted class with the prediction's probability, the file name;
/// a green frame when right, red when wrong.
fn scored_tile(s: &ScoredImage, classes: &[String]) -> GalleryTile {
    let image = crate::data::decode::decode_image(&s.path)
        .map(|img| img.to_rgb8())
        .unwrap_or_else(|_| image::RgbImage::from_pixel(8, 8, image::Rgb([128; 3])));
    let name = s
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    GalleryTile {
        image,
        caption: vec![
            format!("true: {}", classes[s.label]),
            format!(
                "predicted: {} {:.1}%",
                classes[s.predicted],
                100.0 * s.probs[s.predicted]
            ),
            name,
        ],
        frame: if s.predicted == s.label {
            GalleryTile::GREEN
        } else {
            GalleryTile::RED
        },
    }
}

/// Right and wrong answers shown per class in `gallery.png`.
pub const GALLERY_PER_SIDE: usize = 3;

/// `gallery.png`: a row per true class, its [`GALLERY_PER_SIDE`] most confident right answers
/// (green) then its most confident mistakes (red), each labelled with truth, prediction and
/// probability. Classes in the report's order; a class without test images is left out.
fn write_class_gallery(path: &Path, report: &EvalReport, scored: &[ScoredImage]) -> Result<()> {
    let confidence = |s: &&ScoredImage| s.probs[s.predicted];
    let mut tiles = Vec::new();
    let mut shown = 0;
    for c in 0..report.classes.len() {
        let of_class: Vec<&ScoredImage> = scored.iter().filter(|s| s.label == c).collect();
        if of_class.is_empty() {
            continue;
        }
        shown += 1;
        for right in [true, false] {
            let mut side: Vec<&ScoredImage> = of_class
                .iter()
                .copied()
                .filter(|s| (s.predicted == c) == right)
                .collect();
            side.sort_by(|a, b| confidence(b).total_cmp(&confidence(a)));
            for i in 0..GALLERY_PER_SIDE {
                tiles.push(match side.get(i) {
                    Some(s) => scored_tile(s, &report.classes),
                    None => GalleryTile::blank(),
                });
            }
        }
    }
    let title = format!(
        "Right and wrong, per class ({shown} rows): the {n} most confident right answers \
         (green), then the {n} most confident mistakes (red); {} images",
        scored.len(),
        n = GALLERY_PER_SIDE
    );
    plots::gallery_grid_png(path, &title, &tiles, "no images", 2 * GALLERY_PER_SIDE, 150)
}

/// `predictions.csv`: path, label, predicted, one probability column per class.
fn write_predictions_csv(path: &Path, report: &EvalReport, scored: &[ScoredImage]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["path".to_string(), "label".into(), "predicted".into()];
    header.extend(report.classes.iter().map(|c| format!("p_{c}")));
    header.push("ood_score".into());
    w.write_record(&header)?;
    for s in scored {
        let mut row = vec![
            s.path.display().to_string(),
            report.classes[s.label].clone(),
            report.classes[s.predicted].clone(),
        ];
        row.extend(s.probs.iter().map(|p| format!("{p:.6}")));
        row.push(s.ood_score.map_or(String::new(), |v| format!("{v:.4}")));
        w.write_record(&row)?;
    }
    let bytes = w.into_inner().context("predictions.csv")?;
    write_atomic(path, &bytes)
}
