//! `xray gradcam`: heatmaps of what a model looked at (Grad-CAM, Grad-CAM++, Eigen-CAM,
//! Integrated Gradients), drawn over each image, and checked against synth's known boxes.

pub mod check;
pub mod methods;
pub mod overlay;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;
use tch::Tensor;

use crate::compute::scoring::{label_probabilities, probabilities};
use crate::data::decode::{decode_image, to_model_pixels};
use crate::error::Error;
use crate::infer::Predictor;
use crate::progress;
use crate::report::gallery::{gallery_html, GalleryEntry};
pub use methods::{upsample_to_input, Baseline, Explainer, Method, MethodName};

/// Which class a heatmap explains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The model's decision for each image.
    Predicted,
    /// A fixed class index.
    Class(usize),
}

impl Target {
    /// Parses `predicted` or a class name of the model.
    pub fn parse(name: &str, classes: &[String]) -> Result<Target> {
        if name == "predicted" {
            return Ok(Target::Predicted);
        }
        classes
            .iter()
            .position(|c| c == name)
            .map(Target::Class)
            .ok_or_else(|| {
                Error::usage(format!(
                    "--target \"{name}\" is neither \"predicted\" nor one of the classes {classes:?}"
                ))
                .into()
            })
    }
}

/// Alpha of the heatmap over the image.
pub const OVERLAY_ALPHA: f32 = 0.4;

/// One image decoded for explaining: its pixels as the model sees them and as they are.
struct Decoded {
    path: PathBuf,
    /// HWC bytes at the model's input size.
    model_pixels: Vec<u8>,
    /// The image itself, for the overlay.
    original: RgbImage,
}

/// The pictures written for one image.
#[derive(Debug, Clone, Serialize)]
pub struct Explained {
    /// The input file.
    pub path: PathBuf,
    /// The class explained.
    pub target: String,
    /// Its probability (temperature-scaled).
    pub probability: f64,
    /// The model's decision.
    pub predicted: String,
    /// Per method: its name, the overlay and the 16-bit heatmap file names (in the out folder).
    pub outputs: Vec<(String, String, String)>,
}

/// Heatmaps, at the model's input resolution, of a batch of decoded images; also the
/// probabilities and the targets used. A row of the maps explains one (image, class) pair:
/// one row per image for a single target, one per finding for a multi-label model's findings.
pub(crate) struct BatchMaps {
    /// Class probabilities per image (temperature-scaled).
    pub probs: Vec<Vec<f64>>,
    /// The image of each map row.
    pub rows: Vec<usize>,
    /// The class each map row explains.
    pub targets: Vec<usize>,
    /// Per method, `[rows, s, s]`.
    pub maps: Vec<Tensor>,
    /// Each image's out-of-distribution score, when the run has a guard (from the same
    /// features as the probabilities).
    pub ood: Option<Vec<f64>>,
}

/// The explainer of a loaded model.
pub fn explainer(predictor: &Predictor, batch_size: usize) -> Explainer<'_> {
    Explainer {
        model: predictor.model(),
        norm: predictor.input_spec().norm,
        batch_size,
        independent: predictor.multilabel(),
    }
}

/// One image's decision and, when asked and the guard lets it through, its Grad-CAM overlay.
pub struct Answered {
    /// The decision (with the guard's verdict).
    pub prediction: crate::predict::Prediction,
    /// The heatmap blended over the image's preview.
    pub overlay: Option<RgbImage>,
}

