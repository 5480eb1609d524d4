//! `roc.png` and `pr.png`. Up to [`MAX_OVERLAID`] curves share one plot, with the legend below
//! it (full class names, wrapped) so that it never covers a curve; more classes get one small
//! panel each, its class name and area in its title, as small multiples read better than two
//! dozen overlapping lines.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::plots::{labelled_line, plot_err, render_png, Area};
use super::text_layout::{font, line_height, wrap};

/// The most curves drawn over one another.
pub const MAX_OVERLAID: usize = 8;

/// A curve to draw: its name (a class), its points, and the area under it (AUC or average
/// precision).
pub type ScoreCurve = (String, Vec<(f64, f64)>, Option<f64>);

/// What distinguishes the ROC plot from the precision-recall plot.
struct CurvePlot<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    /// The area's name (AUC, AP).
    area: &'a str,
    /// Per curve, its chance line (a straight line through two points).
    chance: Vec<[(f64, f64); 2]>,
    /// The curves are a multi-label model's labels (each its positives against its
    /// negatives), not classes each against the rest.
    labels: bool,
}

/// `roc.png`: one ROC curve per class (one against the rest) or for the positive class, with
/// the chance line.
pub fn roc_png(path: &Path, curves: &[ScoreCurve]) -> Result<()> {
    roc_png_titled(path, "ROC", curves)
}

/// [`roc_png`] under another title (`xray compare`: a curve per run).
pub fn roc_png_titled(path: &Path, title: &str, curves: &[ScoreCurve]) -> Result<()> {
    let plot = CurvePlot {
        title,
        x_desc: "false-positive rate (1 - specificity)",
        y_desc: "true-positive rate (sensitivity)",
        area: "AUC",
        chance: vec![[(0.0, 0.0), (1.0, 1.0)]; curves.len()],
        labels: false,
    };
    draw(path, plot, curves)
}

/// `roc.png` of a multi-label model: one panel per label, its AUC in the panel's title, however
/// few labels there are.
pub fn roc_panels_png(path: &Path, curves: &[ScoreCurve]) -> Result<()> {
    let plot = CurvePlot {
        title: "ROC per label",
        x_desc: "false-positive rate (1 - specificity)",
        y_desc: "true-positive rate (sensitivity)",
        area: "AUC",
        chance: vec![[(0.0, 0.0), (1.0, 1.0)]; curves.len()],
        labels: true,
    };
    small_multiples(path, &plot, curves)
}

/// `pr.png`: one precision-recall curve per class or for the positive class, each with its
/// prevalence (a chance classifier's precision) in `prevalences`, same order.
pub fn pr_png(path: &Path, curves: &[ScoreCurve], prevalences: &[f64]) -> Result<()> {
    let plot = CurvePlot {
        title: "precision-recall",
        x_desc: "recall (sensitivity)",
        y_desc: "precision (positive predictive value)",
        area: "AP",
        chance: prevalences.iter().map(|&p| [(0.0, p), (1.0, p)]).collect(),
        labels: false,
    };
    draw(path, plot, curves)
}

/// `pr.png` of a multi-label model: one panel per label, its average precision in the panel's
/// title and its prevalence as the chance line.
pub fn pr_panels_png(path: &Path, curves: &[ScoreCurve], prevalences: &[f64]) -> Result<()> {
    let plot = CurvePlot {
        title: "precision-recall per label",
        x_desc: "recall (sensitivity)",
        y_desc: "precision (positive predictive value)",
        area: "AP",
        chance: prevalences.iter().map(|&p| [(0.0, p), (1.0, p)]).collect(),
        labels: true,
    };
    small_multiples(path, &plot, curves)
}

fn draw(path: &Path, plot: CurvePlot<'_>, curves: &[ScoreCurve]) -> Result<()> {
    if curves.len() > MAX_OVERLAID {
        small_multiples(path, &plot, curves)
    } else {
        overlaid(path, &plot, curves)
    }
}

/// A curve's line in the legend or a panel title: its name and area.
fn area_text(plot: &CurvePlot<'_>, area: Option<f64>) -> String {
    area.map_or(format!("{} undefined", plot.area), |a| {
        format!("{} {a:.3}", plot.area)
    })
}

