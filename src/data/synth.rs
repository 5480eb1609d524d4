//! `xray synth`: procedural chest-X-ray-like images with a known answer.
//!
//! Each image has a body outline, two dark lung fields, a bright spine, ribs crossing the lungs,
//! random exposure (gain, offset, gamma) and noise. Images of the positive class (`opacity`)
//! carry one diffuse, soft-edged opacity at a random place inside one lung; its box goes to
//! `boxes.csv`. Exposure varies far more than the opacity shifts the mean, so no single pixel
//! statistic separates the classes: a model has to find the opacity.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::progress;

/// The class folders synth writes, negative first.
pub const SYNTH_CLASSES: [&str; 2] = ["normal", "opacity"];

/// Options of `xray synth`.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Images per class.
    pub per_class: usize,
    /// Side of the square images in pixels.
    pub size: u32,
    /// Seed: the same seed gives the same images.
    pub seed: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            per_class: 200,
            size: 128,
            seed: 0,
        }
    }
}

/// The opacity's bounding box in pixels (inclusive-exclusive: x0 <= x < x1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpacityBox {
    /// Left edge.
    pub x0: u32,
    /// Top edge.
    pub y0: u32,
    /// Right edge (exclusive).
    pub x1: u32,
    /// Bottom edge (exclusive).
    pub y1: u32,
}

/// One generated image: grey pixels, row-major, and the opacity box for positives.
pub struct SynthImage {
    /// Grey pixel values, `size * size`, row-major.
    pub pixels: Vec<u8>,
    /// The opacity's box, present for the positive class only.
    pub opacity: Option<OpacityBox>,
}

/// Writes the dataset into `out` (`normal/`, `opacity/`, `boxes.csv`) and returns the number of
/// images written.
pub fn write_synth_dataset(out: &Path, opts: &SynthOptions) -> Result<usize> {
    if opts.size < 32 {
        return Err(
            crate::Error::usage(format!("--size must be at least 32, got {}", opts.size)).into(),
        );
    }
    if opts.per_class == 0 {
        return Err(crate::Error::usage("--per-class must be at least 1").into());
    }
    for class in SYNTH_CLASSES {
        std::fs::create_dir_all(out.join(class))
            .with_context(|| format!("cannot create {}", out.join(class).display()))?;
    }
    let jobs: Vec<(usize, usize)> = (0..SYNTH_CLASSES.len())
        .flat_map(|c| (0..opts.per_class).map(move |i| (c, i)))
        .collect();
    let bar = progress::bar(jobs.len() as u64, "synth");
    let results: Vec<Result<(PathBuf, Option<OpacityBox>)>> = jobs
        .par_iter()
        .map(|&(class, index)| {
            let image = render(opts.size, class == 1, image_seed(opts.seed, class, index));
            let name = SYNTH_CLASSES[class];
            let rel = PathBuf::from(name).join(format!("{name}_{index:05}.png"));
            let path = out.join(&rel);
            image::save_buffer(
                &path,
                &image.pixels,
                opts.size,
                opts.size,
                image::ExtendedColorType::L8,
            )
            .with_context(|| format!("cannot write {}", path.display()))?;
            bar.inc(1);
            Ok((rel, image.opacity))
        })
        .collect();
    bar.finish_and_clear();
    let mut boxes = csv::Writer::from_path(out.join("boxes.csv"))
        .with_context(|| format!("cannot write {}", out.join("boxes.csv").display()))?;
    boxes.write_record(["path", "x0", "y0", "x1", "y1"])?;
    let mut written = 0;
    for result in results {
        let (rel, opacity) = result?;
        written += 1;
        if let Some(b) = opacity {
            boxes.write_record([
                rel.to_string_lossy().into_owned(),
                b.x0.to_string(),
                b.y0.to_string(),
                b.x1.to_string(),
                b.y1.to_string(),
            ])?;
        }
    }
    boxes.flush()?;
    Ok(written)
}

