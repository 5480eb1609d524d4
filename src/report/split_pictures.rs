//! Pictures of a split folder, to look at the data before training: `classes.png` (images per
//! class and split), `samples.png` (a few training images of each class) and
//! `near_duplicates.png` (the closest near-duplicate pairs side by side with their distance
//! and correlation, so that a person can judge the threshold).

use std::path::Path;

use anyhow::Result;
use image::RgbImage;

use super::plots::{gallery_png, GalleryTile};
use crate::data::split::{SplitOutcome, SplitReport};

/// Images per class in `samples.png`.
pub const SAMPLES_PER_CLASS: usize = 4;

/// Writes `classes.png`, `samples.png` and `near_duplicates.png` into `out`.
pub fn write_split_pictures(out: &Path, outcome: &SplitOutcome) -> Result<()> {
    let r = &outcome.report;
    crate::fsutil::write_with(&out.join("classes.png"), |tmp| {
        super::plots::classes_png(tmp, &r.classes, &r.counts)
    })?;
    let tiles: Vec<GalleryTile> = r
        .classes
        .iter()
        .flat_map(|class| {
            outcome
                .records
                .iter()
                .filter(move |rec| &rec.label == class && rec.split == "train")
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
    write_near_duplicates_png(out, r)
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

/// Pairs drawn in `near_duplicates.png`.
pub const PAIRS_SHOWN: usize = 12;

/// Writes `OUT/near_duplicates.png` from the report's pairs (images read from its data folder).
pub fn write_near_duplicates_png(out: &Path, report: &SplitReport) -> Result<()> {
    let nd = &report.near_duplicates;
    let load = |rel: &str| {
        crate::data::decode::decode_image(&report.data_dir.join(rel))
            .map(|img| {
                img.resize_to_fill(160, 160, image::imageops::FilterType::Triangle)
                    .to_rgb8()
            })
            .unwrap_or_else(|_| RgbImage::from_pixel(160, 160, image::Rgb([128; 3])))
    };
    let tiles: Vec<GalleryTile> = nd
        .pairs
        .iter()
        .take(PAIRS_SHOWN)
        .map(|p| {
            let (a, b) = (load(&p.a), load(&p.b));
            let mut both =
                RgbImage::from_pixel(a.width() + b.width() + 4, a.height(), image::Rgb([255; 3]));
            image::imageops::replace(&mut both, &a, 0, 0);
            image::imageops::replace(&mut both, &b, a.width() as i64 + 4, 0);
            GalleryTile {
                image: both,
                caption: vec![
                    format!("r {:.3}, {} bits apart", p.correlation, p.distance),
                    p.a.clone(),
                    p.b.clone(),
                ],
                frame: GalleryTile::RED,
            }
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