/// Decisions for HWC pixel buffers at the model's input size (one forward pass) and, for each
/// image with a `preview` that the guard does not flag, the Grad-CAM overlay of its decided
/// class on that preview. `serve` (HTTP and DICOM) and `predict --dicom-out` answer with it.
pub fn answer_pixels(
    predictor: &Predictor,
    explainer: &Explainer<'_>,
    pixels: &[&[u8]],
    previews: &[Option<&RgbImage>],
) -> Result<Vec<Answered>> {
    let methods: &[Method] = if previews.iter().any(|p| p.is_some()) {
        &[Method::GradCam]
    } else {
        &[]
    };
    let batch = batch_maps(predictor, explainer, pixels, Target::Predicted, methods)?;
    let side = predictor.input_spec().size as usize;
    let mut out = Vec::with_capacity(pixels.len());
    for (i, probs) in batch.probs.into_iter().enumerate() {
        let ood = batch.ood.as_ref().and_then(|s| s.get(i).copied());
        let prediction = crate::predict::Prediction::from_probabilities(probs, &predictor.card)
            .with_ood(ood, &predictor.card);
        // An image the guard flags gets no heatmap, as it gets no class.
        let overlay = match (batch.maps.first(), previews.get(i).copied().flatten()) {
            (Some(maps), Some(preview)) if !prediction.out_of_distribution() => {
                Some(overlay::overlay_on(preview, maps, i, side)?.1)
            }
            _ => None,
        };
        out.push(Answered {
            prediction,
            overlay,
        });
    }
    Ok(out)
}

/// One forward pass for the probabilities, the target each decides, and each method's maps
/// from the same feature maps (one row per image).
pub(crate) fn batch_maps(
    predictor: &Predictor,
    explainer: &Explainer<'_>,
    pixels: &[&[u8]],
    target: Target,
    methods: &[Method],
) -> Result<BatchMaps> {
    let multilabel = predictor.multilabel();
    let choose = |p: &[f64]| {
        vec![match target {
            Target::Class(c) => c,
            // Multi-label: the most probable label.
            Target::Predicted if multilabel => crate::metrics::most_probable(p),
            Target::Predicted => crate::metrics::decide(p, predictor.card.threshold),
        }]
    };
    batch_maps_by(predictor, explainer, pixels, &choose, methods)
}

/// A multi-label model's findings (its labels over their thresholds), or its most probable
/// label when it has none: what "predicted" explains.
fn findings_or_most_probable(p: &[f64], thresholds: &[f64]) -> Vec<usize> {
    let found = crate::metrics::multilabel::over_thresholds(p, thresholds);
    if found.is_empty() {
        vec![crate::metrics::most_probable(p)]
    } else {
        found
    }
}

/// One forward pass for the probabilities, and each method's maps for every class `choose`
/// picks from an image's probabilities, all from the same feature maps: the images are
/// repeated, one map row per (image, class), so that explaining three findings of an image
/// costs no second pass through the network's stages.
fn batch_maps_by(
    predictor: &Predictor,
    explainer: &Explainer<'_>,
    pixels: &[&[u8]],
    choose: &dyn Fn(&[f64]) -> Vec<usize>,
    methods: &[Method],
) -> Result<BatchMaps> {
    let xs = predictor.input_tensor(pixels);
    let model = predictor.model();
    let features = tch::no_grad(|| model.features(&xs, false));
    let logits = tch::no_grad(|| model.head(&features, false));
    let probs = if predictor.multilabel() {
        label_probabilities(&logits, &predictor.card.label_temperatures())?
    } else {
        probabilities(&logits, predictor.card.temperature)?
    };
    let (rows, targets): (Vec<usize>, Vec<usize>) = probs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| choose(p).into_iter().map(move |t| (i, t)))
        .unzip();
    let (xs_rows, feature_rows) = if rows.iter().copied().eq(0..probs.len()) {
        (xs.shallow_clone(), features.shallow_clone())
    } else {
        let index: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
        let index = Tensor::from_slice(&index).to_device(xs.device());
        (xs.index_select(0, &index), features.index_select(0, &index))
    };
    let maps = methods
        .iter()
        .map(|&m| explainer.heatmaps(&xs_rows, Some(&feature_rows), &targets, m))
        .collect();
    let ood = predictor.ood.as_ref().map(|d| d.score_maps(&features));
    Ok(BatchMaps {
        probs,
        rows,
        targets,
        maps,
        ood,
    })
}

