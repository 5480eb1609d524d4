//! The routes' handlers: the page and its script and style, the prediction API, the model's
//! description, the health checks and the metrics.

use std::path::Path;
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{ConnectInfo, MatchedPath, Multipart, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::admission::{audited, error, fields, Admitted, Client, ClientRequestId, RequestId};
use super::refusal::Refused;
use super::worker::{preview, Job, Prepared};
use super::AppState;
use crate::data::decode::{decode_image_bytes, to_model_pixels};
use crate::error::Error;

#[derive(Debug, Deserialize)]
pub struct PredictQuery {
    /// Also return the Grad-CAM overlay.
    #[serde(default)]
    heatmap: bool,
}

/// One file of a request, as it came.
struct Part {
    name: String,
    bytes: Bytes,
}

/// A refusal of one request: status, message for the client, reason for the audit log.
struct Refusal(StatusCode, String, String);

/// Reads every part of the multipart body (each part one image), or why it is refused.
async fn read_parts(multipart: &mut Multipart, max_files: usize) -> Result<Vec<Part>, Refusal> {
    let mut parts = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(upload_error(&e, "bad upload")),
        };
        if parts.len() == max_files {
            return Err(Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("too many files in one request (limit {max_files})"),
                "too many files".into(),
            ));
        }
        let name = field
            .file_name()
            .or(field.name())
            .unwrap_or("upload")
            .to_string();
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(upload_error(&e, &name)),
        };
        parts.push(Part { name, bytes });
    }
    if parts.is_empty() {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "no file in the upload (multipart field expected)".into(),
            "no file".into(),
        ));
    }
    Ok(parts)
}

/// Why reading the body failed: past the size limit (413), a body that stopped coming
/// (`--body-idle-timeout`: tower-http cuts it, which axum reports as a server error; 408), or
/// a malformed multipart body (400). `context` leads the message (a part's name).
fn upload_error(e: &axum::extract::multipart::MultipartError, context: &str) -> Refusal {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Refusal(
            status,
            format!("{context}: {}", e.body_text()),
            "upload too large".into(),
        )
    } else if status.is_server_error() {
        Refusal(
            StatusCode::REQUEST_TIMEOUT,
            format!("{context}: the upload stalled (nothing arrived for too long) or was cut off"),
            "body stalled".into(),
        )
    } else {
        Refusal(
            status,
            format!("{context}: {}", e.body_text()),
            "malformed upload".into(),
        )
    }
}

/// What became of one part: its answer, or its refusal (status, message with the file name,
/// reason without it).
enum Outcome {
    Answered(Value),
    Refused(StatusCode, String, String),
}

/// One part after decoding: its size and digest (for the audit log) and the image, reduced
/// to what the model and the heatmap need, or why it cannot be read.
struct Decoded {
    size: usize,
    sha256: Option<String>,
    image: Result<Prepared, Error>,
}

/// Decodes the parts, at most `decode_threads` images at a time across the whole server, each
/// reduced at once to the model's input and a small preview: the full decoded image lives
/// only while its decoder holds a place.
async fn decode_parts(state: &Arc<AppState>, parts: Vec<Part>, heatmap: bool) -> Vec<Decoded> {
    let spec = state.input_spec;
    let max_pixels = state.options.max_pixels;
    let hashing = state.audit.is_some();
    let sizes: Vec<usize> = parts.iter().map(|p| p.bytes.len()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, part) in parts.into_iter().enumerate() {
        let decoders = state.decoders.clone();
        tasks.spawn(async move {
            let Ok(_place) = decoders.acquire_owned().await else {
                return (i, None);
            };
            let decoded =
                tokio::task::spawn_blocking(move || {
                    let sha256 = hashing.then(|| crate::fsutil::sha256_hex(&part.bytes));
                    let image = decode_image_bytes(&part.bytes, Path::new(&part.name), max_pixels)
                        .map(|img| Prepared {
                            preview: heatmap.then(|| preview(&img)),
                            pixels: to_model_pixels(img, spec.size, spec.channels),
                            name: part.name,
                        });
                    Decoded {
                        size: part.bytes.len(),
                        sha256,
                        image,
                    }
                })
                .await
                .ok();
            (i, decoded)
        });
    }
    let mut out: Vec<Option<Decoded>> = Vec::new();
    out.resize_with(sizes.len(), || None);
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, decoded)) = joined {
            out[i] = decoded;
        }
    }
    // A part whose decoder could not run (a panic, a closed semaphore) is refused, not lost.
    out.into_iter()
        .zip(sizes)
        .map(|(d, size)| {
            d.unwrap_or_else(|| Decoded {
                size,
                sha256: None,
                image: Err(Error::image(Path::new("upload"), "decoding failed")),
            })
        })
        .collect()
}

