//! Near-duplicate images: the same scan re-encoded, resized, lightly cropped or brightened,
//! whose bytes (and so sha256) differ. `xray split` keeps each cluster of them in one split.
//!
//! Two stages, because chest X-rays all look alike to a 64-bit hash (on Kermany, 214 pairs of
//! different children lie within 4 bits of each other): each image gets a perceptual hash
//! (pHash: the low frequencies of a DCT of the grey image, one bit per coefficient above or
//! below their median, from the `image_hasher` crate) that finds candidate pairs cheaply, and a
//! 32x32 grey thumbnail, normalised to zero mean and unit length, whose correlation with the
//! other's confirms the pair: a re-encoded or resized copy correlates above
//! [`DEFAULT_MIN_CORRELATION`]; on Kermany no two distinct films correlate above 0.975.

use image::DynamicImage;
use image_hasher::{HashAlg, HasherConfig};
use serde::{Deserialize, Serialize};

/// Largest Hamming distance (of 64 bits) at which two images are candidates.
pub const DEFAULT_MAX_DISTANCE: u32 = 12;

/// Smallest thumbnail correlation at which candidates are near-duplicates. Measured: a copy
/// re-encoded at JPEG quality 60 and resized to 90% keeps 0.9967 (synth) to 0.9994 (Kermany);
/// distinct images reach 0.975 on Kermany and 0.9928 on synth's near-uniform normal class. A
/// 5% crop falls to 0.95 and is not caught.
pub const DEFAULT_MIN_CORRELATION: f32 = 0.995;

/// Side of the thumbnail compared.
const THUMB: u32 = 32;

/// What is compared of one image: its hash and its normalised thumbnail.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The perceptual hash.
    pub hash: u64,
    /// The grey 32x32 thumbnail, zero mean, unit length.
    pub thumb: Vec<f32>,
}

/// The signature of `img`.
pub fn signature(img: &DynamicImage) -> Signature {
    // The hash and the thumbnail both start from one 64x64 grey picture of block means.
    let grey = DynamicImage::ImageLuma8(grey_thumbnail(img, 64));
    let small = image::imageops::thumbnail(grey.as_luma8().expect("made grey above"), THUMB, THUMB);
    let mut thumb: Vec<f32> = small.pixels().map(|p| p.0[0] as f32).collect();
    let mean = thumb.iter().sum::<f32>() / thumb.len() as f32;
    thumb.iter_mut().for_each(|v| *v -= mean);
    let norm = thumb.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
    thumb.iter_mut().for_each(|v| *v /= norm);
    Signature {
        hash: perceptual_hash(&grey),
        thumb,
    }
}