/// Size of legend text.
const LEGEND_PX: u32 = 14;

/// All curves in one plot, the legend under it.
fn overlaid(path: &Path, plot: &CurvePlot<'_>, curves: &[ScoreCurve]) -> Result<()> {
    const WIDTH: u32 = 640;
    const PLOT_H: u32 = 600;
    let lh = line_height(LEGEND_PX);
    let chance_label = if plot.area == "AP" {
        "chance: the class's prevalence".to_string()
    } else {
        "chance".to_string()
    };
    let entries: Vec<(Option<usize>, Vec<String>)> = std::iter::once((None, vec![chance_label]))
        .chain(curves.iter().enumerate().map(|(i, (name, _, area))| {
            let text = format!("{name} ({})", area_text(plot, *area));
            (Some(i), wrap(&text, LEGEND_PX, WIDTH - 60))
        }))
        .collect();
    let legend_h: u32 = entries
        .iter()
        .map(|(_, l)| l.len() as u32 * lh + 4)
        .sum::<u32>()
        + 16;
    render_png(path, WIDTH, PLOT_H + legend_h, |root| {
        let (top, bottom) = root.split_vertically(PLOT_H);
        let mut chart = ChartBuilder::on(&top)
            .caption(plot.title, ("sans-serif", 24))
            .margin(14)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(plot.x_desc)
            .y_desc(plot.y_desc)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        // Each distinct chance line once.
        let mut drawn: Vec<[(f64, f64); 2]> = Vec::new();
        for line in &plot.chance {
            if !drawn.contains(line) {
                chart
                    .draw_series(LineSeries::new(
                        line.to_vec(),
                        BLACK.mix(0.4).stroke_width(1),
                    ))
                    .map_err(plot_err)?;
                drawn.push(*line);
            }
        }
        for (i, (name, points, _)) in curves.iter().enumerate() {
            labelled_line(&mut chart, points.clone(), color(i), name.clone())?;
        }
        let mut y = 8i32;
        for (curve, lines) in &entries {
            let swatch = [(14, y + 8), (40, y + 8)];
            match curve {
                Some(i) => bottom.draw(&PathElement::new(swatch, color(*i).stroke_width(3))),
                None => bottom.draw(&PathElement::new(swatch, BLACK.mix(0.4).stroke_width(1))),
            }
            .map_err(plot_err)?;
            for (j, l) in lines.iter().enumerate() {
                bottom
                    .draw(&Text::new(
                        l.clone(),
                        (50, y + (j as u32 * lh) as i32 + LEGEND_PX as i32 / 4),
                        font(LEGEND_PX),
                    ))
                    .map_err(plot_err)?;
            }
            y += (lines.len() as u32 * lh + 4) as i32;
        }
        Ok(())
    })
}

/// The colour of curve `i`.
fn color(i: usize) -> RGBAColor {
    Palette99::pick(i).to_rgba()
}

/// Panel title size.
const PANEL_PX: u32 = 12;
/// Side of a panel's plot.
const PANEL: u32 = 220;

