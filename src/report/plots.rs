//! PNG plots: training curves, confusion matrices, ROC and precision-recall curves, reliability
//! diagrams, image galleries and the trials of a hyperparameter search.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::metrics::calibration::ReliabilityBin;
use crate::run::EpochMetrics;

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

pub(super) fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// The drawing area plotters draws on.
pub(super) type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Draws into a white in-memory RGB buffer of `width` x `height` and writes it as PNG.
pub(super) fn render_png<F>(path: &Path, width: u32, height: u32, draw: F) -> Result<()>
where
    F: FnOnce(&Area<'_>) -> Result<()>,
{
    let canvas = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    draw_on_png(path, canvas, draw)
}

/// Draws over `canvas` (pictures already placed on it) and writes it as PNG with the image
/// crate (plotters' own encoder would pull in a second version of it).
pub(super) fn draw_on_png<F>(path: &Path, canvas: image::RgbImage, draw: F) -> Result<()>
where
    F: FnOnce(&Area<'_>) -> Result<()>,
{
    register_fonts();
    let (width, height) = canvas.dimensions();
    let mut pixels = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    image::save_buffer(path, &pixels, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

pub use super::confusion::confusion_matrix_png;

pub use super::curves::{pr_png, roc_png, ScoreCurve};

/// `calibration.png`: the reliability diagram (accuracy against mean confidence per bin, before
/// and after temperature scaling, with the diagonal of perfect calibration) above a histogram of
/// how many images fall in each bin.
pub fn calibration_png(
    path: &Path,
    before: &[ReliabilityBin],
    after: &[ReliabilityBin],
    ece: (Option<f64>, Option<f64>),
    temperature: f64,
) -> Result<()> {
    // Long on purpose: drawing code: one plotters call per element of the picture, in drawing
    // order.
    render_png(path, 640, 760, |root| {
        let (top, bottom) = root.split_vertically(560);
        let mut chart = ChartBuilder::on(&top)
            .caption("reliability diagram", ("sans-serif", 24))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("confidence (top-class probability)")
            .y_desc("accuracy")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        // The gap to the diagonal of the calibrated bins, shaded.
        chart
            .draw_series(after.iter().filter(|b| b.count > 0).map(|b| {
                let acc = b.accuracy.unwrap_or(0.0);
                Rectangle::new([(b.lo, 0.0), (b.hi, acc)], BLUE.mix(0.12).filled())
            }))
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(plot_err)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
        let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        let series: [(String, &[ReliabilityBin], RGBColor); 2] = [
            (format!("raw softmax (ECE {})", fmt(ece.0)), before, RED),
            (
                format!("T = {temperature:.3} (ECE {})", fmt(ece.1)),
                after,
                BLUE,
            ),
        ];
        for (label, bins, color) in series {
            let points: Vec<(f64, f64)> = bins
                .iter()
                .filter_map(|b| Some((b.confidence?, b.accuracy?)))
                .collect();
            line_with_points(&mut chart, points, color, label)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;

        let max = after.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
        let mut hist = ChartBuilder::on(&bottom)
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..1.0, 0.0..max * 1.1)
            .map_err(plot_err)?;
        hist.configure_mesh()
            .x_desc("confidence after scaling")
            .y_desc("images")
            .y_labels(4)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        hist.draw_series(after.iter().map(|b| {
            Rectangle::new(
                [(b.lo, 0.0), (b.hi, b.count as f64)],
                BLUE.mix(0.6).filled(),
            )
        }))
        .map_err(plot_err)?;
        Ok(())
    })
}

/// Writes `image` with a white band above it carrying `title` (an overlay's class and
/// probability): the font sized to the image's width, a long title (a long class name) wrapped
/// onto more lines rather than shrunk past reading or cut.
pub fn titled_png(path: &Path, image: &image::RgbImage, title: &str) -> Result<()> {
    let (width, height) = image.dimensions();
    let font_px = (width / 22).clamp(11, 28);
    let lines = super::text_layout::wrap(title, font_px, width.saturating_sub(6).max(1));
    let lh = super::text_layout::line_height(font_px);
    let band = lines.len() as u32 * lh + 6;
    let mut canvas = image::RgbImage::from_pixel(width, height + band, image::Rgb([255, 255, 255]));
    image::imageops::replace(&mut canvas, image, 0, band as i64);
    draw_on_png(path, canvas, |root| {
        for (i, line) in lines.iter().enumerate() {
            root.draw(&Text::new(
                line.clone(),
                (3, 3 + (i as u32 * lh + font_px / 4) as i32),
                ("sans-serif", font_px as i32).into_font(),
            ))
            .map_err(plot_err)?;
        }
        Ok(())
    })
}

/// One tile of the error gallery: the image and what to write under it.
pub struct GalleryTile {
    /// The image, any size; it is fitted into the tile. A 0x0 image leaves its place empty
    /// (no frame, no caption), to keep rows aligned.
    pub image: image::RgbImage,
    /// Lines of caption (label, prediction, file name).
    pub caption: Vec<String>,
    /// The frame's colour ([`GalleryTile::RED`] for mistakes, [`GalleryTile::GREEN`] for right
    /// answers).
    pub frame: [u8; 3],
}

impl GalleryTile {
    /// The frame of a mistake, or of any tile that needs no colour code.
    pub const RED: [u8; 3] = [220, 30, 30];
    /// The frame of a right answer.
    pub const GREEN: [u8; 3] = [20, 150, 60];

    /// An empty place in the grid.
    pub fn blank() -> GalleryTile {
        GalleryTile {
            image: image::RgbImage::new(0, 0),
            caption: Vec::new(),
            frame: GalleryTile::RED,
        }
    }
}

/// `errors.png`, `samples.png`, `near_duplicates.png`: a grid of images with captions, such as
/// the most confident mistakes; `title` on top, `empty` written instead when there are no tiles.
/// Captions are wrapped to the tile's width (long class and file names in full, never cut), and
/// the caption band is as tall as the longest needs.
pub fn gallery_png(path: &Path, title: &str, tiles: &[GalleryTile], empty: &str) -> Result<()> {
    gallery_grid_png(path, title, tiles, empty, 4, 200)
}

/// [`gallery_png`] with `columns` tiles of `tile` pixels a row.
pub fn gallery_grid_png(
    path: &Path,
    title: &str,
    tiles: &[GalleryTile],
    empty: &str,
    columns: usize,
    tile: u32,
) -> Result<()> {
    // Long on purpose: drawing code: one plotters call per element of the picture, in drawing
    // order.
    const PAD: u32 = 10;
    const HEADER: u32 = 40;
    const CAPTION_PX: u32 = 13;
    let lh = super::text_layout::line_height(CAPTION_PX);
    let captions: Vec<Vec<String>> = tiles
        .iter()
        .map(|t| {
            t.caption
                .iter()
                .flat_map(|line| super::text_layout::wrap(line, CAPTION_PX, tile))
                .collect()
        })
        .collect();
    let caption_h = captions.iter().map(Vec::len).max().unwrap_or(0) as u32 * lh + 8;
    let columns = columns.max(1);
    let cols = tiles.len().clamp(1, columns) as u32;
    let rows = tiles.len().div_ceil(columns).max(1) as u32;
    let width = (PAD + cols * (tile + PAD)).max(600);
    let title_lines = super::text_layout::wrap(
        if tiles.is_empty() { empty } else { title },
        18,
        width - 2 * PAD,
    );
    let header = HEADER + (title_lines.len() as u32 - 1) * super::text_layout::line_height(18);
    let height = header + rows * (tile + caption_h + PAD);
    let mut canvas = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let origin = |i: usize| {
        let (col, row) = (i as u32 % columns as u32, i as u32 / columns as u32);
        (
            PAD + col * (tile + PAD),
            header + row * (tile + caption_h + PAD),
        )
    };
    for (i, t) in tiles.iter().enumerate() {
        let (x0, y0) = origin(i);
        let (w, h) = t.image.dimensions();
        if w == 0 || h == 0 {
            continue;
        }
        let scale = tile as f64 / w.max(h).max(1) as f64;
        let (tw, th) = (
            ((w as f64 * scale).round() as u32).max(1),
            ((h as f64 * scale).round() as u32).max(1),
        );
        let thumb =
            image::imageops::resize(&t.image, tw, th, image::imageops::FilterType::Triangle);
        let (ox, oy) = (x0 + (tile - tw) / 2, y0 + (tile - th) / 2);
        image::imageops::replace(&mut canvas, &thumb, ox as i64, oy as i64);
    }
    draw_on_png(path, canvas, |root| {
        for (j, line) in title_lines.iter().enumerate() {
            root.draw(&Text::new(
                line.clone(),
                (
                    PAD as i32,
                    10 + (j as u32 * super::text_layout::line_height(18)) as i32,
                ),
                ("sans-serif", 18).into_font(),
            ))
            .map_err(plot_err)?;
        }
        for (i, (lines, t)) in captions.iter().zip(tiles).enumerate() {
            if t.image.width() == 0 {
                continue;
            }
            let (x0, y0) = origin(i);
            let (x, y) = (x0 as i32, (y0 + tile) as i32);
            root.draw(&Rectangle::new(
                [(x - 1, y - 1 - tile as i32), (x + tile as i32, y)],
                RGBColor(t.frame[0], t.frame[1], t.frame[2]).stroke_width(2),
            ))
            .map_err(plot_err)?;
            for (j, line) in lines.iter().enumerate() {
                root.draw(&Text::new(
                    line.clone(),
                    (x, y + 6 + (j as u32 * lh) as i32),
                    ("sans-serif", CAPTION_PX).into_font(),
                ))
                .map_err(plot_err)?;
            }
        }
        Ok(())
    })
}

/// `curves.png`: loss (left) and accuracy with validation AUC (right) per epoch, train and
/// validation.
pub fn training_curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    render_png(path, 1200, 450, |root| {
        let panels = root.split_evenly((1, 2));
        let epochs = history.len().max(2) as f64;

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
            let mut chart = epoch_chart(area, caption, epochs, y_max)?;
            for &(name, color, pick) in curves {
                let points = epoch_points(history, pick);
                line_with_points(&mut chart, points, color, name.to_string())?;
            }
            legend(&mut chart, position)?;
        }
        Ok(())
    })
}

/// A panel with epochs (1 to `epochs`) across and 0 to `y_max` up, its mesh drawn.
pub(super) fn epoch_chart<'a>(
    area: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    caption: &str,
    epochs: f64,
    y_max: f64,
) -> Result<Chart<'a>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(1.0..epochs, 0.0..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// The finite values `pick` takes from each epoch, as (epoch, value) points.
pub(super) fn epoch_points(
    history: &[EpochMetrics],
    pick: fn(&EpochMetrics) -> Option<f64>,
) -> Vec<(f64, f64)> {
    history
        .iter()
        .filter_map(|m| {
            pick(m)
                .filter(|v| v.is_finite())
                .map(|v| (m.epoch as f64, v))
        })
        .collect()
}

/// One finished trial of `xray tune`, for [`trials_png`].
#[derive(Debug, Clone, Copy)]
pub struct TrialPoint {
    /// Trial number.
    pub trial: usize,
    /// The monitored metric at its best epoch.
    pub value: f64,
    /// Whether the pruner stopped it.
    pub pruned: bool,
}

/// `trials.png`: the monitored metric of each trial (pruned ones hollow) and the best so far.
pub fn trials_png(
    path: &Path,
    metric: &str,
    higher_is_better: bool,
    trials: &[TrialPoint],
) -> Result<()> {
    // Long on purpose: drawing code: one plotters call per element of the picture, in drawing
    // order.
    render_png(path, 900, 450, |root| {
        let n = trials.iter().map(|t| t.trial + 1).max().unwrap_or(1).max(2) as f64;
        let (lo, hi) = trials
            .iter()
            .map(|t| t.value)
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        // The legend sits at the worse end (bottom for AUC, top for a loss), in a band kept
        // free of points, so it never hides a trial.
        let span = (hi - lo).max(1e-3);
        let (pad_worse, pad_better) = (span * 0.4, span * 0.08);
        let (y0, y1) = if higher_is_better {
            (lo - pad_worse, hi + pad_better)
        } else {
            (lo - pad_better, hi + pad_worse)
        };
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{metric} per trial"), ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..n - 0.5, y0..y1)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("trial")
            .y_desc(metric)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        let mut best: Option<f64> = None;
        let mut steps = Vec::new();
        for t in trials.iter().filter(|t| !t.pruned && t.value.is_finite()) {
            let better = |a: f64, b: f64| if higher_is_better { a > b } else { a < b };
            if let Some(b) = best {
                steps.push((t.trial as f64, b));
            }
            if best.is_none_or(|b| better(t.value, b)) {
                best = Some(t.value);
            }
            steps.push((t.trial as f64, best.unwrap_or(t.value)));
        }
        if let Some(b) = best {
            // Carried to the last trial, pruned or not.
            steps.push((n - 1.0, b));
        }
        labelled_line(&mut chart, steps, RED, "best so far".into())?;
        chart
            .draw_series(
                trials
                    .iter()
                    .filter(|t| !t.pruned)
                    .map(|t| Circle::new((t.trial as f64, t.value), 4, BLUE.filled())),
            )
            .map_err(plot_err)?
            .label("complete")
            .legend(|(x, y)| Circle::new((x + 10, y), 4, BLUE.filled()));
        chart
            .draw_series(
                trials
                    .iter()
                    .filter(|t| t.pruned)
                    .map(|t| Circle::new((t.trial as f64, t.value), 4, BLACK.stroke_width(1))),
            )
            .map_err(plot_err)?
            .label("pruned")
            .legend(|(x, y)| Circle::new((x + 10, y), 4, BLACK.stroke_width(1)));
        legend(
            &mut chart,
            if higher_is_better {
                SeriesLabelPosition::LowerRight
            } else {
                SeriesLabelPosition::UpperRight
            },
        )
    })
}

pub(super) type Chart<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A labelled line with a dot at each point.
fn line_with_points(
    chart: &mut Chart<'_>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    label: String,
) -> Result<()> {
    labelled_line(chart, points.clone(), color, label)?;
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )
        .map_err(plot_err)?;
    Ok(())
}

