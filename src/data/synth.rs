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
    check_counts(opts.size, opts.per_class, "--per-class")?;
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
            save_grey(&path, &image.pixels, opts.size)?;
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

/// A usage error for an image side under 32 pixels or no images (`count`, given as `flag`).
fn check_counts(size: u32, count: usize, flag: &str) -> Result<()> {
    if size < 32 {
        return Err(crate::Error::usage(format!("--size must be at least 32, got {size}")).into());
    }
    if count == 0 {
        return Err(crate::Error::usage(format!("{flag} must be at least 1")).into());
    }
    Ok(())
}

/// Writes grey `pixels` of a `size`-pixel square as a PNG.
fn save_grey(path: &Path, pixels: &[u8], size: u32) -> Result<()> {
    image::save_buffer(path, pixels, size, size, image::ExtendedColorType::L8)
        .with_context(|| format!("cannot write {}", path.display()))
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

/// The anatomy of one image, jittered per image (pixels).
struct Anatomy {
    s: f32,
    cx: f32,
    cy: f32,
    body_rx: f32,
    body_ry: f32,
    lung_rx: f32,
    lung_ry: f32,
    lung_cy: f32,
    spine_w: f32,
    rib_gap: f32,
    rib_phase: f32,
    rib_curve: f32,
    rib_width: f32,
    rib_gain: f32,
    /// The centres of the two lungs.
    lungs: [(f32, f32); 2],
}

impl Anatomy {
    fn sample(rng: &mut ChaCha8Rng, size: u32) -> Anatomy {
        let s = size as f32;
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
        Anatomy {
            s,
            cx,
            cy,
            body_rx,
            body_ry,
            lung_rx,
            lung_ry,
            lung_cy,
            spine_w,
            rib_gap,
            rib_phase,
            rib_curve,
            rib_width,
            rib_gain,
            lungs: [(cx - lung_dx, lung_cy), (cx + lung_dx, lung_cy)],
        }
    }

    /// Draws the image of side `size`: body, lungs, ribs, spine, plus `extra(x, y, lung)` (lung:
    /// how far inside a lung the point is, 0 to 1), then exposure and noise from `rng`.
    fn draw(
        &self,
        size: u32,
        rng: &mut ChaCha8Rng,
        extra: impl Fn(f32, f32, f32) -> f32,
    ) -> Vec<u8> {
        let (s, cx, cy) = (self.s, self.cx, self.cy);
        let mut field = vec![0f32; (size * size) as usize];
        for y in 0..size {
            for x in 0..size {
                let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                let body_d = ((fx - cx) / self.body_rx).powi(2)
                    + ((fy - cy - 0.1 * s) / self.body_ry).powi(2);
                let mut v = 0.06 + 0.5 * soft_inside(body_d.sqrt(), 0.03);
                let mut lung = 0f32;
                for &(lx, ly) in &self.lungs {
                    let d = (((fx - lx) / self.lung_rx).powi(2)
                        + ((fy - ly) / self.lung_ry).powi(2))
                    .sqrt();
                    lung = lung.max(soft_inside(d, 0.06));
                }
                v -= 0.33 * lung;
                // Ribs: bands curving down toward the sides, seen over the lungs.
                let bend = self.rib_curve * (fx - cx).powi(2);
                let t = (fy - (self.lung_cy - self.lung_ry) - bend - self.rib_phase)
                    .rem_euclid(self.rib_gap);
                let dist = t.min(self.rib_gap - t);
                v += self.rib_gain * lung * (-(dist / self.rib_width).powi(2)).exp();
                // Spine and mediastinum.
                let spine = (-((fx - cx) / self.spine_w).powi(4)).exp();
                v += 0.22 * spine * soft_inside(body_d.sqrt(), 0.03);
                v += extra(fx, fy, lung);
                field[(y * size + x) as usize] = v;
            }
        }
        // Exposure and noise: these swamp any global intensity difference between the classes.
        let gain = rng.gen_range(0.7..1.3);
        let offset = rng.gen_range(-0.08..0.08);
        let gamma = rng.gen_range(0.75..1.3);
        let noise = Normal::new(0.0, rng.gen_range(0.015..0.045)).expect("positive std");
        field
            .iter()
            .map(|&v| {
                let e = (v * gain + offset).clamp(0.0, 1.0).powf(gamma) + noise.sample(rng);
                (e.clamp(0.0, 1.0) * 255.0).round() as u8
            })
            .collect()
    }
}

/// The box of `centre ± half`, clipped to the image.
fn clipped_box(s: f32, (ox, oy): (f32, f32), (hx, hy): (f32, f32)) -> OpacityBox {
    OpacityBox {
        x0: (ox - hx).floor().clamp(0.0, s) as u32,
        y0: (oy - hy).floor().clamp(0.0, s) as u32,
        x1: (ox + hx).ceil().clamp(0.0, s) as u32,
        y1: (oy + hy).ceil().clamp(0.0, s) as u32,
    }
}

/// Renders one image of side `size`; `positive` adds an opacity. Deterministic in `seed`.
pub fn render(size: u32, positive: bool, seed: u64) -> SynthImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = Anatomy::sample(&mut rng, size);
    let s = a.s;
    // The opacity: a soft elliptical blob inside one lung, confined to it.
    let opacity = positive.then(|| {
        let (lx, ly) = a.lungs[rng.gen_range(0..2)];
        let r: f32 = rng.gen_range(0.0..0.55);
        let t: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        let ox = lx + r * a.lung_rx * t.cos();
        let oy = ly + r * a.lung_ry * t.sin();
        let sx = s * rng.gen_range(0.045..0.08);
        let sy = s * rng.gen_range(0.045..0.08);
        let amp = rng.gen_range(0.3..0.45);
        (ox, oy, sx, sy, amp)
    });
    let pixels = a.draw(size, &mut rng, |fx, fy, lung| match opacity {
        Some((ox, oy, sx, sy, amp)) => {
            let g = (-0.5 * (((fx - ox) / sx).powi(2) + ((fy - oy) / sy).powi(2))).exp();
            amp * g * lung
        }
        None => 0.0,
    });
    let opacity = opacity.map(|(ox, oy, sx, sy, _)| clipped_box(s, (ox, oy), (2.0 * sx, 2.0 * sy)));
    SynthImage { pixels, opacity }
}

