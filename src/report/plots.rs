//! PNG plots: training curves, confusion matrices, ROC curves.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::train::checkpoint::EpochMetrics;

/// DejaVu Sans (Bitstream Vera licence, see assets/DejaVuSans.LICENSE).
static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Registers the embedded font as "sans-serif" (once per process).
pub fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, DEJAVU_SANS);
    });
}

/// A curve: its legend, colour, and the value it takes from each epoch.
type Curve = (&'static str, RGBColor, fn(&EpochMetrics) -> Option<f64>);

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// Draws into an in-memory RGB buffer of `width` x `height` and writes it as PNG with the image
/// crate (plotters' own encoder would pull in a second version of it).
fn render_png<F>(path: &Path, width: u32, height: u32, draw: F) -> Result<()>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
{
    register_fonts();
    let mut pixels = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    image::save_buffer(path, &pixels, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

/// `confusion.png`: counts (left) and row-normalised shares (right), rows = true class,
/// columns = predicted; cells shaded by the row share.
pub fn confusion_matrix_png(path: &Path, classes: &[String], cm: &[Vec<usize>]) -> Result<()> {
    let k = classes.len();
    let cell = (480 / k.max(1)).clamp(24, 120) as i32;
    let label_px = 140;
    let side = label_px + cell * k as i32 + 20;
    let font_px = (cell / 4).clamp(9, 18);
    let short = |c: &str| c.chars().take(16).collect::<String>();
    render_png(
        path,
        (side * 2) as u32,
        (40 + cell * k as i32 + 50) as u32,
        |root| {
            let panels = root.split_evenly((1, 2));
            for (panel, normalised) in panels.iter().zip([false, true]) {
                let title = if normalised {
                    "row-normalised (rows = true)"
                } else {
                    "counts (rows = true)"
                };
                panel
                    .draw(&Text::new(
                        title,
                        (label_px, 8),
                        ("sans-serif", 18).into_font(),
                    ))
                    .map_err(plot_err)?;
                let top = 40;
                for (r, row) in cm.iter().enumerate() {
                    let total: usize = row.iter().sum();
                    for (c, &n) in row.iter().enumerate() {
                        let share = if total > 0 {
                            n as f64 / total as f64
                        } else {
                            0.0
                        };
                        let shade = (255.0 * (1.0 - 0.8 * share)) as u8;
                        let (x, y) = (label_px + c as i32 * cell, top + r as i32 * cell);
                        let corners = [(x, y), (x + cell, y + cell)];
                        panel
                            .draw(&Rectangle::new(
                                corners,
                                RGBColor(shade, shade, 255).filled(),
                            ))
                            .map_err(plot_err)?;
                        panel
                            .draw(&Rectangle::new(corners, BLACK.stroke_width(1)))
                            .map_err(plot_err)?;
                        let text = if normalised {
                            format!("{share:.2}")
                        } else {
                            n.to_string()
                        };
                        let color = if share > 0.6 { WHITE } else { BLACK };
                        panel
                            .draw(&Text::new(
                                text,
                                (x + cell / 5, y + cell / 2 - font_px / 2),
                                ("sans-serif", font_px).into_font().color(&color),
                            ))
                            .map_err(plot_err)?;
                    }
                    panel
                        .draw(&Text::new(
                            short(&classes[r]),
                            (4, top + r as i32 * cell + cell / 2 - 7),
                            ("sans-serif", 14).into_font(),
                        ))
                        .map_err(plot_err)?;
                }
                for (c, name) in classes.iter().enumerate() {
                    panel
                        .draw(&Text::new(
                            short(name),
                            (label_px + c as i32 * cell + 2, top + k as i32 * cell + 4),
                            ("sans-serif", 12).into_font(),
                        ))
                        .map_err(plot_err)?;
                }
                panel
                    .draw(&Text::new(
                        "predicted",
                        (label_px, top + k as i32 * cell + 22),
                        ("sans-serif", 14).into_font(),
                    ))
                    .map_err(plot_err)?;
            }
            Ok(())
        },
    )
}

/// A ROC curve to draw: its legend, points (false-positive rate, true-positive rate), AUC.
pub type RocCurve = (String, Vec<(f64, f64)>, Option<f64>);

/// `roc.png`: one ROC curve per class or positive class, with the chance line.
pub fn roc_png(path: &Path, curves: &[RocCurve]) -> Result<()> {
    render_png(path, 640, 600, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("ROC", ("sans-serif", 24))
            .margin(14)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("false-positive rate (1 - specificity)")
            .y_desc("true-positive rate (sensitivity)")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                BLACK.mix(0.4).stroke_width(1),
            ))
            .map_err(plot_err)?;
        for (i, (name, points, auc)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let label = match auc {
                Some(a) => format!("{name} (AUC {a:.3})"),
                None => name.clone(),
            };
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(plot_err)
    })
}

/// `curves.png`: loss (left) and accuracy with validation AUC (right) per epoch, train and
/// validation.
pub fn training_curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    render_png(path, 1200, 450, |root| {
        let panels = root.split_evenly((1, 2));
        let epochs = history.len().max(2) as f64;
        let x_range = 1.0..epochs;

        let losses: Vec<f64> = history
            .iter()
            .flat_map(|m| [m.train_loss, m.val_loss])
            .filter(|v| v.is_finite())
            .collect();
        let max_loss = losses.iter().cloned().fold(0.0, f64::max).max(1e-3) * 1.05;
        let loss_curves: [Curve; 2] = [
            ("train", BLUE, |m| Some(m.train_loss)),
            ("validation", RED, |m| Some(m.val_loss)),
        ];
        let quality_curves: [Curve; 3] = [
            ("train accuracy", BLUE, |m| Some(m.train_acc)),
            ("validation accuracy", RED, |m| Some(m.val_acc)),
            ("validation AUC", GREEN, |m| m.val_auc),
        ];
        let panel_specs: [(&str, f64, &[Curve], SeriesLabelPosition); 2] = [
            (
                "loss",
                max_loss,
                &loss_curves,
                SeriesLabelPosition::UpperRight,
            ),
            (
                "accuracy and AUC",
                1.0,
                &quality_curves,
                SeriesLabelPosition::LowerRight,
            ),
        ];
        for (area, (caption, y_max, curves, position)) in panels.iter().zip(panel_specs) {
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 24))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(55)
                .build_cartesian_2d(x_range.clone(), 0.0..y_max)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(plot_err)?;
            for &(name, color, pick) in curves {
                draw_series(&mut chart, history, name, color, pick)?;
            }
            legend(&mut chart, position)?;
        }
        Ok(())
    })
}

type Chart<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_series(
    chart: &mut Chart<'_>,
    history: &[EpochMetrics],
    name: &str,
    color: RGBColor,
    pick: fn(&EpochMetrics) -> Option<f64>,
) -> Result<()> {
    let points: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|m| {
            pick(m)
                .filter(|v| v.is_finite())
                .map(|v| (m.epoch as f64, v))
        })
        .collect();
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
        .map_err(plot_err)?
        .label(name.to_string())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )
        .map_err(plot_err)?;
    Ok(())
}

fn legend(chart: &mut Chart<'_>, position: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(position)
        .draw()
        .map_err(plot_err)
}
