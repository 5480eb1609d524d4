//! The inference thread: it owns the model and answers jobs from a bounded queue, one forward
//! pass a job. libtorch already spreads one pass over the cores, so more model copies would
//! only compete for them.

use std::sync::mpsc::{sync_channel, SyncSender};

use anyhow::{Context, Result};
use base64::Engine;
use image::RgbImage;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::explain::{batch_maps, explainer, overlay, Explainer, Method, Target};
use crate::infer::Predictor;
use crate::predict::Prediction;

/// Longest side of a heatmap overlay sent back (the page does not need every pixel).
pub const OVERLAY_SIDE_PX: u32 = 768;

/// One decoded upload, reduced to what answering it needs.
pub struct Prepared {
    /// The name it came under.
    pub name: String,
    /// The model's input: HWC bytes at the model's size and channels.
    pub pixels: Vec<u8>,
    /// The image at most [`OVERLAY_SIDE_PX`] a side, for the heatmap; `None` without one.
    pub preview: Option<RgbImage>,
}

/// Decoded uploads of one request, waiting for the model.
pub struct Job {
    /// Each image, in the request's order.
    pub items: Vec<Prepared>,
    /// Also return the Grad-CAM overlays.
    pub heatmap: bool,
    /// Where the answers go: one JSON object per item, or the reason none could be made.
    pub reply: oneshot::Sender<Result<Vec<Value>, String>>,
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
                let result =
                    answer(&predictor, &explainer, &model, &job).map_err(|e| format!("{e:#}"));
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
) -> Result<Vec<Value>> {
    let spec = predictor.input_spec();
    let refs: Vec<&[u8]> = job.items.iter().map(|p| p.pixels.as_slice()).collect();
    let methods: &[Method] = if job.heatmap { &[Method::GradCam] } else { &[] };
    let batch = batch_maps(predictor, explainer, &refs, Target::Predicted, methods)?;
    let classes = &predictor.card.classes;
    let mut out = Vec::with_capacity(job.items.len());
    for (i, (item, probs)) in job.items.iter().zip(batch.probs).enumerate() {
        let ood = batch.ood.as_ref().and_then(|s| s.get(i).copied());
        let prediction =
            Prediction::from_probabilities(probs, &predictor.card).with_ood(ood, &predictor.card);
        let mut value = prediction.to_json(&item.name, classes, model);
        // An image the guard flags gets no heatmap, as it gets no class on the page.
        if let (Some(map), Some(preview)) = (
            batch
                .maps
                .first()
                .filter(|_| !prediction.out_of_distribution()),
            &item.preview,
        ) {
            value["gradcam"] = json!(overlay_data_uri(preview, map, i, spec.size as usize)?);
        }
        out.push(value);
    }
    Ok(out)
}

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

/// The `i`-th heatmap of `maps` over `image`, as a PNG data URI.
fn overlay_data_uri(image: &RgbImage, maps: &tch::Tensor, i: usize, side: usize) -> Result<String> {
    let (_, picture) = overlay::overlay_on(image, maps, i, side)?;
    let mut png = Vec::new();
    picture
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding the overlay")?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    ))
}
