//! Multi-label pictures and pages: `cooccurrence.png` (how often two labels are positive on
//! the same image), and everything `xray eval` writes for a multi-label model.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::plots::GalleryTile;
use super::tables::Table;
use super::Figure;
use crate::evaluate::multilabel::{MultiLabelReport, ScoredLabels};
use crate::fsutil::{write_atomic, write_json_atomic};
use crate::metrics::multilabel::over_thresholds;

use super::plots::{plot_err, render_png};
use super::text_layout::{text_width, widest, wrap};

/// `cooccurrence.png`: a square per pair of labels holding the images positive for both (the
/// diagonal: for the label), shaded by the share of the row label's positives that also have
/// the column label, so that a finding which mostly comes with another stands out.
pub fn cooccurrence_png(
    path: &Path,
    title: &str,
    labels: &[String],
    m: &[Vec<usize>],
) -> Result<()> {
    // Long on purpose: drawing code, one plotters call per element in drawing order.
    let k = labels.len();
    let cell: u32 = if k <= 8 { 56 } else { 40 };
    let px = if k <= 8 { 14 } else { 12 };
    let names: Vec<String> = labels.iter().map(|l| wrap(l, px, 200).join(" ")).collect();
    let label_w = widest(&names, px).max(40) + 16;
    let top = 50 + label_w;
    let width = label_w + cell * k as u32 + 30;
    let height = top + cell * k as u32 + 50;
    render_png(path, width, height, |root| {
        root.draw(&Text::new(title.to_string(), (12, 12), ("sans-serif", 20)))
            .map_err(plot_err)?;
        for (i, name) in names.iter().enumerate() {
            let y = top as i32 + i as i32 * cell as i32 + cell as i32 / 2 - px as i32 / 2;
            let x = label_w as i32 - 8 - text_width(name, px) as i32;
            root.draw(&Text::new(name.clone(), (x, y), ("sans-serif", px)))
                .map_err(plot_err)?;
            let style = TextStyle::from(
                ("sans-serif", px)
                    .into_font()
                    .transform(FontTransform::Rotate270),
            );
            let cx = label_w as i32 + i as i32 * cell as i32 + cell as i32 / 2 - px as i32 / 2;
            root.draw(&Text::new(name.clone(), (cx, top as i32 - 8), style))
                .map_err(plot_err)?;
        }
        for (a, row) in m.iter().enumerate() {
            let own = row[a].max(1) as f64;
            for (b, &n) in row.iter().enumerate() {
                let share = if a == b { 0.0 } else { n as f64 / own };
                let shade = (255.0 * (1.0 - 0.8 * share.min(1.0))) as u8;
                let fill = if a == b {
                    RGBColor(225, 225, 225)
                } else {
                    RGBColor(255, shade, shade)
                };
                let (x, y) = (
                    label_w as i32 + b as i32 * cell as i32,
                    top as i32 + a as i32 * cell as i32,
                );
                let corners = [(x, y), (x + cell as i32, y + cell as i32)];
                root.draw(&Rectangle::new(corners, fill.filled()))
                    .map_err(plot_err)?;
                root.draw(&Rectangle::new(corners, BLACK.mix(0.4).stroke_width(1)))
                    .map_err(plot_err)?;
                let t = n.to_string();
                let color = if share > 0.6 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    t.clone(),
                    (
                        x + (cell as i32 - text_width(&t, px) as i32) / 2,
                        y + (cell as i32 - px as i32) / 2,
                    ),
                    ("sans-serif", px).into_font().color(&color),
                ))
                .map_err(plot_err)?;
            }
        }
        root.draw(&Text::new(
            "row: images positive for both / for the row label (diagonal: the label's positives)"
                .to_string(),
            (12, height as i32 - 30),
            ("sans-serif", 12),
        ))
        .map_err(plot_err)?;
        Ok(())
    })
}