fn decode_all(predictor: &Predictor, files: &[PathBuf]) -> Vec<Result<Decoded, Error>> {
    let spec = predictor.input_spec();
    files
        .par_iter()
        .map(|path| {
            let img = decode_image(path)?;
            let original = img.to_rgb8();
            Ok(Decoded {
                path: path.clone(),
                model_pixels: to_model_pixels(img, spec.size, spec.channels),
                original,
            })
        })
        .collect()
}

/// A file stem not yet used in this output folder (`name`, `name-2`, ...).
fn unique_stem(path: &Path, used: &mut HashSet<String>) -> String {
    let base = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let mut stem = base.clone();
    let mut k = 2;
    while !used.insert(stem.clone()) {
        stem = format!("{base}-{k}");
        k += 1;
    }
    stem
}

/// A label as part of a file name: letters, digits, `-` and `_`, others as `_`.
fn file_safe(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `<stem>.<method>.png` (overlay, titled) and `<stem>.<method>.heat.png` (16-bit) for
/// every readable file into `out`; an unreadable file is returned as its error and skipped.
/// A multi-label model explains each image once per finding with "predicted" (its most
/// probable label when it has none), or the label asked, into `<stem>.<label>.<method>.png`.
pub fn explain_files(
    predictor: &Predictor,
    files: &[PathBuf],
    methods: &[Method],
    target: Target,
    out: &Path,
    batch_size: usize,
) -> Result<Vec<Result<Explained, Error>>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let classes = &predictor.card.classes;
    let side = predictor.card.image_size as usize;
    let bar = progress::bar(files.len() as u64, "gradcam");
    let mut used = HashSet::new();
    let mut results = Vec::with_capacity(files.len());
    let explainer = explainer(predictor, batch_size);
    let multilabel = predictor.multilabel();
    for chunk in files.chunks(batch_size.max(1)) {
        let decoded = decode_all(predictor, chunk);
        let ok: Vec<&Decoded> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
        let pixels: Vec<&[u8]> = ok.iter().map(|d| d.model_pixels.as_slice()).collect();
        // Multi-label, "predicted": each image explained for each of its findings (its most
        // probable label when it has none), all from one pass.
        let thresholds = predictor.card.label_thresholds();
        let batch = if ok.is_empty() {
            None
        } else if multilabel && target == Target::Predicted {
            let choose = |p: &[f64]| findings_or_most_probable(p, &thresholds);
            Some(batch_maps_by(
                predictor, &explainer, &pixels, &choose, methods,
            )?)
        } else {
            Some(batch_maps(predictor, &explainer, &pixels, target, methods)?)
        };
        let mut next = 0;
        for d in decoded {
            let d = match d {
                Ok(d) => d,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let i = next;
            next += 1;
            let batch = batch.as_ref().expect("decoded images were explained");
            let stem = unique_stem(&d.path, &mut used);
            let probs = &batch.probs[i];
            let decision =
                crate::predict::Prediction::from_probabilities(probs.clone(), &predictor.card);
            let (w, h) = d.original.dimensions();
            for (r, &t) in batch.targets.iter().enumerate() {
                if batch.rows[r] != i {
                    continue;
                }
                // A multi-label image's files name the label explained.
                let stem = if multilabel {
                    format!("{stem}.{}", file_safe(&classes[t]))
                } else {
                    stem.clone()
                };
                let mut outputs = Vec::new();
                for (method, map) in methods.iter().zip(&batch.maps) {
                    let (full, picture) = overlay::overlay_on(&d.original, map, r, side)?;
                    let overlay_name = format!("{stem}.{}.png", method.name());
                    let heat_name = format!("{stem}.{}.heat.png", method.name());
                    let title = format!(
                        "{} {:.1}% ({})",
                        classes[t],
                        100.0 * probs[t],
                        method.name()
                    );
                    crate::report::plots::titled_png(&out.join(&overlay_name), &picture, &title)?;
                    overlay::write_heat_png16(&out.join(&heat_name), &full, w, h)?;
                    outputs.push((method.name().to_string(), overlay_name, heat_name));
                }
                results.push(Ok(Explained {
                    path: d.path.clone(),
                    target: classes[t].clone(),
                    probability: probs[t],
                    predicted: decision.label.clone(),
                    outputs,
                }));
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(results)
}

/// `index.html`: every explained image's overlays in a grid (see
/// [`crate::report::gallery`]).
pub fn write_gallery(out: &Path, explained: &[Explained], run: &str) -> Result<()> {
    let entries: Vec<GalleryEntry<'_>> = explained
        .iter()
        .map(|e| GalleryEntry {
            path: e.path.display().to_string(),
            target: &e.target,
            probability: e.probability,
            predicted: &e.predicted,
            overlays: e
                .outputs
                .iter()
                .map(|(method, overlay, _)| (method.as_str(), overlay.as_str()))
                .collect(),
        })
        .collect();
    let html = gallery_html(run, OVERLAY_ALPHA, &entries);
    crate::fsutil::write_atomic(&out.join("index.html"), html.as_bytes())
}

/// One method's scores on the check images.
#[derive(Debug, Clone, Serialize)]
pub struct CheckScore {
    /// The method.
    pub method: String,
    /// Multi-label: the label whose heatmaps these are (on images positive for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Multi-label: share of images whose peak lies in another finding's box of the image
    /// (grown by 10%) and not in the label's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointing_other: Option<f64>,
    /// Positive images scored.
    pub images: usize,
    /// Share of images whose heatmap peak lies in the opacity box grown by 10%.
    pub pointing_game: Option<f64>,
    /// Mean share of the heatmap's total inside the box.
    pub energy_inside: Option<f64>,
    /// Mean Spearman rank correlation between the heatmaps of the trained model and of the
    /// same architecture with freshly initialised weights; low means the map depends on what
    /// the model learned.
    pub randomised_spearman: Option<f64>,
}

/// The check's scores as a table: method, pointing game, energy in the box, and the Spearman
/// correlation with the randomised model, one line each under a header.
pub fn check_table(scores: &[CheckScore]) -> String {
    let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    if scores.iter().any(|s| s.label.is_some()) {
        let width = scores
            .iter()
            .filter_map(|s| s.label.as_ref().map(String::len))
            .max()
            .unwrap_or(5)
            .max(5);
        let mut table = format!(
            "{:<width$}  {:<10}  {:>6}  {:>13}  {:>16}  {:>13}\n",
            "label", "method", "images", "pointing game", "other's box", "energy in box"
        );
        for s in scores {
            table.push_str(&format!(
                "{:<width$}  {:<10}  {:>6}  {:>13}  {:>16}  {:>13}\n",
                s.label.as_deref().unwrap_or(""),
                s.method,
                s.images,
                f(s.pointing_game),
                f(s.pointing_other),
                f(s.energy_inside)
            ));
        }
        return table;
    }
    let mut table = format!(
        "{:<10}  {:>13}  {:>13}  {:>19}\n",
        "method", "pointing game", "energy in box", "Spearman vs random"
    );
    for s in scores {
        table.push_str(&format!(
            "{:<10}  {:>13}  {:>13}  {:>19}\n",
            s.method,
            f(s.pointing_game),
            f(s.energy_inside),
            f(s.randomised_spearman)
        ));
    }
    table
}

/// A path made canonical when it can be (boxes.csv and split.csv name images differently).
fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The images `--check` scores: those of the model's test split (`test`, when it could be read)
/// that have boxes, or, when none has, every boxed image (sorted); and which it was.
fn check_images<B>(
    boxed: &std::collections::HashMap<PathBuf, B>,
    test: Result<Vec<(PathBuf, usize)>>,
    data_dir: &Path,
) -> (Vec<PathBuf>, String) {
    let held_out: Vec<PathBuf> = test
        .unwrap_or_default()
        .into_iter()
        .map(|(p, _)| canonical(&p))
        .filter(|p| boxed.contains_key(p))
        .collect();
    if held_out.is_empty() {
        let mut all: Vec<PathBuf> = boxed.keys().cloned().collect();
        all.sort();
        (all, format!("all boxed images of {}", data_dir.display()))
    } else {
        (held_out, "the model's test split".to_string())
    }
}

/// `xray gradcam --check DATA_DIR`: scores each method on the synth images with an opacity box.
/// When the model's own test split holds images of DATA_DIR, only those are used (images the
/// model never trained on); otherwise every boxed image of DATA_DIR. At most `limit` images.
pub fn run_check(
    predictor: &Predictor,
    data_dir: &Path,
    methods: &[Method],
    limit: usize,
    batch_size: usize,
    seed: i64,
) -> Result<(Vec<CheckScore>, String)> {
    // Long on purpose: one pass over the batches accumulating three scores per method, for trained
    // and randomised weights side by side.
    if predictor.multilabel() {
        return run_check_multilabel(predictor, data_dir, methods, limit, batch_size);
    }
    let boxes = check::read_boxes(data_dir)?;
    let positive = predictor
        .card
        .classes
        .iter()
        .position(|c| c == crate::data::synth::SYNTH_CLASSES[1])
        .ok_or_else(|| {
            Error::usage(format!(
                "the model's classes {:?} have no \"{}\": --check needs a model trained on synth data",
                predictor.card.classes,
                crate::data::synth::SYNTH_CLASSES[1]
            ))
        })?;
    let boxed: std::collections::HashMap<PathBuf, _> =
        boxes.iter().map(|(p, b)| (canonical(p), *b)).collect();
    let test = crate::evaluate::labelled_images(predictor, "test").map(|s| s.samples);
    let (mut files, source) = check_images(&boxed, test, data_dir);
    files.truncate(limit.max(1));

    let random = predictor.with_random_weights(seed)?;
    let (trained_explainer, random_explainer) = (
        explainer(predictor, batch_size),
        explainer(&random, batch_size),
    );
    let mut pointing = vec![Vec::new(); methods.len()];
    let mut energy = vec![Vec::new(); methods.len()];
    let mut rank_corr = vec![Vec::new(); methods.len()];
    let side = predictor.card.image_size as usize;
    let bar = progress::bar(files.len() as u64, "check");
    for chunk in files.chunks(batch_size.max(1)) {
        let decoded: Vec<Decoded> = decode_all(predictor, chunk)
            .into_iter()
            .collect::<Result<_, _>>()?;
        let pixels: Vec<&[u8]> = decoded.iter().map(|d| d.model_pixels.as_slice()).collect();
        let target = Target::Class(positive);
        let trained = batch_maps(predictor, &trained_explainer, &pixels, target, methods)?;
        let randomised = batch_maps(&random, &random_explainer, &pixels, target, methods)?;
        for (m, (a, b)) in trained.maps.iter().zip(&randomised.maps).enumerate() {
            for (i, d) in decoded.iter().enumerate() {
                let heat = Vec::<f32>::try_from(a.get(i as i64).flatten(0, -1))?;
                let rand = Vec::<f32>::try_from(b.get(i as i64).flatten(0, -1))?;
                let (w, h) = d.original.dimensions();
                let full = overlay::to_image_resolution(&heat, side, w, h);
                let b = &boxed[&d.path];
                pointing[m].push(check::points_inside(&full, w as usize, b).unwrap_or(false));
                energy[m].extend(check::energy_inside(&full, w as usize, b));
                rank_corr[m].extend(check::spearman(&heat, &rand));
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let scores = methods
        .iter()
        .enumerate()
        .map(|(m, method)| CheckScore {
            method: method.name().to_string(),
            label: None,
            pointing_other: None,
            images: pointing[m].len(),
            pointing_game: mean(
                &pointing[m]
                    .iter()
                    .map(|&p| f64::from(u8::from(p)))
                    .collect::<Vec<_>>(),
            ),
            energy_inside: mean(&energy[m]),
            randomised_spearman: mean(&rank_corr[m]),
        })
        .collect();
    Ok((scores, source))
}

/// `xray gradcam --check DATA_DIR` of a multi-label model, on `xray synth --multilabel` data:
/// for each label, its heatmaps on (at most `limit`) images positive for it, the pointing game
/// against the label's own box, how often the peak lands in another finding's box instead,
/// and the energy inside its box. The model's test images are used when DATA_DIR holds them.
pub fn run_check_multilabel(
    predictor: &Predictor,
    data_dir: &Path,
    methods: &[Method],
    limit: usize,
    batch_size: usize,
) -> Result<(Vec<CheckScore>, String)> {
    let boxes: std::collections::HashMap<PathBuf, Vec<(String, crate::data::synth::OpacityBox)>> =
        check::read_finding_boxes(data_dir)?
            .into_iter()
            .map(|(p, b)| (canonical(&p), b))
            .collect();
    let test =
        crate::evaluate::multilabel::labelled_split(predictor, "test").map(|(l, _)| l.samples);
    let (files, source) = check_images(&boxes, test, data_dir);
    let side = predictor.card.image_size as usize;
    let explainer = explainer(predictor, batch_size);
    let mut scores = Vec::new();
    for (l, label) in predictor.card.classes.iter().enumerate() {
        let mut mine: Vec<PathBuf> = files
            .iter()
            .filter(|f| boxes[*f].iter().any(|(name, _)| name == label))
            .cloned()
            .collect();
        mine.truncate(limit.max(1));
        let mut own = vec![Vec::new(); methods.len()];
        let mut other = vec![Vec::new(); methods.len()];
        let mut energy = vec![Vec::new(); methods.len()];
        let bar = progress::bar(mine.len() as u64, &format!("check {label}"));
        for chunk in mine.chunks(batch_size.max(1)) {
            let decoded: Vec<Decoded> = decode_all(predictor, chunk)
                .into_iter()
                .collect::<Result<_, _>>()?;
            let pixels: Vec<&[u8]> = decoded.iter().map(|d| d.model_pixels.as_slice()).collect();
            let maps = batch_maps(predictor, &explainer, &pixels, Target::Class(l), methods)?;
            for (m, map) in maps.maps.iter().enumerate() {
                for (i, d) in decoded.iter().enumerate() {
                    let heat = Vec::<f32>::try_from(map.get(i as i64).flatten(0, -1))?;
                    let (w, h) = d.original.dimensions();
                    let full = overlay::to_image_resolution(&heat, side, w, h);
                    let here = &boxes[&d.path];
                    let inside = |b| check::points_inside(&full, w as usize, b).unwrap_or(false);
                    let mine_box = &here.iter().find(|(n, _)| n == label).expect("a box").1;
                    let hit = inside(mine_box);
                    own[m].push(f64::from(u8::from(hit)));
                    let elsewhere = here.iter().any(|(n, b)| n != label && inside(b));
                    other[m].push(f64::from(u8::from(!hit && elsewhere)));
                    energy[m].extend(check::energy_inside(&full, w as usize, mine_box));
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        for (m, method) in methods.iter().enumerate() {
            scores.push(CheckScore {
                method: method.name().to_string(),
                label: Some(label.clone()),
                pointing_other: mean(&other[m]),
                images: own[m].len(),
                pointing_game: mean(&own[m]),
                energy_inside: mean(&energy[m]),
                randomised_spearman: None,
            });
        }
    }
    Ok((scores, source))
}
