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
    prepare_into(pixels, size, channels, norm, augment, &mut out);
    out
}

/// [`prepare`] into a caller's buffer of `channels * size * size` floats (a batch slot).
pub fn prepare_into<R: Rng>(
    pixels: &[u8],
    size: usize,
    channels: usize,
    norm: &Normalize,
    augment: Option<(&AugmentConfig, &mut R)>,
    out: &mut [f32],
) {
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
            let t = Transform::sample(cfg, rng, size as f32);
            apply(&t, pixels, size, channels, norm, out);
        }
    }
}

/// Applies one drawn transform: geometry by inverse mapping with bilinear sampling, then
/// brightness, saturation, contrast and normalisation.
fn apply(
    t: &Transform,
    pixels: &[u8],
    size: usize,
    channels: usize,
    norm: &Normalize,
    out: &mut [f32],
) {
    let plane = size * size;
    let s = size as f32;
    let centre = s / 2.0;
    let mut mean_level = 0f32;
    // The source position is affine in the output position: step it instead of recomputing.
    let origin = t.source(0.5 - centre, 0.5 - centre, s);
    let right = t.source(1.5 - centre, 0.5 - centre, s);
    let down = t.source(0.5 - centre, 1.5 - centre, s);
    let (dxx, dyx) = (right.0 - origin.0, right.1 - origin.1);
    let (dxy, dyy) = (down.0 - origin.0, down.1 - origin.1);
    let scale = t.brightness / 255.0;
    let row = size * channels;
    for y in 0..size {
        let mut sx = origin.0 + y as f32 * dxy;
        let mut sy = origin.1 + y as f32 * dyy;
        for x in 0..size {
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (xi, yi) = (x0 as isize, y0 as isize);
            let o = y * size + x;
            if xi >= 0 && yi >= 0 && (xi as usize) + 1 < size && (yi as usize) + 1 < size {
                // All four taps inside: no bounds checks per tap.
                let i = yi as usize * row + xi as usize * channels;
                for c in 0..channels {
                    let top =
                        pixels[i + c] as f32 * (1.0 - fx) + pixels[i + channels + c] as f32 * fx;
                    let bottom = pixels[i + row + c] as f32 * (1.0 - fx)
                        + pixels[i + row + channels + c] as f32 * fx;
                    let v = (top * (1.0 - fy) + bottom * fy) * scale;
                    out[c * plane + o] = v;
                    mean_level += v;
                }
            } else {
                for c in 0..channels {
                    let v = bilinear(pixels, size, channels, c, sx, sy) * scale;
                    out[c * plane + o] = v;
                    mean_level += v;
                }
            }
            sx += dxx;
            sy += dyx;
        }
    }
    mean_level /= out.len() as f32;
    if channels == 3 && t.saturation != 1.0 {
        for i in 0..plane {
            let grey = 0.299 * out[i] + 0.587 * out[plane + i] + 0.114 * out[2 * plane + i];
            for c in 0..3 {
                let v = &mut out[c * plane + i];
                *v = grey + (*v - grey) * t.saturation;
            }
        }
    }
    for c in 0..channels {
        for v in &mut out[c * plane..(c + 1) * plane] {
            let adjusted = ((*v - mean_level) * t.contrast + mean_level).clamp(0.0, 1.0);
            *v = (adjusted - norm.mean[c]) / norm.std[c];
        }
    }
}

/// One draw of every random transform.
pub(crate) struct Transform {
    hflip: bool,
    vflip: bool,
    /// Rotation (sin, cos).
    rotation: (f32, f32),
    shift: (f32, f32),
    zoom: f32,
    /// Crop size as a fraction of the side (width, height) and its centre offset in pixels.
    crop: (f32, f32),
    crop_centre: (f32, f32),
    brightness: f32,
    contrast: f32,
    saturation: f32,
}

impl Transform {
    pub(crate) fn sample<R: Rng>(cfg: &AugmentConfig, rng: &mut R, side: f32) -> Self {
        let hflip = rng.gen::<f32>() < cfg.hflip;
        let vflip = rng.gen::<f32>() < cfg.vflip;
        let angle = symmetric(rng, cfg.rotation_degrees).to_radians();
        let shift = (
            symmetric(rng, cfg.shift) * side,
            symmetric(rng, cfg.shift) * side,
        );
        let zoom = 1.0 + symmetric(rng, cfg.zoom);
        // RandomResizedCrop: area share and log-uniform aspect ratio, the crop inside the image.
        let (mut cw, mut ch) = (1.0f32, 1.0f32);
        if cfg.crop_scale[0] < 1.0 {
            let area = rng.gen_range(cfg.crop_scale[0]..=cfg.crop_scale[1]);
            let (lo, hi) = (cfg.crop_ratio[0].ln(), cfg.crop_ratio[1].ln());
            let ratio = if hi > lo {
                rng.gen_range(lo..=hi).exp()
            } else {
                cfg.crop_ratio[0]
            };
            cw = (area * ratio).sqrt().min(1.0);
            ch = (area / ratio).sqrt().min(1.0);
        }
        let crop_centre = (
            symmetric(rng, (1.0 - cw) / 2.0) * side,
            symmetric(rng, (1.0 - ch) / 2.0) * side,
        );
        Transform {
            hflip,
            vflip,
            rotation: angle.sin_cos(),
            shift,
            zoom,
            crop: (cw, ch),
            crop_centre,
            brightness: 1.0 + symmetric(rng, cfg.brightness),
            contrast: 1.0 + symmetric(rng, cfg.contrast),
            saturation: 1.0 + symmetric(rng, cfg.saturation),
        }
    }