/// The findings `synth --multilabel` draws, in NIH ChestX-ray14's spelling, and where: an
/// enlarged heart silhouette, a basal band (fluid) in one lung, a diffuse opacity in an upper
/// lung field, a small round nodule.
pub const SYNTH_FINDINGS: [&str; 4] = ["Cardiomegaly", "Effusion", "Infiltration", "Nodule"];

/// One image of `synth --multilabel`: grey pixels and the box of each finding present.
pub struct FindingsImage {
    /// Grey pixel values, `size * size`, row-major.
    pub pixels: Vec<u8>,
    /// (index into [`SYNTH_FINDINGS`], its box) for each finding present.
    pub boxes: Vec<(usize, OpacityBox)>,
}

/// Renders one image of side `size` with the findings marked in `present` (indexed as
/// [`SYNTH_FINDINGS`]). Every image has a heart; every finding's shape is drawn from the
/// generator whether present or not, so the same `seed` without a finding is the same image
/// without that finding's shape.
pub fn render_findings(size: u32, present: [bool; 4], seed: u64) -> FindingsImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = Anatomy::sample(&mut rng, size);
    let s = a.s;
    let side = |rng: &mut ChaCha8Rng| rng.gen_range(0..2usize);
    // Heart: normal or enlarged, low in the mediastinum toward the image's right.
    let heart_c = (
        a.cx + s * rng.gen_range(0.03..0.07),
        a.lung_cy + a.lung_ry * rng.gen_range(0.45..0.6),
    );
    let heart_normal = (
        s * rng.gen_range(0.09..0.11),
        s * rng.gen_range(0.07..0.085),
    );
    let heart_big = (s * rng.gen_range(0.16..0.19), s * rng.gen_range(0.11..0.13));
    let heart_r = if present[0] { heart_big } else { heart_normal };
    // Effusion: fluid filling the bottom of one lung, its level rising toward the side.
    let eff_lung = a.lungs[side(&mut rng)];
    let eff_h: f32 = rng.gen_range(0.25..0.4);
    let eff_level = eff_lung.1 + a.lung_ry * (1.0 - 2.0 * eff_h);
    let eff_amp = rng.gen_range(0.35..0.45);
    // Infiltration: a soft blob in the upper half of one lung.
    let inf_side = side(&mut rng);
    let (lx, ly) = a.lungs[inf_side];
    let r: f32 = rng.gen_range(0.1..0.55);
    let t: f32 = rng.gen_range(std::f32::consts::PI * 1.1..std::f32::consts::PI * 1.9);
    let inf_c = (lx + r * a.lung_rx * t.cos(), ly + r * a.lung_ry * t.sin());
    let inf_sigma = (
        s * rng.gen_range(0.045..0.07),
        s * rng.gen_range(0.045..0.07),
    );
    let inf_amp = rng.gen_range(0.5..0.65);
    // Nodule: a small bright disc in the middle of the other lung.
    let (nx, ny) = a.lungs[1 - inf_side];
    let r: f32 = rng.gen_range(0.15..0.5);
    let t: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
    let nod_c = (
        nx + r * a.lung_rx * t.cos(),
        ny - 0.2 * a.lung_ry + 0.5 * r * a.lung_ry * t.sin(),
    );
    let nod_r = s * rng.gen_range(0.03..0.04);
    let nod_amp = rng.gen_range(0.45..0.6);
    let pixels = a.draw(size, &mut rng, |fx, fy, lung| {
        let heart_d = (((fx - heart_c.0) / heart_r.0).powi(2)
            + ((fy - heart_c.1) / heart_r.1).powi(2))
        .sqrt();
        let mut v = 0.3 * soft_inside(heart_d, 0.08);
        if present[1] {
            let lateral = ((fx - eff_lung.0) / a.lung_rx).powi(2);
            let level = eff_level - 0.12 * a.lung_ry * lateral;
            let near = (fx - eff_lung.0).abs() < 1.2 * a.lung_rx;
            if near {
                v += eff_amp * lung / (1.0 + (-(fy - level) / (0.012 * s)).exp());
            }
        }
        if present[2] {
            let g = (-0.5
                * (((fx - inf_c.0) / inf_sigma.0).powi(2)
                    + ((fy - inf_c.1) / inf_sigma.1).powi(2)))
            .exp();
            v += inf_amp * g * lung;
        }
        if present[3] {
            let d = ((fx - nod_c.0).powi(2) + (fy - nod_c.1).powi(2)).sqrt() / nod_r;
            v += nod_amp * soft_inside(d, 0.12) * lung.max(0.5);
        }
        v
    });
    let boxes = [
        clipped_box(s, heart_c, (1.1 * heart_r.0, 1.1 * heart_r.1)),
        OpacityBox {
            x0: (eff_lung.0 - 1.15 * a.lung_rx).floor().clamp(0.0, s) as u32,
            y0: (eff_level - 0.15 * a.lung_ry).floor().clamp(0.0, s) as u32,
            x1: (eff_lung.0 + 1.15 * a.lung_rx).ceil().clamp(0.0, s) as u32,
            y1: (eff_lung.1 + 1.15 * a.lung_ry).ceil().clamp(0.0, s) as u32,
        },
        clipped_box(s, inf_c, (2.0 * inf_sigma.0, 2.0 * inf_sigma.1)),
        clipped_box(s, nod_c, (2.0 * nod_r, 2.0 * nod_r)),
    ];
    FindingsImage {
        pixels,
        boxes: (0..4)
            .filter(|&f| present[f])
            .map(|f| (f, boxes[f]))
            .collect(),
    }
}