/// The headline figures of a multi-label evaluation, one (name, value) a row.
fn headline(r: &MultiLabelReport) -> Table {
    let f = |v: Option<f64>| v.map_or("undefined".into(), |v| format!("{v:.4}"));
    let with_ci = |v: Option<f64>, ci: Option<[f64; 2]>| match (v, ci) {
        (Some(v), Some([lo, hi])) => format!("{v:.4} (95% CI {lo:.4}–{hi:.4})"),
        (v, _) => f(v),
    };
    let rows = vec![
        vec!["images".into(), r.n.to_string()],
        vec![
            "ROC-AUC, macro".into(),
            with_ci(r.roc_auc_macro, r.roc_auc_macro_ci95),
        ],
        vec!["ROC-AUC, micro".into(), f(r.roc_auc_micro)],
        vec!["PR-AUC, macro".into(), f(r.pr_auc_macro)],
        vec!["PR-AUC, micro".into(), f(r.pr_auc_micro)],
        vec![
            "F1 at the thresholds, macro".into(),
            format!("{:.4}", r.f1_macro),
        ],
        vec![
            "F1 at the thresholds, micro".into(),
            format!("{:.4}", r.f1_micro),
        ],
        vec!["exact match".into(), format!("{:.4}", r.exact_match)],
        vec![
            "Hamming score (1 - Hamming loss)".into(),
            format!("{:.4}", r.hamming_score),
        ],
        vec!["loss (masked BCE)".into(), format!("{:.4}", r.loss)],
        vec!["calibration".into(), r.calibration.clone()],
    ];
    Table {
        header: vec!["metric".into(), "value".into()],
        rows,
    }
}

/// One row per label: prevalence, AUC with its interval, PR-AUC, and the decisions at its
/// threshold.
fn per_label_table(r: &MultiLabelReport) -> Table {
    let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
    let rows = r
        .per_label
        .iter()
        .map(|l| {
            vec![
                l.label.clone(),
                format!("{}/{}", l.positives, l.positives + l.negatives),
                format!("{:.3}", l.prevalence),
                f(l.roc_auc),
                l.roc_auc_ci95
                    .map_or("–".into(), |[a, b]| format!("{a:.3}–{b:.3}")),
                f(l.pr_auc),
                format!("{:.3}", l.threshold),
                f(l.sensitivity),
                f(l.specificity),
                format!("{:.3}", l.f1),
                format!("{:.2}", l.temperature),
                f(l.ece_uncalibrated),
                f(l.ece),
            ]
        })
        .collect();
    Table {
        header: [
            "label", "pos/n", "prev", "AUC", "95% CI", "PR-AUC", "thr", "sens", "spec", "F1", "T",
            "ECE T=1", "ECE",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        rows,
    }
}

/// The report's title and the line under it.
fn title_and_note(r: &MultiLabelReport) -> (String, String) {
    (
        format!(
            "xray evaluation: {} ({}, {} labels) on {}",
            r.checkpoint.file_name().map_or_else(
                || r.checkpoint.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            ),
            r.arch.as_str(),
            r.labels.len(),
            r.source
        ),
        format!(
            "{} images; intervals: {} bootstrap resampling {} ({} resamples); thresholds chosen \
             on validation ({}) and stored in model.json; T: the temperature each logit is \
             divided by",
            r.n,
            if r.ci_method == "group" {
                "cluster"
            } else {
                "plain"
            },
            match r.groups {
                Some(g) => format!("{g} patients"),
                None => "images".into(),
            },
            crate::evaluate::BOOTSTRAP_RESAMPLES,
            rules_in_words(r)
        ),
    )
}

/// The threshold rules: one for every label, or each label that departs from the commonest.
fn rules_in_words(r: &MultiLabelReport) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for l in &r.per_label {
        match counts
            .iter_mut()
            .find(|(rule, _)| *rule == l.threshold_rule)
        {
            Some((_, n)) => *n += 1,
            None => counts.push((&l.threshold_rule, 1)),
        }
    }
    let common = counts
        .iter()
        .max_by_key(|(_, n)| *n)
        .map_or("youden", |(r, _)| *r);
    let others: Vec<String> = r
        .per_label
        .iter()
        .filter(|l| l.threshold_rule != common)
        .map(|l| format!("{} {}", l.label, l.threshold_rule))
        .collect();
    if others.is_empty() {
        common.to_string()
    } else {
        format!("{}; others {common}", others.join(", "))
    }
}

