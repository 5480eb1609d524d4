//! `xray predict`: inputs to decisions, with unreadable files reported one by one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use rayon::prelude::*;

use crate::data::decode::{has_image_extension, load_model_pixels};
use crate::data::multilabel::{join_findings, NO_FINDING};
use crate::data::scan::walk_files;
use crate::error::Error;
use crate::infer::Predictor;
use crate::metrics::decide;
use crate::progress;
use crate::run::ModelCard;

pub mod job;
pub mod output;
pub mod shard;

/// The decision for one image.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Predicted class name.
    pub label: String,
    /// Probability of the predicted class.
    pub probability: f64,
    /// Probability per class, in the model's class order.
    pub probabilities: Vec<f64>,
    /// The out-of-distribution guard's verdict, when the run has one.
    pub ood: Option<OodVerdict>,
    /// Multi-label: the labels whose probability reaches their threshold (model.json's), in
    /// the model's order; `label` then joins them with `|` ("No Finding" when none) and
    /// `probability` is the highest label probability.
    pub findings: Option<Vec<String>>,
    /// Multi-label: each label's threshold, in the model's order (empty otherwise).
    pub thresholds: Vec<f64>,
}

/// What the out-of-distribution guard says of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OodVerdict {
    /// The image's score (smallest squared Mahalanobis distance to a class mean).
    pub score: f64,
    /// The run's threshold.
    pub threshold: f64,
}

impl OodVerdict {
    /// Whether the image lies outside what the model was trained on.
    pub fn flagged(&self) -> bool {
        crate::ood::is_flagged(self.score, self.threshold)
    }
}

impl Prediction {
    /// The decision for class probabilities under the run's threshold (two classes) or the
    /// highest probability.
    pub fn from_probabilities(probabilities: Vec<f64>, card: &ModelCard) -> Prediction {
        if card.task == crate::config::Task::Multilabel {
            let thresholds = card.label_thresholds();
            let findings: Vec<String> =
                crate::metrics::multilabel::over_thresholds(&probabilities, &thresholds)
                    .into_iter()
                    .map(|l| card.classes[l].clone())
                    .collect();
            return Prediction {
                label: join_findings(findings.iter().map(String::as_str)),
                probability: probabilities.iter().copied().fold(0.0, f64::max),
                probabilities,
                ood: None,
                findings: Some(findings),
                thresholds,
            };
        }
        let k = decide(&probabilities, card.threshold);
        Prediction {
            label: card.classes[k].clone(),
            probability: probabilities[k],
            probabilities,
            ood: None,
            findings: None,
            thresholds: Vec::new(),
        }
    }

    /// Text: the findings with their probabilities (multi-label), else the class and its
    /// probability.
    pub fn summary(&self, classes: &[String]) -> String {
        match &self.findings {
            Some(f) if f.is_empty() => NO_FINDING.into(),
            Some(f) => f
                .iter()
                .map(|name| {
                    let p = classes
                        .iter()
                        .position(|c| c == name)
                        .map_or(0.0, |i| self.probabilities[i]);
                    format!("{name} {:.1}%", 100.0 * p)
                })
                .collect::<Vec<_>>()
                .join(", "),
            None => format!("{}\t{:.1}%", self.label, self.probability * 100.0),
        }
    }

    /// The same prediction with the guard's score (`None`: the run has no guard).
    pub fn with_ood(mut self, score: Option<f64>, card: &ModelCard) -> Prediction {
        self.ood = score.zip(card.ood.as_ref()).map(|(score, o)| OodVerdict {
            score,
            threshold: o.threshold,
        });
        self
    }

    /// Whether the guard flags the image (false when there is no guard).
    pub fn out_of_distribution(&self) -> bool {
        self.ood.is_some_and(|v| v.flagged())
    }