/// One panel per class in a grid, its name and area above it.
fn small_multiples(path: &Path, plot: &CurvePlot<'_>, curves: &[ScoreCurve]) -> Result<()> {
    let n = curves.len();
    let cols = (n as f64).sqrt().ceil() as u32;
    let rows = (n as u32).div_ceil(cols);
    let lh = line_height(PANEL_PX);
    let titles: Vec<Vec<String>> = curves
        .iter()
        .map(|(name, _, area)| {
            let mut lines = wrap(name, PANEL_PX, PANEL - 12);
            lines.push(area_text(plot, *area));
            lines
        })
        .collect();
    let title_h = titles.iter().map(Vec::len).max().unwrap_or(1) as u32 * lh + 6;
    let panel_h = title_h + PANEL;
    const HEADER: u32 = 64;
    let (width, height) = (cols * PANEL + 20, HEADER + rows * panel_h + 10);
    let defined: Vec<f64> = curves.iter().filter_map(|c| c.2).collect();
    let mean = if defined.is_empty() {
        "undefined".to_string()
    } else {
        format!("{:.3}", defined.iter().sum::<f64>() / defined.len() as f64)
    };
    render_png(path, width, height, |root| {
        root.draw(&Text::new(
            if plot.labels {
                format!(
                    "{}: {n} labels, each its positives against its negatives (mean {} {mean})",
                    plot.title, plot.area
                )
            } else {
                format!(
                    "{}: each of {n} classes against the rest (mean {} {mean})",
                    plot.title, plot.area
                )
            },
            (10, 8),
            font(20),
        ))
        .map_err(plot_err)?;
        root.draw(&Text::new(
            format!("x: {}; y: {}", plot.x_desc, plot.y_desc),
            (10, 36),
            font(14),
        ))
        .map_err(plot_err)?;
        let grid = root.margin(HEADER, 10, 10, 10);
        for (i, ((_, points, _), title)) in curves.iter().zip(&titles).enumerate() {
            let (col, row) = (i as u32 % cols, i as u32 / cols);
            let x0 = (col * PANEL) as i32;
            let y0 = (row * panel_h) as i32;
            let panel = grid.clone().shrink((x0, y0), (PANEL, panel_h));
            panel_plot(&panel, points, plot.chance.get(i), title, title_h)?;
        }
        Ok(())
    })
}

/// One class's panel: its title lines, then the curve and its chance line.
fn panel_plot(
    panel: &Area<'_>,
    points: &[(f64, f64)],
    chance: Option<&[(f64, f64); 2]>,
    title: &[String],
    title_h: u32,
) -> Result<()> {
    let lh = line_height(PANEL_PX) as i32;
    for (j, l) in title.iter().enumerate() {
        let bold = j + 1 == title.len();
        let style = if bold {
            font(PANEL_PX).color(&RGBColor(40, 40, 160))
        } else {
            font(PANEL_PX).color(&BLACK)
        };
        panel
            .draw(&Text::new(
                l.clone(),
                (34, 2 + j as i32 * lh + PANEL_PX as i32 / 4),
                style,
            ))
            .map_err(plot_err)?;
    }
    let (_, body) = panel.split_vertically(title_h);
    let mut chart = ChartBuilder::on(&body)
        .margin_right(8)
        .x_label_area_size(20)
        .y_label_area_size(30)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_labels(3)
        .y_labels(3)
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 10))
        .light_line_style(WHITE)
        .draw()
        .map_err(plot_err)?;
    if let Some(line) = chance {
        chart
            .draw_series(LineSeries::new(
                line.to_vec(),
                BLACK.mix(0.4).stroke_width(1),
            ))
            .map_err(plot_err)?;
    }
    chart
        .draw_series(LineSeries::new(points.to_vec(), BLUE.stroke_width(2)))
        .map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curves(k: usize) -> Vec<ScoreCurve> {
        crate::report::confusion::tests::dermnet_classes()
            .into_iter()
            .take(k)
            .enumerate()
            .map(|(i, name)| {
                let bend = 0.2 + 0.6 * i as f64 / k as f64;
                let points = (0..=20)
                    .map(|j| {
                        let x = j as f64 / 20.0;
                        (x, x.powf(bend))
                    })
                    .collect();
                (name, points, Some(1.0 - bend / 2.0))
            })
            .collect()
    }

    #[test]
    fn many_classes_get_one_panel_each() {
        let dir = std::env::temp_dir();
        let c = curves(23);
        roc_png(&dir.join("xray-roc23.png"), &c).unwrap();
        pr_png(&dir.join("xray-pr23.png"), &c, &[0.04; 23]).unwrap();
        let img = image::open(dir.join("xray-roc23.png")).unwrap();
        // Five columns of 220 px panels.
        assert_eq!(img.width(), 5 * PANEL + 20);
        let few = curves(3);
        roc_png(&dir.join("xray-roc3.png"), &few).unwrap();
        let img = image::open(dir.join("xray-roc3.png")).unwrap();
        assert_eq!(img.width(), 640);
        assert!(img.height() > 600, "the legend sits below the plot");
    }
}