/// Options of `xray synth --multilabel`.
#[derive(Debug, Clone)]
pub struct FindingsOptions {
    /// Images in all.
    pub images: usize,
    /// Side of the square images in pixels.
    pub size: u32,
    /// Seed: the same seed gives the same images and labels.
    pub seed: u64,
}

/// The findings of one patient's images, designed to co-occur as in chest X-rays: an enlarged
/// heart is the patient's (kept across follow-ups, 30% of patients) and makes an effusion
/// likelier (55% against 15%); infiltration (30%) and nodules (20%) are independent.
fn draw_findings(rng: &mut ChaCha8Rng, cardiomegaly: bool) -> [bool; 4] {
    let effusion = rng.gen_bool(if cardiomegaly { 0.55 } else { 0.15 });
    [cardiomegaly, effusion, rng.gen_bool(0.3), rng.gen_bool(0.2)]
}

/// NIH's `Finding Labels` for `present`: the findings joined by `|`, or `No Finding`.
pub fn finding_labels(present: &[bool; 4]) -> String {
    crate::data::multilabel::join_findings(
        (0..4).filter(|&f| present[f]).map(|f| SYNTH_FINDINGS[f]),
    )
}

/// Writes a multi-label dataset into `out` as NIH ChestX-ray14 ships one: `images/PPPPPPPP_FFF.png`
/// (patient, follow-up; 1 to 3 images a patient), `labels.csv` in `Data_Entry_2017.csv`'s
/// columns, and `boxes.csv` (path, finding, x0, y0, x1, y1) with a box per finding present.
/// Returns the number of images written.
pub fn write_findings_dataset(out: &Path, opts: &FindingsOptions) -> Result<usize> {
    check_counts(opts.size, opts.images, "--images")?;
    let dir = out.join("images");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // (patient, follow-up, findings, age, sex, view) of each image, drawn in order.
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x4E49_4843_5852_3134);
    let mut rows = Vec::with_capacity(opts.images);
    let mut patient = 0;
    while rows.len() < opts.images {
        patient += 1;
        let cardiomegaly = rng.gen_bool(0.3);
        let (age, sex) = (
            rng.gen_range(1..90u32),
            if rng.gen_bool(0.5) { "M" } else { "F" },
        );
        for follow_up in 0..rng.gen_range(1..=3usize) {
            if rows.len() == opts.images {
                break;
            }
            let view = if rng.gen_bool(0.6) { "PA" } else { "AP" };
            rows.push((
                patient,
                follow_up,
                draw_findings(&mut rng, cardiomegaly),
                age,
                sex,
                view,
            ));
        }
    }
    let bar = progress::bar(rows.len() as u64, "synth");
    let rendered: Vec<Result<FindingsImage>> = rows
        .par_iter()
        .enumerate()
        .map(|(i, &(patient, follow_up, present, ..))| {
            let image = render_findings(opts.size, present, image_seed(opts.seed, 7, i));
            let path = dir.join(format!("{patient:08}_{follow_up:03}.png"));
            save_grey(&path, &image.pixels, opts.size)?;
            bar.inc(1);
            Ok(image)
        })
        .collect();
    bar.finish_and_clear();
    let labels_path = out.join("labels.csv");
    let mut labels = csv::WriterBuilder::new()
        .flexible(true)
        .from_path(&labels_path)
        .with_context(|| format!("cannot write {}", labels_path.display()))?;
    // NIH's header, the two bracketed pairs split by their commas, and its trailing comma.
    labels.write_record([
        "Image Index",
        "Finding Labels",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
        "OriginalImage[Width",
        "Height]",
        "OriginalImagePixelSpacing[x",
        "y]",
        "",
    ])?;
    let boxes_path = out.join("boxes.csv");
    let mut boxes = csv::Writer::from_path(&boxes_path)
        .with_context(|| format!("cannot write {}", boxes_path.display()))?;
    boxes.write_record(["path", "finding", "x0", "y0", "x1", "y1"])?;
    let size = opts.size.to_string();
    for ((patient, follow_up, present, age, sex, view), image) in rows.iter().zip(rendered) {
        let image = image?;
        let name = format!("{patient:08}_{follow_up:03}.png");
        labels.write_record([
            name.as_str(),
            &finding_labels(present),
            &follow_up.to_string(),
            &patient.to_string(),
            &age.to_string(),
            sex,
            view,
            &size,
            &size,
            "0.143",
            "0.143",
            "",
        ])?;
        for (f, b) in image.boxes {
            boxes.write_record([
                format!("images/{name}"),
                SYNTH_FINDINGS[f].to_string(),
                b.x0.to_string(),
                b.y0.to_string(),
                b.x1.to_string(),
                b.y1.to_string(),
            ])?;
        }
    }
    labels.flush()?;
    boxes.flush()?;
    Ok(rows.len())
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

    /// Each finding changes the image inside its own box: most of the difference a finding makes
    /// (the same seed with and without it) lies there.
    #[test]
    fn each_finding_is_drawn_inside_its_box() {
        let size = 96;
        for seed in 0..12 {
            let none = render_findings(size, [false; 4], seed);
            assert!(none.boxes.is_empty());
            for f in 0..4 {
                let mut present = [false; 4];
                present[f] = true;
                let img = render_findings(size, present, seed);
                let (g, b) = img.boxes[0];
                assert_eq!(g, f);
                assert!(b.x0 < b.x1 && b.y0 < b.y1 && b.x1 <= size && b.y1 <= size);
                let (mut inside, mut total) = (0f64, 0f64);
                for y in 0..size {
                    for x in 0..size {
                        let i = (y * size + x) as usize;
                        let d = (img.pixels[i] as f64 - none.pixels[i] as f64).abs();
                        total += d;
                        if (b.x0..b.x1).contains(&x) && (b.y0..b.y1).contains(&y) {
                            inside += d;
                        }
                    }
                }
                assert!(total > 0.0, "{} drew nothing", SYNTH_FINDINGS[f]);
                // Cardiomegaly enlarges the heart that every image has: its box is the big heart's.
                assert!(
                    inside / total > 0.85,
                    "{} (seed {seed}): {:.2} of its difference inside its box",
                    SYNTH_FINDINGS[f],
                    inside / total
                );
            }
        }
    }

    #[test]
    fn findings_co_occur_as_designed_and_patients_keep_cardiomegaly() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (mut eff_card, mut card, mut eff_other, mut other) = (0, 0, 0, 0);
        for _ in 0..4000 {
            let c = rng.gen_bool(0.3);
            let f = draw_findings(&mut rng, c);
            assert_eq!(f[0], c);
            if c {
                card += 1;
                eff_card += f[1] as usize;
            } else {
                other += 1;
                eff_other += f[1] as usize;
            }
        }
        let (p1, p0) = (
            eff_card as f64 / card as f64,
            eff_other as f64 / other as f64,
        );
        assert!(
            (p1 - 0.55).abs() < 0.05 && (p0 - 0.15).abs() < 0.03,
            "{p1} {p0}"
        );
        assert_eq!(finding_labels(&[false; 4]), "No Finding");
        assert_eq!(
            finding_labels(&[true, true, false, false]),
            "Cardiomegaly|Effusion"
        );
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