/// A line of width 2 with its entry in the legend.
pub(super) fn labelled_line<C: Color + Copy + 'static>(
    chart: &mut Chart<'_>,
    points: Vec<(f64, f64)>,
    color: C,
    label: String,
) -> Result<()> {
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))
        .map_err(plot_err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

pub(super) fn legend(chart: &mut Chart<'_>, position: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(position)
        .draw()
        .map_err(plot_err)
}

/// `classes.png` of `xray split`: one row per class (full name), a bar of its images split into
/// train, val and test with the counts written on it; the picture grows with the class count.
pub fn classes_png(
    path: &Path,
    title: &str,
    classes: &[String],
    counts: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>>,
) -> Result<()> {
    // Long on purpose: drawing code: one plotters call per element of the picture, in drawing
    // order.
    const ROW: u32 = 30;
    const TOP: u32 = 70;
    const BAR_W: u32 = 560;
    let splits: [(&str, RGBColor); 3] = [
        ("train", RGBColor(59, 111, 216)),
        ("val", RGBColor(240, 160, 40)),
        ("test", RGBColor(60, 170, 90)),
    ];
    // Names in full: as wide as the widest one is drawn (wrapped past 420 px, rows growing).
    let names: Vec<Vec<String>> = classes
        .iter()
        .map(|c| super::text_layout::wrap(c, 15, 420))
        .collect();
    let label_w = names
        .iter()
        .map(|l| super::text_layout::widest(l, 15))
        .max()
        .unwrap_or(60)
        .max(60)
        + 20;
    let row_h: Vec<u32> = names
        .iter()
        .map(|l| (l.len() as u32 * super::text_layout::line_height(15) + 8).max(ROW))
        .collect();
    let width = label_w + BAR_W + 40;
    let height = TOP + row_h.iter().sum::<u32>() + 20;
    let count = |s: &str, c: &str| counts.get(s).and_then(|m| m.get(c)).copied().unwrap_or(0);
    let max_total = classes
        .iter()
        .map(|c| splits.iter().map(|(s, _)| count(s, c)).sum::<usize>())
        .max()
        .unwrap_or(0)
        .max(1);
    render_png(path, width, height, |root| {
        let text = |s: &str, x: u32, y: u32, size: u32| {
            root.draw(&Text::new(
                s.to_string(),
                (x as i32, y as i32),
                ("sans-serif", size),
            ))
            .map_err(plot_err)
        };
        text(title, 12, 10, 22)?;
        let mut x = label_w;
        for (name, color) in splits {
            root.draw(&Rectangle::new(
                [(x as i32, 44), (x as i32 + 14, 58)],
                color.filled(),
            ))
            .map_err(plot_err)?;
            text(name, x + 20, 43, 15)?;
            x += 90;
        }
        let mut y = TOP;
        for (row, class) in classes.iter().enumerate() {
            let lines = &names[row];
            let h = row_h[row];
            for (j, l) in lines.iter().enumerate() {
                text(
                    l,
                    10,
                    y + 8 + j as u32 * super::text_layout::line_height(15),
                    15,
                )?;
            }
            // The bar sits in the row's first line.
            let mut x = label_w as f64;
            for (split, color) in splits {
                let n = count(split, class);
                let w = BAR_W as f64 * n as f64 / max_total as f64;
                if n > 0 {
                    root.draw(&Rectangle::new(
                        [
                            (x as i32, y as i32 + 4),
                            ((x + w) as i32, (y + ROW - 4) as i32),
                        ],
                        color.filled(),
                    ))
                    .map_err(plot_err)?;
                    if (super::text_layout::text_width(&n.to_string(), 13) + 8) as f64 <= w {
                        root.draw(&Text::new(
                            n.to_string(),
                            (x as i32 + 4, y as i32 + 8),
                            ("sans-serif", 13).into_font().color(&WHITE),
                        ))
                        .map_err(plot_err)?;
                    }
                }
                x += w;
            }
            let total: usize = splits.iter().map(|(s, _)| count(s, class)).sum();
            let label = if total == 0 {
                "0 (no images)".to_string()
            } else {
                total.to_string()
            };
            text(&label, x as u32 + 6, y + 8, 13)?;
            y += h;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_overlay_title_wraps_instead_of_shrinking() {
        let img = image::RgbImage::from_pixel(224, 224, image::Rgb([0, 0, 0]));
        let dir = std::env::temp_dir();
        let short = dir.join("xray-title-short.png");
        let long = dir.join("xray-title-long.png");
        titled_png(&short, &img, "NORMAL 97.1% (gradcam)").unwrap();
        titled_png(
            &long,
            &img,
            "Warts Molluscum & other Viral Infections 97.1% (gradcam)",
        )
        .unwrap();
        let (s, l) = (image::open(&short).unwrap(), image::open(&long).unwrap());
        assert_eq!(s.width(), 224);
        assert!(l.height() > s.height(), "{} vs {}", l.height(), s.height());
    }
}
