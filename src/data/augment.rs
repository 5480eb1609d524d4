//! Training-time augmentation and normalisation: HWC bytes in, normalised CHW floats out.
//!
//! Every random choice comes from the caller's RNG, which the loader seeds per (epoch, sample),
//! so a run is repeatable whatever the thread scheduling.

use rand::Rng;

use crate::config::AugmentConfig;

/// Per-channel normalisation (on 0..1 pixels).
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// Standard deviation per channel.
    pub std: Vec<f32>,
}

/// Turns `pixels` (HWC, `size`x`size`x`channels`) into normalised CHW floats, augmenting first
/// when `augment` is given.
pub fn prepare<R: Rng>(
    pixels: &[u8],
    size: usize,
    channels: usize,
    norm: &Normalize,
    augment: Option<(&AugmentConfig, &mut R)>,
) -> Vec<f32> {
    let mut out = vec![0f32; channels * size * size];
    let plane = size * size;
    match augment {
        None => {
            for (i, px) in pixels.chunks_exact(channels).enumerate() {
                for c in 0..channels {
                    out[c * plane + i] = (px[c] as f32 / 255.0 - norm.mean[c]) / norm.std[c];
                }
            }
        }
        Some((cfg, rng)) => {
            let hflip = rng.gen::<f32>() < cfg.hflip;
            let vflip = rng.gen::<f32>() < cfg.vflip;
            let angle = symmetric(rng, cfg.rotation_degrees).to_radians();
            let (dx, dy) = (
                symmetric(rng, cfg.shift) * size as f32,
                symmetric(rng, cfg.shift) * size as f32,
            );
            let brightness = 1.0 + symmetric(rng, cfg.brightness);
            let contrast = 1.0 + symmetric(rng, cfg.contrast);
            let (sin, cos) = angle.sin_cos();
            let centre = size as f32 / 2.0;
            let mut mean_level = 0f32;
            // Inverse mapping: for each output pixel, where it comes from in the input.
            for y in 0..size {
                for x in 0..size {
                    let ox = x as f32 + 0.5 - centre - dx;
                    let oy = y as f32 + 0.5 - centre - dy;
                    let mut sx = cos * ox + sin * oy + centre - 0.5;
                    let mut sy = -sin * ox + cos * oy + centre - 0.5;
                    if hflip {
                        sx = size as f32 - 1.0 - sx;
                    }
                    if vflip {
                        sy = size as f32 - 1.0 - sy;
                    }
                    for c in 0..channels {
                        let v = bilinear(pixels, size, channels, c, sx, sy) / 255.0 * brightness;
                        out[c * plane + y * size + x] = v;
                        mean_level += v;
                    }
                }
            }
            mean_level /= out.len() as f32;
            for c in 0..channels {
                for v in &mut out[c * plane..(c + 1) * plane] {
                    let adjusted = ((*v - mean_level) * contrast + mean_level).clamp(0.0, 1.0);
                    *v = (adjusted - norm.mean[c]) / norm.std[c];
                }
            }
        }
    }
    out
}

fn symmetric<R: Rng>(rng: &mut R, max: f32) -> f32 {
    if max > 0.0 {
        rng.gen_range(-max..=max)
    } else {
        0.0
    }
}

/// Bilinear sample of channel `c` at (x, y); outside the image reads as 0.
fn bilinear(pixels: &[u8], size: usize, channels: usize, c: usize, x: f32, y: f32) -> f32 {
    let x0 = x.floor();
    let y0 = y.floor();
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: f32, yi: f32| -> f32 {
        if xi < 0.0 || yi < 0.0 || xi >= size as f32 || yi >= size as f32 {
            0.0
        } else {
            pixels[(yi as usize * size + xi as usize) * channels + c] as f32
        }
    };
    let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1.0, y0) * fx;
    let bottom = at(x0, y0 + 1.0) * (1.0 - fx) + at(x0 + 1.0, y0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn norm1() -> Normalize {
        Normalize {
            mean: vec![0.0],
            std: vec![1.0],
        }
    }

    #[test]
    fn identity_augmentation_changes_nothing() {
        let pixels: Vec<u8> = (0..16u8).map(|v| v * 16).collect();
        let plain = prepare::<rand_chacha::ChaCha8Rng>(&pixels, 4, 1, &norm1(), None);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let cfg = AugmentConfig::default();
        let same = prepare(&pixels, 4, 1, &norm1(), Some((&cfg, &mut rng)));
        for (a, b) in plain.iter().zip(&same) {
            assert!((a - b).abs() < 1e-5, "{plain:?} vs {same:?}");
        }
    }

    #[test]
    fn horizontal_flip_mirrors_rows() {
        let pixels: Vec<u8> = vec![0, 255, 0, 255, 0, 255, 0, 255, 0];
        let pixels: Vec<u8> = pixels
            .iter()
            .enumerate()
            .map(|(i, _)| (i * 20) as u8)
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let cfg = AugmentConfig {
            hflip: 1.0,
            ..AugmentConfig::default()
        };
        let out = prepare(&pixels, 3, 1, &norm1(), Some((&cfg, &mut rng)));
        let expect = [2, 1, 0, 5, 4, 3, 8, 7, 6].map(|i| (i * 20) as f32 / 255.0);
        for (a, b) in out.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{out:?}");
        }
    }
}
