//! From a heatmap at the model's input resolution to pictures at the image's own: the jet
//! overlay and the raw 16-bit heatmap.

use std::path::Path;

use anyhow::{anyhow, Result};
use image::{ImageBuffer, Luma, RgbImage};

/// Maps a heatmap of the model's square input (`side` x `side`, row-major) back onto an image of
/// `width` x `height`: the input was the image resized so its shorter side is `side`, then
/// centre-cropped, so positions outside the crop get 0. Bilinear sampling.
pub fn to_image_resolution(heat: &[f32], side: usize, width: u32, height: u32) -> Vec<f32> {
    let short = width.min(height) as f32;
    let scale = side as f32 / short; // input pixels per image pixel
                                     // Per image row (column): the two input rows (columns) to blend and the weight of the
                                     // second, or None outside the crop.
    let axis = |n: u32| -> Vec<Option<(usize, usize, f32)>> {
        let offset = (n as f32 - short) / 2.0;
        (0..n)
            .map(|i| {
                let u = (i as f32 + 0.5 - offset) * scale - 0.5;
                if u < -0.5 || u > side as f32 - 0.5 {
                    return None;
                }
                let u = u.clamp(0.0, (side - 1) as f32);
                let lo = u.floor() as usize;
                Some((lo, (lo + 1).min(side - 1), u.fract()))
            })
            .collect()
    };
    let (rows, cols) = (axis(height), axis(width));
    let at = |x: usize, y: usize| heat[y * side + x];
    let mut out = vec![0f32; (width * height) as usize];
    for (y, row) in rows.iter().enumerate() {
        let Some((y0, y1, fy)) = *row else { continue };
        for (x, col) in cols.iter().enumerate() {
            let Some((x0, x1, fx)) = *col else { continue };
            let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
            let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
            out[y * width as usize + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
    out
}

/// Scales a non-negative map so its maximum is 1 (resampling moves the peak off its value);
/// an all-zero map stays zero.
pub fn rescale_to_unit(mut heat: Vec<f32>) -> Vec<f32> {
    let max = heat.iter().cloned().fold(0f32, f32::max);
    if max > 0.0 {
        heat.iter_mut().for_each(|v| *v /= max);
    }
    heat
}

/// The jet colour map (matplotlib's): blue at 0, through cyan, yellow, to red at 1.
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let channel = |centre: f32| ((1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0) * 255.0) as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// The image with the heatmap blended over it in jet colours at `alpha`.
pub fn blend(image: &RgbImage, heat: &[f32], alpha: f32) -> RgbImage {
    let mut out = image.clone();
    for (px, &h) in out.pixels_mut().zip(heat) {
        for (v, c) in px.0.iter_mut().zip(jet(h)) {
            *v = ((1.0 - alpha) * *v as f32 + alpha * c as f32).round() as u8;
        }
    }
    out
}

/// Image `i`'s map of a batch of heatmaps at the model's input resolution (`side`), mapped
/// onto `image` (scaled to peak at 1), and the image with it blended over in jet colours.
pub fn overlay_on(
    image: &RgbImage,
    maps: &tch::Tensor,
    i: usize,
    side: usize,
) -> Result<(Vec<f32>, RgbImage)> {
    let heat = Vec::<f32>::try_from(maps.get(i as i64).flatten(0, -1))
        .map_err(|e| anyhow!("heatmap to CPU: {e}"))?;
    let (w, h) = image.dimensions();
    let full = rescale_to_unit(to_image_resolution(&heat, side, w, h));
    let picture = blend(image, &full, super::OVERLAY_ALPHA);
    Ok((full, picture))
}

/// Writes the heatmap (values in [0, 1]) as a 16-bit grey PNG of `width` x `height`.
pub fn write_heat_png16(path: &Path, heat: &[f32], width: u32, height: u32) -> Result<()> {
    let data: Vec<u16> = heat
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 65535.0).round() as u16)
        .collect();
    let img: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_raw(width, height, data)
        .ok_or_else(|| anyhow!("heatmap size mismatch for {}", path.display()))?;
    img.save(path)
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

/// Longest side of a heatmap overlay that `serve` sends back and the DICOM results carry (a
/// viewer or a page does not need every pixel).
pub const OVERLAY_SIDE_PX: u32 = 768;

/// The image at most [`OVERLAY_SIDE_PX`] a side, in RGB, keeping its aspect ratio.
pub fn preview(image: &image::DynamicImage) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let long = w.max(h);
    if long <= OVERLAY_SIDE_PX {
        return image.to_rgb8();
    }
    image
        .resize(
            (w * OVERLAY_SIDE_PX / long).max(1),
            (h * OVERLAY_SIDE_PX / long).max(1),
            image::imageops::FilterType::Triangle,
        )
        .to_rgb8()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_ends_blue_and_red() {
        assert_eq!(jet(0.0), [0, 0, 127]);
        assert_eq!(jet(1.0), [127, 0, 0]);
        assert_eq!(jet(0.5), [127, 255, 127]);
    }

    /// A wide image: the model saw its centre square, so the left and right margins are 0 and
    /// the hot input pixel lands at the matching place of the image.
    #[test]
    fn heat_maps_back_through_the_centre_crop() {
        let side = 4;
        let mut heat = vec![0f32; 16];
        heat[4 + 1] = 1.0; // row 1, column 1 of the input
        let out = to_image_resolution(&heat, side, 16, 8);
        // The crop covers x in [4, 12) at 2 image pixels per input pixel.
        assert!(out.iter().enumerate().all(|(i, &v)| {
            let x = i % 16;
            (4..12).contains(&x) || v == 0.0
        }));
        let peak = out
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        let (px, py) = (peak % 16, peak / 16);
        assert!((6..=7).contains(&px) && (2..=3).contains(&py), "{px},{py}");
    }
}
