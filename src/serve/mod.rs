//! `xray serve`: the upload page and a JSON API over one loaded model.
//!
//! The model lives on one inference thread, fed through a bounded queue: a request that finds
//! the queue full is answered 503 at once instead of piling up. libtorch already spreads one
//! forward pass over the cores, so more model copies would only compete for them. Uploads are
//! limited in bytes (the body limit) and in pixels (read from the header before decoding).

use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::data::decode::{decode_image_bytes, to_model_pixels};
use crate::error::Error;
use crate::explain::{batch_maps, explainer, overlay, Explainer, Method, Target};
use crate::infer::Predictor;
use crate::predict::Prediction;
use crate::run::run_name;

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest accepted upload in bytes.
    pub max_upload_bytes: usize,
    /// Largest accepted image in pixels (width x height).
    pub max_pixels: u64,
    /// Requests that may wait for the model; more get 503.
    pub queue: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_upload_bytes: 32 << 20,
            max_pixels: 50_000_000,
            queue: 32,
        }
    }
}

/// One decoded upload waiting for the model.
struct Job {
    name: String,
    image: image::DynamicImage,
    heatmap: bool,
    reply: oneshot::Sender<Result<Value, String>>,
}

/// What the handlers share.
struct AppState {
    jobs: SyncSender<Job>,
    options: ServeOptions,
    /// The page's model line: name, architecture, validation figures.
    model_info: Value,
}

/// The model's description for the page and /healthz.
fn model_info(predictor: &Predictor) -> Value {
    let name = run_name(&predictor.run_dir);
    let m = &predictor.card.metrics;
    json!({
        "model": name,
        "arch": predictor.card.arch,
        "classes": predictor.card.classes,
        "threshold": predictor.card.threshold,
        "validation": {"accuracy": m.val_acc, "auc": m.val_auc, "epoch": predictor.card.best_epoch},
        "ood_guard": predictor.card.ood,
    })
}

/// Predict's JSON for one image, plus the Grad-CAM overlay as a PNG data URI when asked.
fn answer(predictor: &Predictor, explainer: &Explainer<'_>, job: &Job) -> Result<Value> {
    let spec = predictor.input_spec();
    let pixels = to_model_pixels(job.image.clone(), spec.size, spec.channels);
    let methods: &[Method] = if job.heatmap { &[Method::GradCam] } else { &[] };
    let mut batch = batch_maps(predictor, explainer, &[&pixels], Target::Predicted, methods);
    let probs = batch.probs.pop().context("no output")?;
    let ood = batch.ood.and_then(|s| s.first().copied());
    let prediction =
        Prediction::from_probabilities(probs, &predictor.card).with_ood(ood, &predictor.card);
    let classes = &predictor.card.classes;
    let mut out = prediction.to_json(&job.name, classes, &run_name(&predictor.run_dir));
    // An image the guard flags gets no heatmap, as it gets no class on the page.
    let map = batch
        .maps
        .first()
        .filter(|_| !prediction.out_of_distribution());
    if let Some(map) = map {
        let original = job.image.to_rgb8();
        let (_, picture) = overlay::overlay_on(&original, map, 0, spec.size as usize)?;
        let (w, h) = picture.dimensions();
        // Large scans are shown smaller; the page does not need every pixel.
        let picture = if w.max(h) > 768 {
            image::imageops::resize(
                &picture,
                (w * 768 / w.max(h)).max(1),
                (h * 768 / w.max(h)).max(1),
                image::imageops::FilterType::Triangle,
            )
        } else {
            picture
        };
        let mut png = Vec::new();
        picture
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .context("encoding the overlay")?;
        out["gradcam"] = json!(format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&png)
        ));
    }
    Ok(out)
}

/// Starts the inference thread, which owns the model, and returns its bounded queue.
fn start_worker(predictor: Predictor, queue: usize) -> SyncSender<Job> {
    let (tx, rx) = sync_channel::<Job>(queue.max(1));
    std::thread::Builder::new()
        .name("xray-inference".into())
        .spawn(move || {
            let explainer = explainer(&predictor, 1);
            for job in rx {
                let result = answer(&predictor, &explainer, &job).map_err(|e| format!("{e:#}"));
                let _ = job.reply.send(result);
            }
        })
        .expect("the inference thread starts");
    tx
}

/// An error answer: status and `{"error": message}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

#[derive(Debug, Deserialize)]
struct PredictQuery {
    /// Also return the Grad-CAM overlay.
    #[serde(default)]
    heatmap: bool,
}

async fn predict(
    State(state): State<Arc<AppState>>,
    Query(query): Query<PredictQuery>,
    mut multipart: Multipart,
) -> Response {
    let field = match multipart.next_field().await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "no file in the upload (multipart field expected)",
            )
        }
        Err(e) => return error(e.status(), format!("bad upload: {}", e.body_text())),
    };
    let name = field
        .file_name()
        .or(field.name())
        .unwrap_or("upload")
        .to_string();
    let bytes = match field.bytes().await {
        Ok(b) => b,
        Err(e) => return error(e.status(), format!("{name}: {}", e.body_text())),
    };
    let max_pixels = state.options.max_pixels;
    let decoded = tokio::task::spawn_blocking({
        let name = name.clone();
        move || decode_image_bytes(&bytes, Path::new(&name), max_pixels)
    })
    .await;
    let image = match decoded {
        Ok(Ok(img)) => img,
        Ok(Err(e)) => {
            let msg = e.to_string();
            let status = if msg.contains("too large") {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            return error(status, msg);
        }
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "decoding failed"),
    };
    let (reply, answer) = oneshot::channel();
    let job = Job {
        name,
        image,
        heatmap: query.heatmap,
        reply,
    };
    match state.jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: the inference queue is full, try again shortly",
            )
        }
        Err(TrySendError::Disconnected(_)) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the model is not running",
            )
        }
    }
    match answer.await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the model stopped"),
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut v = state.model_info.clone();
    v["status"] = json!("ok");
    Json(v)
}

async fn index(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(crate::report::serve_page::render(
            &state.model_info,
            state.options.max_upload_bytes,
        )),
    )
        .into_response()
}

/// The routes over a loaded model.
pub fn router(predictor: Predictor, options: ServeOptions) -> Router {
    let info = model_info(&predictor);
    let state = Arc::new(AppState {
        jobs: start_worker(predictor, options.queue),
        options: options.clone(),
        model_info: info,
    });
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/api/predict", post(predict))
        .layer(DefaultBodyLimit::max(options.max_upload_bytes))
        .with_state(state)
}

/// Serves on `addr` until SIGTERM or Ctrl-C, then lets in-flight requests finish. Prints the
/// address it listens on (port 0 picks a free one) before accepting.
pub fn serve(
    run_dir: &Path,
    predictor: Predictor,
    addr: &str,
    options: ServeOptions,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::usage(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr()?;
        println!(
            "serving {} on http://{local} (GET /, POST /api/predict, GET /healthz)",
            run_name(run_dir)
        );
        use std::io::Write;
        std::io::stdout().flush()?;
        axum::serve(listener, router(predictor, options))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("server")?;
        println!("stopped: in-flight requests answered");
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
