//! The inference thread: it owns the model and answers jobs from a bounded queue, one forward
//! pass a job. libtorch already spreads one pass over the cores, so more model copies would
//! only compete for them.

use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};

use anyhow::{Context, Result};
use base64::Engine;
use image::RgbImage;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub use crate::explain::overlay::preview;
use crate::explain::{answer_pixels, explainer, Explainer};
use crate::infer::Predictor;
use crate::predict::Prediction;

/// One decoded upload, reduced to what answering it needs.
pub struct Prepared {
    /// The name it came under.
    pub name: String,
    /// The model's input: HWC bytes at the model's size and channels.
    pub pixels: Vec<u8>,
    /// The image at most [`crate::explain::overlay::OVERLAY_SIDE_PX`] a side, for the heatmap; `None` without one.
    pub preview: Option<RgbImage>,
}

/// Decoded uploads of one request, waiting for the model.
pub struct Job {
    /// Each image, in the request's order.
    pub items: Vec<Prepared>,
    /// Also make the Grad-CAM overlays (of the items with a preview).
    pub heatmap: bool,
    /// Put the overlays into the JSON as PNG data URIs (the HTTP API).
    pub data_uris: bool,
    /// Where the answers go: one per item, or the reason none could be made.
    pub reply: oneshot::Sender<Result<Vec<Answer>, String>>,
}

/// The answer for one image.
pub struct Answer {
    /// predict's JSON object (with `gradcam` as a data URI when asked).
    pub json: Value,
    /// The decision.
    pub prediction: Prediction,
    /// The overlay picture, when asked and not flagged.
    pub overlay: Option<RgbImage>,
}

/// Starts the inference thread, which owns the model (answering as `model`), and returns its
/// queue of `capacity` jobs and the thread.
pub fn start(
    predictor: Predictor,
    model: String,
    capacity: usize,
) -> Result<(SyncSender<Job>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = sync_channel::<Job>(capacity.max(1));
    let handle = std::thread::Builder::new()
        .name("xray-inference".into())
        .spawn(move || {
            let explainer = explainer(&predictor, 1);
            for job in rx {
                // A panic while answering (an input the checks let through that the model
                // code cannot take) costs this job, never the thread: without it, every later
                // request would find the model gone.
                let contained = xray_codec::decode::contained(Path::new("the job"), || {
                    Ok(answer(&predictor, &explainer, &model, &job))
                });
                let result = match contained {
                    Ok(answered) => answered.map_err(|e| format!("{e:#}")),
                    Err(fault) => {
                        tracing::error!("serve: answering a job failed: {}", fault.reason);
                        Err(format!(
                            "the model could not answer this image: {}",
                            fault.reason
                        ))
                    }
                };
                let _ = job.reply.send(result);
            }
        })
        .context("starting the inference thread")?;
    Ok((tx, handle))
}

/// Predict's JSON for each image of a job (one forward pass), plus the Grad-CAM overlays as
/// PNG data URIs when asked.
fn answer(
    predictor: &Predictor,
    explainer: &Explainer<'_>,
    model: &str,
    job: &Job,
) -> Result<Vec<Answer>> {
    let refs: Vec<&[u8]> = job.items.iter().map(|p| p.pixels.as_slice()).collect();
    let previews: Vec<Option<&RgbImage>> = job
        .items
        .iter()
        .map(|p| p.preview.as_ref().filter(|_| job.heatmap))
        .collect();
    let answered = answer_pixels(predictor, explainer, &refs, &previews)?;
    let classes = &predictor.card.classes;
    let mut out = Vec::with_capacity(job.items.len());
    for (item, a) in job.items.iter().zip(answered) {
        let mut json = a.prediction.to_json(&item.name, classes, model);
        if let (Some(picture), true) = (&a.overlay, job.data_uris) {
            json["gradcam"] = json!(overlay_data_uri(picture)?);
        }
        out.push(Answer {
            json,
            prediction: a.prediction,
            overlay: a.overlay,
        });
    }
    Ok(out)
}

/// An overlay as a PNG data URI.
fn overlay_data_uri(picture: &RgbImage) -> Result<String> {
    let mut png = Vec::new();
    picture
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding the overlay")?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    ))
}