/// `POST /api/predict`: every part decoded and answered in one forward pass.
pub async fn predict(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    Extension(client): Extension<Client>,
    Extension(_admitted): Extension<Arc<Admitted>>,
    theirs: Option<Extension<ClientRequestId>>,
    Query(query): Query<PredictQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    // Long on purpose: the request's stages in the order they happen (the parts read under their
    // limits, the job queued, its answer awaited, written and audited), each refusal audited where
    // it is decided.
    let theirs = theirs.map(|Extension(t)| t);
    let audit_fields = || fields(&client, Some(&request_id), theirs.as_ref());
    let refuse = |Refusal(status, message, reason): Refusal| {
        audited(
            &state,
            audit_fields(),
            status,
            &reason,
            error(status, message),
        )
    };
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(e) => {
            return refuse(Refusal(
                e.status(),
                format!("bad upload: {}", e.body_text()),
                "malformed upload".into(),
            ))
        }
    };
    let body_timeout = state.options.timeouts.body;
    let parts = match tokio::time::timeout(
        body_timeout,
        read_parts(&mut multipart, state.options.max_files),
    )
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(refusal)) => return refuse(refusal),
        Err(_) => {
            return refuse(Refusal(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the upload did not arrive within {} s",
                    body_timeout.as_secs()
                ),
                "body timeout".into(),
            ))
        }
    };
    drop(multipart);
    let decoded = decode_parts(&state, parts, query.heatmap).await;
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(decoded.len());
    let mut items = Vec::new();
    let mut inputs = Vec::with_capacity(decoded.len());
    for d in decoded {
        inputs.push((d.size, d.sha256));
        match d.image {
            Ok(item) => {
                items.push(item);
                outcomes.push(None);
            }
            Err(e) => {
                let refused = Refused::of(&e);
                outcomes.push(Some(Outcome::Refused(
                    refused.http_status(),
                    e.to_string(),
                    refused.reason,
                )));
            }
        }
    }
    if !items.is_empty() {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            items,
            heatmap: query.heatmap,
            data_uris: true,
            reply,
        };
        match state.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return refuse(Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy: the inference queue is full, try again shortly".into(),
                    "queue full".into(),
                ))
            }
            Err(TrySendError::Disconnected(_)) => {
                return refuse(Refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the model is not running".into(),
                    "model stopped".into(),
                ))
            }
        }
        let answers = match answer.await {
            Ok(Ok(v)) => v.into_iter().map(|a| a.json).collect::<Vec<_>>(),
            Ok(Err(e)) => {
                return refuse(Refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e,
                    "model error".into(),
                ))
            }
            Err(_) => {
                return refuse(Refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the model stopped".into(),
                    "model stopped".into(),
                ))
            }
        };
        let mut answers = answers.into_iter();
        for slot in outcomes.iter_mut().filter(|o| o.is_none()) {
            *slot = answers.next().map(Outcome::Answered);
        }
    }
    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
    for outcome in &outcomes {
        if let Outcome::Answered(v) = outcome {
            state.metrics.prediction(
                v["label"].as_str().unwrap_or(""),
                v["out_of_distribution"].as_bool(),
            );
        }
    }
    if let Some(audit) = &state.audit {
        let records = audit_records(&state, audit_fields(), &inputs, &outcomes);
        let written = match audit.submit(&records) {
            Ok(w) => w.await,
            Err(busy) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("busy: {busy}; try again shortly"),
                )
            }
        };
        if let Some(e) = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("the audit writer stopped".into()),
        } {
            tracing::error!("serve: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the audit log could not be written, so no answer is given",
            );
        }
    }
    respond(outcomes, &request_id)
}