/// The terminal table of a multi-label evaluation.
pub fn multilabel_text(r: &MultiLabelReport) -> String {
    let (title, note) = title_and_note(r);
    let mut s = format!("{title}\n{note}\n\n");
    for table in [headline(r), per_label_table(r)] {
        let widths: Vec<usize> = (0..table.header.len())
            .map(|c| {
                std::iter::once(&table.header[c])
                    .chain(table.rows.iter().map(|row| &row[c]))
                    .map(|x| x.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(c, x)| {
                    let pad = widths[c] - x.chars().count();
                    if c == 0 {
                        format!("{x}{}", " ".repeat(pad))
                    } else {
                        format!("{}{x}", " ".repeat(pad))
                    }
                })
                .collect();
            format!("{}\n", parts.join("  ").trim_end())
        };
        s.push_str(&line(&table.header));
        for row in &table.rows {
            s.push_str(&line(row));
        }
        s.push('\n');
    }
    if let Some(o) = &r.ood {
        s.push_str(&format!(
            "out-of-distribution guard: {} of {} flagged ({:.1}%)\n",
            o.flagged,
            r.n,
            100.0 * o.flag_rate
        ));
    }
    s
}

/// Writes `report.json`, `predictions.csv` (truth and probability per label), `roc.png` (a
/// panel per label), `pr.png`, `cooccurrence.png` (of the truths here), `gallery.png` (the
/// highest-scoring images per label, framed green when positive), `report.md` and the
/// self-contained `report.html` into `out`.
pub fn write_multilabel_eval(
    out: &Path,
    r: &MultiLabelReport,
    scored: &[ScoredLabels],
) -> Result<()> {
    use crate::metrics::multilabel::column;
    use crate::metrics::{pr_curve, roc_curve};
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_json_atomic(&out.join("report.json"), r)?;
    write_predictions(&out.join("predictions.csv"), r, scored)?;
    let probs: Vec<Vec<f64>> = scored.iter().map(|s| s.probs.clone()).collect();
    let targets: Vec<Vec<f32>> = scored.iter().map(|s| s.targets.clone()).collect();
    let mut roc = Vec::new();
    let mut pr = Vec::new();
    for (l, lr) in r.per_label.iter().enumerate() {
        let (s, y) = column(&probs, &targets, l);
        roc.push((lr.label.clone(), roc_curve(&s, &y), lr.roc_auc));
        pr.push((lr.label.clone(), pr_curve(&s, &y), lr.pr_auc));
    }
    super::curves::roc_panels_png(&out.join("roc.png"), &roc)?;
    let prevalences: Vec<f64> = r.per_label.iter().map(|l| l.prevalence).collect();
    super::curves::pr_panels_png(&out.join("pr.png"), &pr, &prevalences)?;
    let k = r.labels.len();
    let positive: Vec<Vec<bool>> = targets
        .iter()
        .map(|t| t.iter().map(|&v| v == 1.0).collect())
        .collect();
    let co = crate::data::multilabel::cooccurrence(positive.iter().map(Vec::as_slice), k);
    cooccurrence_png(
        &out.join("cooccurrence.png"),
        &format!("label co-occurrence ({})", r.source),
        &r.labels,
        &co,
    )?;
    write_gallery(&out.join("gallery.png"), r, scored)?;
    let figures = ["roc.png", "pr.png", "cooccurrence.png", "gallery.png"]
        .iter()
        .zip([
            "ROC per label",
            "Precision-recall per label",
            "Label co-occurrence",
            "Highest-scoring images per label",
        ])
        .map(|(file, title)| -> Result<Figure> {
            let png = std::fs::read(out.join(file))?;
            Ok(Figure {
                file: file.to_string(),
                title: title.to_string(),
                wide: *file == "gallery.png",
                png,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (title, note) = title_and_note(r);
    let tables = [("Summary", headline(r)), ("Per label", per_label_table(r))];
    let mut md = format!("# {title}\n\n{note}\n\n");
    let mut html = super::html::page_start(&title, &note);
    for (heading, table) in &tables {
        md.push_str(&format!("## {heading}\n\n"));
        md.push_str(&super::markdown::markdown_table(table, true));
        md.push('\n');
        html.push_str(&format!("<h2>{heading}</h2>\n"));
        html.push_str(&super::html::html_table(table, None));
    }
    md.push_str("## Pictures\n\n");
    html.push_str("<h2>Pictures</h2>\n");
    for f in &figures {
        md.push_str(&format!("![{}]({})\n\n", f.title, f.file));
        html.push_str(&super::html::html_figure(f));
    }
    html.push_str(
        "<p class=\"note\">Written by xray. Research use, not a diagnosis.</p>\n</body>\n</html>\n",
    );
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    write_atomic(&out.join("report.html"), html.as_bytes())
}

/// `predictions.csv`: path, then per label its truth (1, 0, or empty when masked) and
/// probability, the findings over their thresholds, and the guard's score.
fn write_predictions(path: &Path, r: &MultiLabelReport, scored: &[ScoredLabels]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["path".to_string()];
    for l in &r.labels {
        header.push(format!("y_{l}"));
        header.push(format!("p_{l}"));
    }
    header.extend(["findings".to_string(), "ood_score".into()]);
    w.write_record(&header)?;
    let thresholds: Vec<f64> = r.per_label.iter().map(|l| l.threshold).collect();
    for s in scored {
        let mut row = vec![s.path.display().to_string()];
        for l in 0..r.labels.len() {
            row.push(match s.targets[l] {
                t if t < 0.0 => String::new(),
                t => format!("{t:.0}"),
            });
            // Every digit: rounded to six, probabilities near 1 of different labels tie, and
            // the pooled (micro) AUC of the file would differ from the report's.
            row.push(s.probs[l].to_string());
        }
        let found: Vec<&str> = over_thresholds(&s.probs, &thresholds)
            .into_iter()
            .map(|l| r.labels[l].as_str())
            .collect();
        row.push(found.join("|"));
        row.push(s.ood_score.map_or(String::new(), |v| format!("{v:.4}")));
        w.write_record(&row)?;
    }
    write_atomic(path, &w.into_inner()?)
}

/// Images shown per label in the gallery.
const GALLERY_PER_LABEL: usize = 6;

/// A row per label: its highest-scoring images, framed green when the label is positive on
/// them and red when not.
fn write_gallery(path: &Path, r: &MultiLabelReport, scored: &[ScoredLabels]) -> Result<()> {
    let mut tiles = Vec::new();
    for (l, lr) in r.per_label.iter().enumerate() {
        let mut order: Vec<&ScoredLabels> = scored.iter().filter(|s| s.targets[l] >= 0.0).collect();
        order.sort_by(|a, b| b.probs[l].total_cmp(&a.probs[l]));
        for i in 0..GALLERY_PER_LABEL {
            tiles.push(match order.get(i) {
                Some(s) => GalleryTile {
                    image: crate::data::decode::decode_image(&s.path)
                        .map(|img| img.thumbnail(150, 150).to_rgb8())
                        .unwrap_or_else(|_| {
                            image::RgbImage::from_pixel(150, 150, image::Rgb([128, 128, 128]))
                        }),
                    caption: vec![
                        format!("{} {:.0}%", lr.label, 100.0 * s.probs[l]),
                        if s.targets[l] == 1.0 {
                            "positive"
                        } else {
                            "negative"
                        }
                        .into(),
                    ],
                    frame: if s.targets[l] == 1.0 {
                        GalleryTile::GREEN
                    } else {
                        GalleryTile::RED
                    },
                },
                None => GalleryTile::blank(),
            });
        }
    }
    let title = format!(
        "The {GALLERY_PER_LABEL} highest-scoring images per label (green: positive for it, red: not)"
    );
    super::plots::gallery_grid_png(path, &title, &tiles, "no images", GALLERY_PER_LABEL, 150)
}
