//! The files of `xray compare`: `compare.md`, the self-contained `compare.html`, `roc.png`
//! (the runs' ROC curves overlaid) and `curves.png` (their validation curves per epoch), and
//! the table the terminal prints.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::curves::ScoreCurve;
use super::html::{html_figure, html_table, page_start};
use super::markdown::markdown_table;
use super::plots::{epoch_chart, epoch_points, labelled_line, legend, render_png};
use super::tables::Table;
use super::Figure;
use crate::evaluate::multilabel::MultiLabelReport;
use crate::evaluate::runs::{summary_auc, RunSummary};
use crate::fsutil::write_atomic;

/// The comparison table: one row per run.
pub fn compare_table(runs: &[RunSummary]) -> Table {
    let opt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.4}"));
    let auc_name = if runs.first().is_some_and(|r| r.report.classes.len() > 2) {
        "ROC-AUC, macro [95% CI]"
    } else {
        "ROC-AUC [95% CI]"
    };
    Table {
        header: run_header(&[
            "accuracy [95% CI]",
            auc_name,
            "balanced accuracy",
            "macro F1",
            "test images",
        ]),
        rows: runs
            .iter()
            .map(|r| {
                let mut row = run_cells(r, r.report.arch);
                row.extend([
                    interval(r.report.accuracy, r.report.ci95.accuracy),
                    interval(summary_auc(&r.report), r.report.ci95.roc_auc),
                    opt(r.report.balanced_accuracy),
                    opt(r.report.macro_avg.f1),
                    r.report.n.to_string(),
                ]);
                row
            })
            .collect(),
    }
}

/// The columns every comparison starts with, then `rest`.
fn run_header(rest: &[&str]) -> Vec<String> {
    [
        "run",
        "architecture",
        "parameters",
        "epochs (best)",
        "training time",
    ]
    .iter()
    .chain(rest)
    .map(|s| s.to_string())
    .collect()
}

/// A run's cells under [`run_header`]'s first columns.
fn run_cells<R>(r: &RunSummary<R>, arch: crate::models::Arch) -> Vec<String> {
    vec![
        r.name.clone(),
        arch.to_string(),
        format!("{:.2} M", r.parameters as f64 / 1e6),
        format!("{} ({})", r.epochs, r.best_epoch),
        if r.epochs_time_only {
            format!("{}*", minutes(r.train_seconds))
        } else {
            minutes(r.train_seconds)
        },
    ]
}

fn minutes(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.0} s")
    } else {
        format!("{}m{:02.0}s", (seconds / 60.0).floor(), seconds % 60.0)
    }
}

/// What the intervals resample, in words, from the first run.
fn note(runs: &[RunSummary]) -> String {
    let Some(r) = runs.first() else {
        return String::new();
    };
    let by = match (r.report.ci95.method.as_str(), r.report.ci95.groups) {
        ("group", Some(g)) => format!("{g} patients (groups) resampled"),
        _ => "images resampled".to_string(),
    };
    let star = if runs.iter().any(|r| r.epochs_time_only) {
        " (* epochs only: a run folder from before model.json kept the whole time)"
    } else {
        ""
    };
    format!(
        "Each run evaluated on its split's {} images ({} classes); 95% intervals by bootstrap, \
         {by}. Training time: the wall time of the training command{star}.",
        r.report.source,
        r.report.classes.len()
    )
}

/// The table as aligned text for the terminal.
pub fn compare_text(runs: &[RunSummary]) -> String {
    let mut s = aligned(&compare_table(runs));
    s.push_str(&format!("\n{}\n", note(runs)));
    s
}