fn image_seed(seed: u64, class: usize, index: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ ((class as u64) << 48)
        ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// Smooth step from 1 inside to 0 outside of a boundary at `d = 1`, `soft` wide.
fn soft_inside(d: f32, soft: f32) -> f32 {
    1.0 / (1.0 + ((d - 1.0) / soft).exp())
}

/// Renders one image of side `size`; `positive` adds an opacity. Deterministic in `seed`.
pub fn render(size: u32, positive: bool, seed: u64) -> SynthImage {
    // Long on purpose: the synthetic anatomy drawn layer by layer (lungs, ribs, spine, opacity,
    // exposure, noise), each layer over the previous.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = size as f32;
    // Anatomy, jittered per image.
    let cx = s * (0.5 + rng.gen_range(-0.04..0.04));
    let cy = s * (0.52 + rng.gen_range(-0.03..0.03));
    let body_rx = s * rng.gen_range(0.40..0.46);
    let body_ry = s * rng.gen_range(0.52..0.60);
    let lung_dx = s * rng.gen_range(0.16..0.20);
    let lung_rx = s * rng.gen_range(0.11..0.14);
    let lung_ry = s * rng.gen_range(0.25..0.30);
    let lung_cy = cy + s * rng.gen_range(-0.03..0.02);
    let spine_w = s * rng.gen_range(0.05..0.07);
    let rib_count = rng.gen_range(7..10);
    let rib_gap = 2.0 * lung_ry / rib_count as f32;
    let rib_phase = rng.gen_range(0.0..rib_gap);
    let rib_curve = rng.gen_range(1.2..2.0) / s;
    let rib_width = s * rng.gen_range(0.012..0.02);
    let rib_gain = rng.gen_range(0.08..0.16);
    let lungs = [(cx - lung_dx, lung_cy), (cx + lung_dx, lung_cy)];

    // The opacity: a soft elliptical blob inside one lung, confined to it.
    let opacity = positive.then(|| {
        let (lx, ly) = lungs[rng.gen_range(0..2)];
        let r: f32 = rng.gen_range(0.0..0.55);
        let a: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        let ox = lx + r * lung_rx * a.cos();
        let oy = ly + r * lung_ry * a.sin();
        let sx = s * rng.gen_range(0.045..0.08);
        let sy = s * rng.gen_range(0.045..0.08);
        let amp = rng.gen_range(0.3..0.45);
        (ox, oy, sx, sy, amp)
    });

    let mut field = vec![0f32; (size * size) as usize];
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let body_d = ((fx - cx) / body_rx).powi(2) + ((fy - cy - 0.1 * s) / body_ry).powi(2);
            let mut v = 0.06 + 0.5 * soft_inside(body_d.sqrt(), 0.03);
            let mut lung = 0f32;
            for &(lx, ly) in &lungs {
                let d = (((fx - lx) / lung_rx).powi(2) + ((fy - ly) / lung_ry).powi(2)).sqrt();
                lung = lung.max(soft_inside(d, 0.06));
            }
            v -= 0.33 * lung;
            // Ribs: bands curving down toward the sides, seen over the lungs.
            let bend = rib_curve * (fx - cx).powi(2);
            let t = (fy - (lung_cy - lung_ry) - bend - rib_phase).rem_euclid(rib_gap);
            let dist = t.min(rib_gap - t);
            v += rib_gain * lung * (-(dist / rib_width).powi(2)).exp();
            // Spine and mediastinum.
            let spine = (-((fx - cx) / spine_w).powi(4)).exp();
            v += 0.22 * spine * soft_inside(body_d.sqrt(), 0.03);
            if let Some((ox, oy, sx, sy, amp)) = opacity {
                let g = (-0.5 * (((fx - ox) / sx).powi(2) + ((fy - oy) / sy).powi(2))).exp();
                v += amp * g * lung;
            }
            field[(y * size + x) as usize] = v;
        }
    }

    // Exposure and noise: these swamp any global intensity difference between the classes.
    let gain = rng.gen_range(0.7..1.3);
    let offset = rng.gen_range(-0.08..0.08);
    let gamma = rng.gen_range(0.75..1.3);
    let noise = Normal::new(0.0, rng.gen_range(0.015..0.045)).expect("positive std");
    let pixels = field
        .iter()
        .map(|&v| {
            let e = (v * gain + offset).clamp(0.0, 1.0).powf(gamma) + noise.sample(&mut rng);
            (e.clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect();

    let opacity = opacity.map(|(ox, oy, sx, sy, _)| OpacityBox {
        x0: (ox - 2.0 * sx).floor().clamp(0.0, s) as u32,
        y0: (oy - 2.0 * sy).floor().clamp(0.0, s) as u32,
        x1: (ox + 2.0 * sx).ceil().clamp(0.0, s) as u32,
        y1: (oy + 2.0 * sy).ceil().clamp(0.0, s) as u32,
    });
    SynthImage { pixels, opacity }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_image() {
        let a = render(64, true, 7);
        let b = render(64, true, 7);
        assert_eq!(a.pixels, b.pixels);
        assert_eq!(a.opacity, b.opacity);
        assert_ne!(render(64, true, 8).pixels, a.pixels);
    }

    #[test]
    fn positives_have_a_box_inside_the_image() {
        for seed in 0..20 {
            let img = render(96, true, seed);
            let b = img.opacity.expect("positives carry a box");
            assert!(b.x0 < b.x1 && b.y0 < b.y1 && b.x1 <= 96 && b.y1 <= 96);
            assert!(render(96, false, seed).opacity.is_none());
        }
    }

    /// The classes must not be separable by one global statistic: the best threshold on the
    /// mean intensity stays near chance.
    #[test]
    fn mean_intensity_does_not_solve_the_task() {
        let n = 200;
        let mut scored: Vec<(f64, bool)> = (0..n)
            .flat_map(|i| {
                [false, true].map(|pos| {
                    let img = render(64, pos, image_seed(3, pos as usize, i));
                    let mean =
                        img.pixels.iter().map(|&p| p as f64).sum::<f64>() / img.pixels.len() as f64;
                    (mean, pos)
                })
            })
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = scored.len();
        let positives = scored.iter().filter(|s| s.1).count();
        // Best accuracy over every threshold, predicting positive either above or below it.
        let mut best = 0f64;
        let mut pos_below = 0;
        for k in 0..=total {
            if k > 0 && scored[k - 1].1 {
                pos_below += 1;
            }
            let neg_below = k - pos_below;
            let above = (neg_below + (positives - pos_below)) as f64 / total as f64;
            best = best.max(above).max(1.0 - above);
        }
        assert!(best < 0.7, "mean intensity separates the classes: {best}");
    }
}