    /// The geometry as the 2x3 matrix of `affine_grid`/`grid_sample` (normalised coordinates,
    /// `align_corners = false`), row-major: the output position (x, y) in [-1, 1] samples the
    /// input at `theta * (x, y, 1)`. It is [`Transform::source`] in those coordinates: an
    /// output pixel's offset from the centre is u = x * side / 2, and a source pixel
    /// coordinate s becomes (2 s + 1) / side - 1.
    pub(crate) fn theta(&self, side: f32) -> [f32; 6] {
        let (sin, cos) = self.rotation;
        let (cw, ch) = self.crop;
        let z = self.zoom;
        let (shx, shy) = self.shift;
        let fx = if self.hflip { -1.0 } else { 1.0 };
        let fy = if self.vflip { -1.0 } else { 1.0 };
        let k = 2.0 / side;
        [
            fx * cw * cos / z,
            fx * cw * sin / z,
            fx * k * (self.crop_centre.0 - cw * (cos * shx + sin * shy) / z),
            -fy * ch * sin / z,
            fy * ch * cos / z,
            fy * k * (self.crop_centre.1 - ch * (-sin * shx + cos * shy) / z),
        ]
    }

    /// Brightness, contrast and saturation factors.
    pub(crate) fn colour(&self) -> [f32; 3] {
        [self.brightness, self.contrast, self.saturation]
    }

    /// The source position (pixel coordinates) of the output offset (u, v) from the centre.
    fn source(&self, u: f32, v: f32, side: f32) -> (f32, f32) {
        let (u, v) = (
            (u - self.shift.0) / self.zoom,
            (v - self.shift.1) / self.zoom,
        );
        let (sin, cos) = self.rotation;
        let (u, v) = (cos * u + sin * v, -sin * u + cos * v);
        let centre = side / 2.0;
        let mut sx = u * self.crop.0 + self.crop_centre.0 + centre - 0.5;
        let mut sy = v * self.crop.1 + self.crop_centre.1 + centre - 0.5;
        if self.hflip {
            sx = side - 1.0 - sx;
        }
        if self.vflip {
            sy = side - 1.0 - sy;
        }
        (sx, sy)
    }
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
    fn full_area_crop_and_no_zoom_is_identity() {
        let pixels: Vec<u8> = (0..64u8).map(|v| v * 4).collect();
        let plain = prepare::<rand_chacha::ChaCha8Rng>(&pixels, 8, 1, &norm1(), None);
        let cfg = AugmentConfig {
            crop_scale: [1.0, 1.0],
            zoom: 0.0,
            ..AugmentConfig::default()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let same = prepare(&pixels, 8, 1, &norm1(), Some((&cfg, &mut rng)));
        assert!(plain.iter().zip(&same).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn random_resized_crop_magnifies() {
        // A crop of a quarter of the area doubles the scale: neighbouring output pixels step
        // half a source pixel, so a horizontal ramp's slope halves.
        let pixels: Vec<u8> = (0..32 * 32).map(|i| ((i % 32) * 8) as u8).collect();
        let cfg = AugmentConfig {
            crop_scale: [0.25, 0.25],
            crop_ratio: [1.0, 1.0],
            ..AugmentConfig::default()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let out = prepare(&pixels, 32, 1, &norm1(), Some((&cfg, &mut rng)));
        let row = &out[16 * 32..17 * 32];
        let slope = (row[20] - row[10]) / 10.0;
        assert!((slope - 4.0 / 255.0).abs() < 1e-3, "slope {slope}");
    }

    #[test]
    fn zero_saturation_gives_grey() {
        let pixels: Vec<u8> = [200u8, 50, 10].repeat(4);
        let t = Transform {
            hflip: false,
            vflip: false,
            rotation: (0.0, 1.0),
            shift: (0.0, 0.0),
            zoom: 1.0,
            crop: (1.0, 1.0),
            crop_centre: (0.0, 0.0),
            brightness: 1.0,
            contrast: 1.0,
            saturation: 0.0,
        };
        let norm = Normalize {
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
        };
        let mut out = vec![0f32; 12];
        apply(&t, &pixels, 2, 3, &norm, &mut out);
        let grey = (0.299 * 200.0 + 0.587 * 50.0 + 0.114 * 10.0) / 255.0;
        for v in &out {
            assert!((v - grey).abs() < 1e-5, "{out:?}");
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