/// One audit line per part: the input's digest and size and the answer or refusal, never
/// the file name or the image.
fn audit_records(
    state: &AppState,
    fields: serde_json::Map<String, Value>,
    inputs: &[(usize, Option<String>)],
    outcomes: &[Outcome],
) -> Vec<Value> {
    outcomes
        .iter()
        .zip(inputs)
        .enumerate()
        .map(|(i, (outcome, (size, sha)))| {
            let mut line = fields.clone();
            line.insert("part".into(), json!(i));
            line.insert("input_sha256".into(), json!(sha));
            line.insert("input_bytes".into(), json!(size));
            line.insert("model".into(), json!(state.identity.model));
            line.insert(
                "weights_sha256".into(),
                json!(state.identity.weights_sha256),
            );
            match outcome {
                Outcome::Answered(v) => {
                    line.insert("status".into(), json!(200));
                    for key in [
                        "label",
                        "probability",
                        "probabilities",
                        "ood_score",
                        "out_of_distribution",
                    ] {
                        line.insert(key.into(), v.get(key).cloned().unwrap_or(Value::Null));
                    }
                }
                Outcome::Refused(status, _, reason) => {
                    line.insert("status".into(), json!(status.as_u16()));
                    line.insert("error".into(), json!(reason));
                }
            }
            Value::Object(line)
        })
        .collect()
}

/// One part: its answer (or refusal) as the whole response. Several: 200 with `results`, one
/// per part in order, a refused part carrying its `status` and `error`.
fn respond(outcomes: Vec<Outcome>, request_id: &RequestId) -> Response {
    let single = outcomes.len() == 1;
    let mut results = Vec::with_capacity(outcomes.len());
    let mut status = StatusCode::OK;
    for outcome in outcomes {
        match outcome {
            Outcome::Answered(v) => results.push(v),
            Outcome::Refused(code, message, _) => {
                status = code;
                results.push(json!({"error": message, "status": code.as_u16()}));
            }
        }
    }
    if single {
        let mut v = results.pop().unwrap_or_default();
        if let Value::Object(m) = &mut v {
            m.remove("status");
            m.insert("request_id".into(), json!(request_id.0));
        }
        return (status, Json(v)).into_response();
    }
    Json(json!({"request_id": request_id.0, "results": results})).into_response()
}

/// `GET /healthz`: the process answers. Nothing about the model.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the inference thread runs and there is room for a request; else 503 (a load
/// balancer then sends requests to another replica). Nothing about the model.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let depth = state.admission.depth();
    let capacity = state.admission.capacity();
    let why = if state.worker.is_finished() {
        Some("the model is not running".to_string())
    } else if depth >= capacity {
        Some(format!(
            "the inference queue is full ({depth} of {capacity})"
        ))
    } else {
        None
    };
    match why {
        None => Json(json!({"status": "ready", "queue_depth": depth, "queue_capacity": capacity}))
            .into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": why, "queue_depth": depth})),
        )
            .into_response(),
    }
}

/// `GET /api/model`: which model answers (name, weights digest, classes, validation figures).
pub async fn model(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(state.model_info.clone())
}

/// `GET /metrics`: Prometheus' text format.
pub async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, super::prometheus::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// Counts every answer in /metrics and logs it (`tracing`, level info: the JSON log's access
/// lines).
pub async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    let request_id = request.extensions().get::<RequestId>().cloned();
    let client = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_canonical().to_string());
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    state.metrics.observe(&route, status, seconds);
    tracing::info!(
        request_id = request_id.map(|r| r.0).unwrap_or_default(),
        method = %method,
        route = %route,
        status,
        latency_ms = (seconds * 1e4).round() / 10.0,
        client = client.unwrap_or_default(),
        "request"
    );
    response
}

/// `GET /`: the upload page.
pub async fn index(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(crate::report::serve_page::render(
            &state.model_info,
            state.options.max_upload_bytes,
        )),
    )
        .into_response()
}

/// `GET /static/serve.js`: the page's script (a file, so that the page's CSP allows no inline
/// script).
pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        crate::report::serve_page::SCRIPT,
    )
        .into_response()
}

/// `GET /static/serve.css`: the page's style.
pub async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        crate::report::serve_page::STYLE,
    )
        .into_response()
}