/// `img` as a `side` x `side` grey picture, each pixel the plain mean of its block of source
/// pixels (grey = mean of R, G and B). Written out on the raw bytes: the image crate's grey
/// conversion and thumbnail cost more than decoding a 224 px JPEG.
fn grey_thumbnail(img: &DynamicImage, side: u32) -> image::GrayImage {
    let converted;
    let (bytes, channels): (&[u8], usize) = match img {
        DynamicImage::ImageLuma8(g) => (g.as_raw(), 1),
        DynamicImage::ImageRgb8(rgb) => (rgb.as_raw(), 3),
        other => {
            converted = other.to_luma8();
            (converted.as_raw(), 1)
        }
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let n = side as usize;
    let mut out = image::GrayImage::new(side, side);
    for oy in 0..n {
        let (y0, y1) = (oy * h / n, ((oy + 1) * h / n).max(oy * h / n + 1).min(h));
        for ox in 0..n {
            let (x0, x1) = (ox * w / n, ((ox + 1) * w / n).max(ox * w / n + 1).min(w));
            let mut sum = 0u64;
            for y in y0..y1 {
                let row = &bytes[(y * w + x0) * channels..(y * w + x1) * channels];
                sum += row.iter().map(|&b| b as u64).sum::<u64>();
            }
            let count = ((y1 - y0) * (x1 - x0) * channels).max(1) as u64;
            out.put_pixel(ox as u32, oy as u32, image::Luma([(sum / count) as u8]));
        }
    }
    out
}

/// The correlation of two signatures' thumbnails (1 = the same picture up to brightness and
/// contrast).
pub fn correlation(a: &Signature, b: &Signature) -> f32 {
    a.thumb.iter().zip(&b.thumb).map(|(x, y)| x * y).sum()
}

/// Every near-duplicate pair `(a, b, distance, correlation)` (indices into `sigs`, `a < b`):
/// hashes within `max_distance` bits and thumbnails correlated at least `min_correlation`.
pub fn near_duplicates(
    sigs: &[Signature],
    max_distance: u32,
    min_correlation: f32,
) -> Vec<(usize, usize, u32, f32)> {
    let hashes: Vec<u64> = sigs.iter().map(|s| s.hash).collect();
    near_pairs(&hashes, max_distance)
        .into_iter()
        .filter_map(|(a, b, d)| {
            let c = correlation(&sigs[a], &sigs[b]);
            (c >= min_correlation).then_some((a, b, d, c))
        })
        .collect()
}

/// The 64-bit perceptual hash of `img`.
pub fn perceptual_hash(img: &DynamicImage) -> u64 {
    thread_local! {
        // Making a hasher plans its DCT: once per thread, not once per image.
        static HASHER: image_hasher::Hasher = HasherConfig::new()
            .hash_alg(HashAlg::Median)
            .preproc_dct()
            .hash_size(8, 8)
            .resize_filter(image::imageops::FilterType::Triangle)
            .to_hasher();
    }
    let hash = HASHER.with(|h| h.hash_image(img));
    let mut bytes = [0u8; 8];
    for (b, h) in bytes.iter_mut().zip(hash.as_bytes()) {
        *b = *h;
    }
    u64::from_le_bytes(bytes)
}

/// Every pair `(a, b, distance)` (indices into `hashes`, `a < b`) within `max_distance` bits.
pub fn near_pairs(hashes: &[u64], max_distance: u32) -> Vec<(usize, usize, u32)> {
    let mut pairs = Vec::new();
    for (a, ha) in hashes.iter().enumerate() {
        for (b, hb) in hashes.iter().enumerate().skip(a + 1) {
            let d = (ha ^ hb).count_ones();
            if d <= max_distance {
                pairs.push((a, b, d));
            }
        }
    }
    pairs
}

/// One near-duplicate pair, as `split_report.json` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NearPair {
    /// One image, relative to the dataset folder.
    pub a: String,
    /// The other.
    pub b: String,
    /// Hamming distance of their hashes, in bits of 64.
    pub distance: u32,
    /// Correlation of their thumbnails.
    pub correlation: f32,
}

/// `split_report.json`'s `near_duplicates`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NearDuplicates {
    /// The hash distance threshold for candidates.
    pub max_distance: u32,
    /// The thumbnail correlation threshold.
    pub min_correlation: f32,
    /// Pairs found, closest first.
    pub pairs: Vec<NearPair>,
    /// Groups (patients) merged with another because of a near-duplicate across them.
    pub groups_merged: usize,
    /// Seconds spent hashing (beside decoding) and comparing.
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_like(seed: u32) -> DynamicImage {
        DynamicImage::ImageLuma8(image::GrayImage::from_fn(256, 256, |x, y| {
            let v = ((x * 7 + y * 3 + seed * 13) % 256) as f32;
            let blob = if (x as i32 - 90 - seed as i32).pow(2) + (y as i32 - 120).pow(2) < 2500 {
                90.0
            } else {
                0.0
            };
            image::Luma([((v * 0.5 + blob) as u32).min(255) as u8])
        }))
    }

    #[test]
    fn reencoded_resized_copy_is_near_and_other_image_is_not() {
        let img = scan_like(0);
        let mut jpeg = std::io::Cursor::new(Vec::new());
        let rgb = img.to_rgb8();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 60)
            .encode_image(&rgb)
            .unwrap();
        let copy = image::load_from_memory(&jpeg.into_inner()).unwrap().resize(
            230,
            230,
            image::imageops::FilterType::Triangle,
        );
        let h = [
            perceptual_hash(&img),
            perceptual_hash(&copy),
            perceptual_hash(&scan_like(60)),
        ];
        let pairs = near_pairs(&h, DEFAULT_MAX_DISTANCE);
        assert_eq!(
            pairs.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
            [(0, 1)],
            "{h:x?}"
        );
    }
}