/// A table as aligned text: the first column left, the others right.
fn aligned(t: &Table) -> String {
    let widths: Vec<usize> = (0..t.header.len())
        .map(|i| {
            t.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([t.header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut s = line(&t.header);
    for row in &t.rows {
        s.push_str(&line(row));
    }
    s
}

/// Writes `compare.md`, `compare.html`, `roc.png` and `curves.png` into `out`.
pub fn write_compare(out: &Path, runs: &[RunSummary]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let curves: Vec<ScoreCurve> = runs
        .iter()
        .map(|r| (r.name.clone(), r.roc.0.clone(), r.roc.1))
        .collect();
    let k = runs.first().map_or(2, |r| r.report.classes.len());
    let roc_title = if k == 2 {
        format!("ROC of {}", runs[0].report.classes[1])
    } else {
        "ROC, micro-averaged over classes".to_string()
    };
    super::curves::roc_png_titled(&out.join("roc.png"), &roc_title, &curves)?;
    validation_curves_png(&out.join("curves.png"), runs)?;
    write_pages(out, &title(runs), &note(runs), &[compare_table(runs)])
}

/// "Comparison of N runs: a, b".
fn title<R>(runs: &[RunSummary<R>]) -> String {
    format!(
        "Comparison of {} runs: {}",
        runs.len(),
        runs.iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `compare.md` and `compare.html`: the title, the note, the tables, then `roc.png` and
/// `curves.png` (already in `out`).
fn write_pages(out: &Path, title: &str, note: &str, tables: &[Table]) -> Result<()> {
    let mut md = format!("# {title}\n\n{note}\n\n");
    for table in tables {
        md.push_str(&markdown_table(table, true));
        md.push('\n');
    }
    md.push_str("![ROC](roc.png)\n\n![Validation curves](curves.png)\n");
    write_atomic(&out.join("compare.md"), md.as_bytes())?;

    let mut html = page_start(title, note);
    for table in tables {
        html.push_str(&html_table(table, None));
    }
    for (file, caption) in [("roc.png", "ROC"), ("curves.png", "Validation curves")] {
        let png = std::fs::read(out.join(file))
            .with_context(|| format!("cannot read {}", out.join(file).display()))?;
        html.push_str(&html_figure(&Figure {
            file: file.to_string(),
            title: caption.to_string(),
            png,
            wide: true,
        }));
    }
    html.push_str("</body>\n</html>\n");
    write_atomic(&out.join("compare.html"), html.as_bytes())?;
    Ok(())
}

/// The comparison of multi-label runs: one row per run.
pub fn compare_labels_table(runs: &[RunSummary<MultiLabelReport>]) -> Table {
    let opt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.4}"));
    Table {
        header: run_header(&[
            "ROC-AUC, macro [95% CI]",
            "ROC-AUC, micro",
            "PR-AUC, macro",
            "F1, macro",
            "exact match",
            "test images",
        ]),
        rows: runs
            .iter()
            .map(|r| {
                let m = &r.report;
                let mut row = run_cells(r, m.arch);
                row.extend([
                    interval(m.roc_auc_macro, m.roc_auc_macro_ci95),
                    opt(m.roc_auc_micro),
                    opt(m.pr_auc_macro),
                    format!("{:.4}", m.f1_macro),
                    format!("{:.4}", m.exact_match),
                    m.n.to_string(),
                ]);
                row
            })
            .collect(),
    }
}

/// Each label's ROC-AUC with its interval, a column per run (legible at 14-18 labels: a row
/// per label).
pub fn per_label_auc_table(runs: &[RunSummary<MultiLabelReport>]) -> Table {
    let labels = runs.first().map_or(&[][..], |r| &r.report.labels[..]);
    let mut header = vec!["label".to_string(), "positives".to_string()];
    header.extend(runs.iter().map(|r| format!("{} AUC [95% CI]", r.name)));
    Table {
        header,
        rows: labels
            .iter()
            .enumerate()
            .map(|(l, label)| {
                let mut row = vec![
                    label.clone(),
                    runs[0].report.per_label[l].positives.to_string(),
                ];
                row.extend(runs.iter().map(|r| {
                    let x = &r.report.per_label[l];
                    interval(x.roc_auc, x.roc_auc_ci95)
                }));
                row
            })
            .collect(),
    }
}

/// What the multi-label intervals resample, in words.
fn note_labels(runs: &[RunSummary<MultiLabelReport>]) -> String {
    let Some(r) = runs.first() else {
        return String::new();
    };
    let by = match (r.report.ci_method.as_str(), r.report.groups) {
        ("group", Some(g)) => format!("{g} patients (groups) resampled"),
        _ => "images resampled".to_string(),
    };
    format!(
        "Each run evaluated on its split's {} images ({} labels, each at its own threshold from \
         model.json); 95% intervals by bootstrap, {by}. The ROC pools every unmasked label of \
         every image (micro). Training time: the wall time of the training command.",
        r.report.source,
        r.report.labels.len()
    )
}

/// The multi-label tables as aligned text for the terminal.
pub fn compare_labels_text(runs: &[RunSummary<MultiLabelReport>]) -> String {
    format!(
        "{}\n{}\n{}\n",
        aligned(&compare_labels_table(runs)),
        aligned(&per_label_auc_table(runs)),
        note_labels(runs)
    )
}

/// Writes `compare.md`, `compare.html`, `roc.png` (micro over labels) and `curves.png` of
/// multi-label runs into `out`.
pub fn write_compare_labels(out: &Path, runs: &[RunSummary<MultiLabelReport>]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let curves: Vec<ScoreCurve> = runs
        .iter()
        .map(|r| (r.name.clone(), r.roc.0.clone(), r.roc.1))
        .collect();
    super::curves::roc_png_titled(
        &out.join("roc.png"),
        "ROC, micro-averaged over labels",
        &curves,
    )?;
    validation_curves_png(&out.join("curves.png"), runs)?;
    write_pages(
        out,
        &title(runs),
        &note_labels(runs),
        &[compare_labels_table(runs), per_label_auc_table(runs)],
    )
}

/// A value with its interval, "n/a" when undefined.
fn interval(v: Option<f64>, ci: Option<[f64; 2]>) -> String {
    match (v, ci) {
        (Some(v), Some([lo, hi])) => format!("{v:.4} [{lo:.4}-{hi:.4}]"),
        (Some(v), None) => format!("{v:.4}"),
        _ => "n/a".into(),
    }
}

/// A colour per run, distinct for up to ten.
fn run_colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    PALETTE[i % PALETTE.len()]
}

/// `curves.png`: validation loss (left) and validation AUC (right) per epoch, a line per run.
fn validation_curves_png<R>(path: &Path, runs: &[RunSummary<R>]) -> Result<()> {
    render_png(path, 1200, 450, |root| {
        let panels = root.split_evenly((1, 2));
        let epochs = runs
            .iter()
            .map(|r| r.history.len())
            .max()
            .unwrap_or(2)
            .max(2) as f64;
        let max_loss = runs
            .iter()
            .flat_map(|r| r.history.iter().map(|m| m.val_loss))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            .max(1e-3)
            * 1.05;
        type Pick = fn(&crate::run::EpochMetrics) -> Option<f64>;
        let specs: [(&str, f64, Pick, SeriesLabelPosition); 2] = [
            (
                "validation loss",
                max_loss,
                |m| Some(m.val_loss),
                SeriesLabelPosition::UpperRight,
            ),
            (
                "validation AUC",
                1.0,
                |m| m.val_auc,
                SeriesLabelPosition::LowerRight,
            ),
        ];
        for (area, (caption, y_max, pick, position)) in panels.iter().zip(specs) {
            let mut chart = epoch_chart(area, caption, epochs, y_max)?;
            for (i, r) in runs.iter().enumerate() {
                let points = epoch_points(&r.history, pick);
                labelled_line(&mut chart, points, run_colour(i), r.name.clone())?;
            }
            legend(&mut chart, position)?;
        }
        Ok(())
    })
}