    /// predict's JSON object: `path`, `label`, `probability`, `probabilities` (by class),
    /// `model` (the run folder's name), `ood_score`, `ood_threshold` (the score above which an
    /// image is refused) and `out_of_distribution` (null without a
    /// guard, which `ood_guard` then says), and for a flagged image the plain `message`.
    pub fn to_json(&self, path: &str, classes: &[String], model: &str) -> serde_json::Value {
        let probabilities: serde_json::Map<String, serde_json::Value> = classes
            .iter()
            .zip(&self.probabilities)
            .map(|(c, v)| (c.clone(), serde_json::json!(v)))
            .collect();
        let mut out = serde_json::json!({
            "path": path,
            "label": self.label,
            "probability": self.probability,
            "probabilities": probabilities,
            "model": model,
            "ood_score": self.ood.map(|v| v.score),
            "ood_threshold": self.ood.map(|v| v.threshold),
            "out_of_distribution": self.ood.map(|v| v.flagged()),
        });
        if let Some(findings) = &self.findings {
            out["findings"] = serde_json::json!(findings);
            let thresholds: serde_json::Map<String, serde_json::Value> = classes
                .iter()
                .zip(&self.thresholds)
                .map(|(c, t)| (c.clone(), serde_json::json!(t)))
                .collect();
            out["thresholds"] = serde_json::Value::Object(thresholds);
        }
        match self.ood {
            Some(v) if v.flagged() => out["message"] = serde_json::json!(crate::ood::MESSAGE),
            Some(_) => {}
            None => out["ood_guard"] = serde_json::json!("none fitted for this model"),
        }
        out
    }
}

/// One input image and its shard key: its path relative to the folder it was found in (with
/// `/` separators), or the path as given for a file named on the command line. The key does
/// not change when the archive is mounted elsewhere or other files are added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The file to read.
    pub path: PathBuf,
    /// What [`shard::Shard`] hashes.
    pub key: String,
}

/// Expands `inputs`: files as given, folders walked for image files (sorted).
/// A missing input is a usage error.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(collect_keyed_inputs(inputs)?
        .into_iter()
        .map(|i| i.path)
        .collect())
}

/// [`collect_inputs`] with each file's shard key.
pub fn collect_keyed_inputs(inputs: &[PathBuf]) -> Result<Vec<Input>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            walk_files(input, &mut found)?;
            found.retain(|p| has_image_extension(p));
            found.sort();
            files.extend(found.into_iter().map(|path| {
                let relative = path.strip_prefix(input).unwrap_or(&path);
                let key = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                Input { path, key }
            }));
        } else if input.exists() {
            files.push(Input {
                path: input.clone(),
                key: input.to_string_lossy().into_owned(),
            });
        } else {
            return Err(
                Error::usage(format!("{}: no such file or folder", input.display())).into(),
            );
        }
    }
    if files.is_empty() {
        return Err(Error::usage("no image files in the given inputs").into());
    }
    Ok(files)
}

/// Decodes `files` in parallel and predicts the readable ones in batches (with test-time
/// augmentation when `tta`); each result is the prediction or the reason the file could not be
/// read.
pub fn predict_files(
    predictor: &Predictor,
    files: &[PathBuf],
    batch_size: usize,
    tta: bool,
) -> anyhow::Result<Vec<Result<Prediction, Error>>> {
    let bar = progress::bar(files.len() as u64, "predict");
    let results = predict_files_with(predictor, files, batch_size, tta, &bar);
    bar.finish_and_clear();
    results
}

/// [`predict_files`], advancing `bar` by one per decoded file (for callers that predict a long
/// list in pieces under one bar).
pub fn predict_files_with(
    predictor: &Predictor,
    files: &[PathBuf],
    batch_size: usize,
    tta: bool,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<Result<Prediction, Error>>> {
    let spec = predictor.input_spec();
    let decoded: Vec<Result<Arc<Vec<u8>>, Error>> = files
        .par_iter()
        .map(|f: &PathBuf| {
            let r = load_model_pixels(Path::new(f), spec.size, spec.channels).map(Arc::new);
            bar.inc(1);
            r
        })
        .collect();
    let good: Vec<Arc<Vec<u8>>> = decoded
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let scores = predictor.probabilities_of_pixels(&good, batch_size, tta)?;
    let mut probs = scores.probs.into_iter();
    let mut ood = scores.ood.map(|o| o.into_iter());
    Ok(decoded
        .into_iter()
        .map(|r| {
            r.map(|_| {
                let p = probs.next().expect("one probability row per decoded image");
                let score = ood.as_mut().and_then(|o| o.next());
                Prediction::from_probabilities(p, &predictor.card).with_ood(score, &predictor.card)
            })
        })
        .collect())
}
