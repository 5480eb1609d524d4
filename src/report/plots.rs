//! PNG plots: training curves.

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

/// `curves.png`: loss (left) and accuracy with validation AUC (right) per epoch, train and
/// validation.
pub fn training_curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    register_fonts();
    const WIDTH_PX: u32 = 1200;
    const HEIGHT_PX: u32 = 450;
    // Drawn into memory and encoded with the image crate (plotters' own encoder would pull in
    // a second version of it).
    let mut pixels = vec![0u8; (WIDTH_PX * HEIGHT_PX * 3) as usize];
    {
        let root =
            BitMapBackend::with_buffer(&mut pixels, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
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
        root.present().map_err(plot_err)?;
    }
    image::save_buffer(
        path,
        &pixels,
        WIDTH_PX,
        HEIGHT_PX,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
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
