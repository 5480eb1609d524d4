//! Pictures of a split folder, to look at the data before training: `classes.png` (images per
//! class and split), `samples.png` (a few training images of each class) and
//! `near_duplicates.png` (the closest near-duplicate pairs side by side with their distance
//! and correlation, so that a person can judge the threshold) and `label_conflicts.png` (the
//! identical images found under two labels, with both labels, those of gutted classes first).

use std::path::Path;

use anyhow::Result;
use image::RgbImage;

use super::plots::{gallery_png, GalleryTile};
use crate::data::split::{SplitOutcome, SplitReport};

/// Images per class in `samples.png`.
pub const SAMPLES_PER_CLASS: usize = 4;

/// Writes `classes.png`, `samples.png`, `near_duplicates.png` and `label_conflicts.png` into
/// `out`.
pub fn write_split_pictures(out: &Path, outcome: &SplitOutcome) -> Result<()> {
    let r = &outcome.report;
    let title = if r.is_multilabel() {
        "positive images per label and split"
    } else {
        "images per class and split"
    };
    crate::fsutil::write_with(&out.join("classes.png"), |tmp| {
        super::plots::classes_png(tmp, title, &r.classes, &r.counts)
    })?;
    if r.is_multilabel() {
        crate::fsutil::write_with(&out.join("cooccurrence.png"), |tmp| {
            super::multilabel::cooccurrence_png(
                tmp,
                "label co-occurrence (all splits)",
                &r.classes,
                &r.cooccurrence,
            )
        })?;
    }
    let tiles: Vec<GalleryTile> = r
        .classes
        .iter()
        .enumerate()
        .flat_map(|(c, class)| {
            outcome
                .records
                .iter()
                .filter(move |rec| {
                    let of_class = match rec.values.get(c) {
                        Some(&v) => v == crate::data::multilabel::LabelValue::Positive,
                        None => &rec.label == class,
                    };
                    of_class && rec.split == crate::data::split::Split::Train
                })
                .take(SAMPLES_PER_CLASS)
        })
        .map(|rec| GalleryTile {
            image: load_tile(&r.data_dir.join(&rec.path)),
            caption: vec![
                rec.label.clone(),
                Path::new(&rec.path)
                    .file_name()
                    .map_or(rec.path.clone(), |n| n.to_string_lossy().into_owned()),
            ],
            frame: GalleryTile::RED,
        })
        .collect();
    crate::fsutil::write_with(&out.join("samples.png"), |tmp| {
        gallery_png(
            tmp,
            &format!("up to {SAMPLES_PER_CLASS} training images per class"),
            &tiles,
            "no training images",
        )
    })?;
    write_near_duplicates_png(out, r)?;
    write_label_conflicts_png(out, r)
}

/// An image fitted into a 160 px square; grey when it cannot be read.
fn load_tile(path: &Path) -> RgbImage {
    crate::data::decode::decode_image(path)
        .map(|img| {
            img.resize_to_fill(160, 160, image::imageops::FilterType::Triangle)
                .to_rgb8()
        })
        .unwrap_or_else(|_| RgbImage::from_pixel(160, 160, image::Rgb([128; 3])))
}

/// Two images of the dataset folder side by side, 160 px each.
fn side_by_side(report: &SplitReport, a: &str, b: &str) -> RgbImage {
    let (a, b) = (
        load_tile(&report.data_dir.join(a)),
        load_tile(&report.data_dir.join(b)),
    );
    let mut both =
        RgbImage::from_pixel(a.width() + b.width() + 4, a.height(), image::Rgb([255; 3]));
    image::imageops::replace(&mut both, &a, 0, 0);
    image::imageops::replace(&mut both, &b, a.width() as i64 + 4, 0);
    both
}

/// Writes `OUT/label_conflicts.png`: for up to [`PAIRS_SHOWN`] sets of identical images under
/// two labels (those touching a class in `class_warnings` first), two of the files side by
/// side, their labels and paths under them.
pub fn write_label_conflicts_png(out: &Path, report: &SplitReport) -> Result<()> {
    let warned = |c: &crate::data::split::LabelConflict| {
        c.labels
            .iter()
            .any(|l| report.class_warnings.iter().any(|w| &w.class == l))
    };
    let mut sets: Vec<_> = report.label_conflicts.iter().collect();
    sets.sort_by_key(|c| !warned(c));
    let tiles: Vec<GalleryTile> = sets
        .iter()
        .take(PAIRS_SHOWN)
        .map(|c| {
            // The first file, and the first under another label.
            let other = (1..c.paths.len())
                .find(|&i| c.labels[i] != c.labels[0])
                .unwrap_or(0);
            GalleryTile {
                image: side_by_side(report, &c.paths[0], &c.paths[other]),
                caption: vec![
                    format!("{} | {}", c.labels[0], c.labels[other]),
                    c.paths[0].clone(),
                    c.paths[other].clone(),
                ],
                frame: GalleryTile::RED,
            }
        })
        .collect();
    let title = format!(
        "label conflicts: {} of {} sets of identical images under two labels (all dropped)",
        tiles.len(),
        report.label_conflicts.len()
    );
    crate::fsutil::write_with(&out.join("label_conflicts.png"), |tmp| {
        gallery_png(
            tmp,
            &title,
            &tiles,
            &format!(
                "no image appears under two labels among {} files",
                report.files_found
            ),
        )
    })
}

/// Pairs drawn in `near_duplicates.png`.
pub const PAIRS_SHOWN: usize = 12;

/// Writes `OUT/near_duplicates.png` from the report's pairs (images read from its data folder).
pub fn write_near_duplicates_png(out: &Path, report: &SplitReport) -> Result<()> {
    let nd = &report.near_duplicates;
    let tiles: Vec<GalleryTile> = nd
        .pairs
        .iter()
        .take(PAIRS_SHOWN)
        .map(|p| GalleryTile {
            image: side_by_side(report, &p.a, &p.b),
            caption: vec![
                format!("r {:.3}, {} bits apart", p.correlation, p.distance),
                p.a.clone(),
                p.b.clone(),
            ],
            frame: GalleryTile::RED,
        })
        .collect();
    let title = format!(
        "near-duplicates: the {} closest of {} pairs (hash within {} bits, thumbnails r >= {})",
        tiles.len(),
        nd.pairs.len(),
        nd.max_distance,
        nd.min_correlation
    );
    crate::fsutil::write_with(&out.join("near_duplicates.png"), |tmp| {
        gallery_png(
            tmp,
            &title,
            &tiles,
            &format!(
                "no near-duplicates among {} images (hash within {} bits, thumbnails r >= {})",
                report.images_kept, nd.max_distance, nd.min_correlation
            ),
        )
    })
}
