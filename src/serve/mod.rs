//! `xray serve`: the upload page and a JSON API over one loaded model.
//!
//! The model lives on one inference thread, fed through a bounded queue: a request that finds
//! the queue full is answered 503 at once instead of piling up. libtorch already spreads one
//! forward pass over the cores, so more model copies would only compete for them. Uploads are
//! limited in bytes (the body limit) and in pixels (read from the header before decoding).
//!
//! For a hospital network: bearer tokens ([`auth`]), TLS (rustls), a per-client rate limit
//! ([`limit`]), an append-only audit log ([`audit`]), DICOM uploads refused by reason when they
//! cannot be read, and several images in one request. Without tokens the server listens on the
//! loopback interface only, unless told `insecure_public`.
//!
//! For a cluster: `GET /metrics` ([`metrics`], Prometheus), `GET /readyz` (the model is loaded
//! and the queue has room: send traffic) beside `GET /healthz` (the process answers), and
//! logs through `tracing`, which the command prints as text or as JSON lines.

pub mod audit;
pub mod auth;
pub mod limit;
pub mod metrics;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::data::decode::{decode_image_bytes, to_model_pixels};
use crate::error::Error;
use crate::explain::{batch_maps, explainer, overlay, Explainer, Method, Target};
use crate::infer::Predictor;
use crate::predict::Prediction;
use crate::run::run_name;
use audit::AuditLog;
use auth::{TokenFile, Verdict};
use limit::RateLimit;
use metrics::Metrics;

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest accepted request body in bytes (all its files together).
    pub max_upload_bytes: usize,
    /// Largest accepted image in pixels (width x height).
    pub max_pixels: u64,
    /// Requests that may wait for the model; more get 503.
    pub queue: usize,
    /// Most files in one request.
    pub max_files: usize,
    /// API requests a minute per client address; 0 for no limit.
    pub rate_per_minute: u32,
    /// Bearer tokens, one per line; `None`: the API is open (loopback only, see [`Listen`]).
    pub token_file: Option<PathBuf>,
    /// Append-only JSON-lines record of every answer.
    pub audit_log: Option<PathBuf>,
    /// Seconds the caller took to load the model (reported by /metrics).
    pub model_load_seconds: f64,
    /// Serve `GET /metrics` and count every request for it (and log requests at info level).
    pub metrics: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_upload_bytes: 32 << 20,
            max_pixels: 50_000_000,
            queue: 32,
            max_files: 16,
            rate_per_minute: 0,
            token_file: None,
            audit_log: None,
            model_load_seconds: 0.0,
            metrics: true,
        }
    }
}

/// Where and how the server listens.
#[derive(Debug, Clone)]
pub struct Listen {
    /// `host:port`; port 0 picks a free one.
    pub addr: String,
    /// PEM certificate chain and private key: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Allow a non-loopback address without tokens.
    pub insecure_public: bool,
}

/// Which model answers: the run's name and the sha256 of its weights file.
#[derive(Debug, Clone)]
struct ModelIdentity {
    model: String,
    weights_sha256: String,
}

/// Decoded uploads of one request, waiting for the model.
struct Job {
    /// Each image with the name it came under.
    items: Vec<(String, image::DynamicImage)>,
    heatmap: bool,
    reply: oneshot::Sender<Result<Vec<Value>, String>>,
}

/// What the handlers share.
struct AppState {
    jobs: SyncSender<Job>,
    options: ServeOptions,
    /// The page's model line: name, architecture, validation figures.
    model_info: Value,
    identity: ModelIdentity,
    tokens: Option<TokenFile>,
    audit: Option<AuditLog>,
    limit: Option<RateLimit>,
    metrics: Metrics,
    /// The inference thread (finished: the model stopped).
    worker: std::thread::JoinHandle<()>,
}

/// The model's description for the page and /healthz.
fn model_info(predictor: &Predictor, identity: &ModelIdentity, options: &ServeOptions) -> Value {
    let m = &predictor.card.metrics;
    json!({
        "model": identity.model,
        "weights_sha256": identity.weights_sha256,
        "arch": predictor.card.arch,
        "classes": predictor.card.classes,
        "threshold": predictor.card.threshold,
        "validation": {"accuracy": m.val_acc, "auc": m.val_auc, "epoch": predictor.card.best_epoch},
        "ood_guard": predictor.card.ood,
        "auth": if options.token_file.is_some() { "bearer" } else { "none" },
        "max_files": options.max_files,
    })
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
    let pixels: Vec<Vec<u8>> = job
        .items
        .iter()
        .map(|(_, image)| to_model_pixels(image.clone(), spec.size, spec.channels))
        .collect();
    let refs: Vec<&[u8]> = pixels.iter().map(Vec::as_slice).collect();
    let methods: &[Method] = if job.heatmap { &[Method::GradCam] } else { &[] };
    let batch = batch_maps(predictor, explainer, &refs, Target::Predicted, methods);
    let classes = &predictor.card.classes;
    let mut out = Vec::with_capacity(job.items.len());
    for (i, ((name, image), probs)) in job.items.iter().zip(batch.probs).enumerate() {
        let ood = batch.ood.as_ref().and_then(|s| s.get(i).copied());
        let prediction =
            Prediction::from_probabilities(probs, &predictor.card).with_ood(ood, &predictor.card);
        let mut value = prediction.to_json(name, classes, model);
        // An image the guard flags gets no heatmap, as it gets no class on the page.
        if let Some(map) = batch
            .maps
            .first()
            .filter(|_| !prediction.out_of_distribution())
        {
            value["gradcam"] = json!(overlay_data_uri(image, map, i, spec.size as usize)?);
        }
        out.push(value);
    }
    Ok(out)
}

/// The `i`-th heatmap of `maps` over `image`, at most 768 pixels wide, as a PNG data URI.
fn overlay_data_uri(
    image: &image::DynamicImage,
    maps: &tch::Tensor,
    i: usize,
    side: usize,
) -> Result<String> {
    let (_, picture) = overlay::overlay_on(&image.to_rgb8(), maps, i, side)?;
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
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    ))
}

/// Starts the inference thread, which owns the model (answering as `model`), and returns its
/// bounded queue.
fn start_worker(
    predictor: Predictor,
    model: String,
    queue: usize,
    metrics: Metrics,
) -> (SyncSender<Job>, std::thread::JoinHandle<()>) {
    let (tx, rx) = sync_channel::<Job>(queue.max(1));
    let handle = std::thread::Builder::new()
        .name("xray-inference".into())
        .spawn(move || {
            let explainer = explainer(&predictor, 1);
            for job in rx {
                let result =
                    answer(&predictor, &explainer, &model, &job).map_err(|e| format!("{e:#}"));
                metrics.dequeued();
                let _ = job.reply.send(result);
            }
        })
        .expect("the inference thread starts");
    (tx, handle)
}

/// An error answer: status and `{"error": message}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The request's id: the client's `X-Request-Id` when it is short and plain, else a new one.
#[derive(Debug, Clone)]
struct RequestId(String);

/// Who is asking: the peer address and, with tokens, the token's id (never the token).
#[derive(Debug, Clone)]
struct Client {
    ip: Option<IpAddr>,
    token: Option<String>,
}

impl Client {
    fn audit_fields(&self, request: &RequestId) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("request_id".into(), json!(request.0));
        m.insert("client".into(), json!(self.ip.map(|ip| ip.to_string())));
        m.insert("token_id".into(), json!(self.token));
        m
    }
}

/// Gives every request an id (kept from `X-Request-Id` when plain) and echoes it.
async fn request_id(mut request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .map(str::to_string);
    let id = given.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// The API's gate: the per-client rate limit (429), then the bearer token (401).
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = state.options.max_upload_bytes;
    let (response, refused_body) = gate(state, request, next).await;
    if let Some(body) = refused_body {
        // Read (and drop) the upload a refused client is still sending: an HTTP/1.1 client
        // that is cut off mid-body sees a broken pipe instead of the 401 or 429.
        let _ = axum::body::to_bytes(body, limit).await;
    }
    response
}

/// [`guard`]'s decision: the answer, and the body of a refused request still to be drained.
async fn gate(
    state: Arc<AppState>,
    mut request: Request,
    next: Next,
) -> (Response, Option<axum::body::Body>) {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let (Some(limit), Some(ip)) = (&state.limit, ip) {
        if let Err(wait) = limit.check(ip) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many requests: at most {} a minute from one address; try again in {secs} s",
                    limit.per_minute()
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return (r, Some(request.into_body()));
        }
    }
    let mut client = Client { ip, token: None };
    if let Some(tokens) = &state.tokens {
        let presented = auth::bearer(
            request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        );
        let verdict = presented.map_or(Verdict::Unknown, |t| tokens.check(t));
        match verdict {
            Verdict::Valid(id) => client.token = Some(id),
            refused => {
                let why = match &refused {
                    Verdict::Expired(id) => format!("expired token {id}"),
                    _ if presented.is_none() => "no token".to_string(),
                    _ => "unknown token".to_string(),
                };
                let addr = ip.map_or("?".into(), |ip| ip.to_string());
                tracing::warn!(client = %addr, reason = %why, "serve: 401 for {addr}: {why}");
                if let Some(audit) = &state.audit {
                    let rid = request.extensions().get::<RequestId>().cloned();
                    let mut line = client.audit_fields(&rid.unwrap_or(RequestId(String::new())));
                    line.insert("status".into(), json!(401));
                    line.insert("error".into(), json!(why));
                    if let Verdict::Expired(id) = &refused {
                        line.insert("token_id".into(), json!(id));
                    }
                    if let Err(e) = audit.append(&[Value::Object(line)]) {
                        tracing::error!("serve: {e:#}");
                    }
                }
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized: send a valid token as `Authorization: Bearer <token>`",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"xray\""),
                );
                return (r, Some(request.into_body()));
            }
        }
    }
    request.extensions_mut().insert(client);
    (next.run(request).await, None)
}

#[derive(Debug, Deserialize)]
struct PredictQuery {
    /// Also return the Grad-CAM overlay.
    #[serde(default)]
    heatmap: bool,
}

/// One file of a request, as it came.
struct Part {
    name: String,
    bytes: Bytes,
}

/// Reads every part of the multipart body (each part one image), or the answer that refuses it.
async fn read_parts(multipart: &mut Multipart, max_files: usize) -> Result<Vec<Part>, Response> {
    let mut parts = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(error(e.status(), format!("bad upload: {}", e.body_text()))),
        };
        if parts.len() == max_files {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("too many files in one request (limit {max_files})"),
            ));
        }
        let name = field
            .file_name()
            .or(field.name())
            .unwrap_or("upload")
            .to_string();
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(error(e.status(), format!("{name}: {}", e.body_text()))),
        };
        parts.push(Part { name, bytes });
    }
    if parts.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "no file in the upload (multipart field expected)",
        ));
    }
    Ok(parts)
}

/// The status of an upload that could not be decoded: too large (413), a format or DICOM
/// encoding xray cannot read (415), or anything else wrong with the file (422).
fn refusal_status(reason: &str) -> StatusCode {
    if reason.contains("too large") {
        StatusCode::PAYLOAD_TOO_LARGE
    } else if reason.contains("cannot decode")
        || reason.contains("is unknown to xray")
        || reason.contains("not a recognised image format")
    {
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    }
}

/// What became of one part: its answer, or its refusal (status, message with the file name,
/// reason without it).
enum Outcome {
    Answered(Value),
    Refused(StatusCode, String, String),
}

async fn predict(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    Extension(client): Extension<Client>,
    Query(query): Query<PredictQuery>,
    mut multipart: Multipart,
) -> Response {
    let parts = match read_parts(&mut multipart, state.options.max_files).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let max_pixels = state.options.max_pixels;
    let hashing = state.audit.is_some();
    let decoded = tokio::task::spawn_blocking(move || {
        parts
            .into_par_iter()
            .map(|part| {
                let sha = hashing.then(|| crate::fsutil::sha256_hex(&part.bytes));
                let image = decode_image_bytes(&part.bytes, Path::new(&part.name), max_pixels);
                (part.name, part.bytes.len(), sha, image)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let Ok(decoded) = decoded else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "decoding failed");
    };
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(decoded.len());
    let mut items = Vec::new();
    let mut inputs = Vec::with_capacity(decoded.len());
    for (name, size, sha, image) in decoded {
        inputs.push((size, sha));
        match image {
            Ok(img) => {
                items.push((name, img));
                outcomes.push(None);
            }
            Err(e) => {
                let reason = match &e {
                    Error::Image { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                outcomes.push(Some(Outcome::Refused(
                    refusal_status(&reason),
                    e.to_string(),
                    reason,
                )));
            }
        }
    }
    if !items.is_empty() {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            items,
            heatmap: query.heatmap,
            reply,
        };
        state.metrics.enqueued();
        let sent = state.jobs.try_send(job);
        if sent.is_err() {
            state.metrics.dequeued();
        }
        match sent {
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
        let answers = match answer.await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the model stopped"),
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
    if state.audit.is_some() {
        let records = audit_records(&state.identity, &client, &request_id, &inputs, &outcomes);
        let state = state.clone();
        let written = tokio::task::spawn_blocking(move || {
            state.audit.as_ref().map_or(Ok(()), |a| a.append(&records))
        })
        .await;
        if let Some(e) = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
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
    identity: &ModelIdentity,
    client: &Client,
    request_id: &RequestId,
    inputs: &[(usize, Option<String>)],
    outcomes: &[Outcome],
) -> Vec<Value> {
    outcomes
        .iter()
        .zip(inputs)
        .enumerate()
        .map(|(i, (outcome, (size, sha)))| {
            let mut line = client.audit_fields(request_id);
            line.insert("part".into(), json!(i));
            line.insert("input_sha256".into(), json!(sha));
            line.insert("input_bytes".into(), json!(size));
            line.insert("model".into(), json!(identity.model));
            line.insert("weights_sha256".into(), json!(identity.weights_sha256));
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

async fn healthz(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut v = state.model_info.clone();
    v["status"] = json!("ok");
    Json(v)
}

/// Ready for traffic: the inference thread runs and its queue has room; else 503 with the
/// reason (a load balancer then sends requests to another replica).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let depth = state.metrics.depth();
    let capacity = state.options.queue.max(1);
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

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// Counts every answer in /metrics and logs it (`tracing`, level info: the JSON log's access
/// lines).
async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
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
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
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

/// The routes over a loaded model. Fails (usage, exit 2) on a bad token file or an audit log
/// that cannot be opened.
pub fn router(predictor: Predictor, options: ServeOptions) -> Result<Router> {
    let tokens = options
        .token_file
        .as_deref()
        .map(TokenFile::load)
        .transpose()?;
    let audit = options
        .audit_log
        .as_deref()
        .map(AuditLog::open)
        .transpose()
        .map_err(|e| Error::usage(format!("{e:#}")))?;
    let weights = predictor.run_dir.join("model.safetensors");
    let identity = ModelIdentity {
        model: run_name(&predictor.run_dir),
        weights_sha256: crate::fsutil::sha256_file(&weights)
            .with_context(|| format!("reading {}", weights.display()))?,
    };
    let info = model_info(&predictor, &identity, &options);
    let metrics = Metrics::new(
        &identity.model,
        predictor.card.arch.as_str(),
        &identity.weights_sha256,
        options.queue.max(1),
        options.model_load_seconds,
    )
    .context("registering the metrics")?;
    let (jobs, worker) = start_worker(
        predictor,
        identity.model.clone(),
        options.queue,
        metrics.clone(),
    );
    let state = Arc::new(AppState {
        jobs,
        worker,
        options: options.clone(),
        model_info: info,
        identity,
        tokens,
        audit,
        limit: RateLimit::new(options.rate_per_minute),
        metrics,
    });
    let api = Router::new()
        .route("/api/predict", post(predict))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    let mut app = Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api);
    if options.metrics {
        app = app
            .route("/metrics", get(metrics_text))
            .layer(middleware::from_fn_with_state(state.clone(), track));
    }
    Ok(app
        .layer(middleware::from_fn(request_id))
        .layer(DefaultBodyLimit::max(options.max_upload_bytes))
        .with_state(state))
}

/// Refuses a non-loopback address without tokens, unless `insecure_public`.
fn check_exposure(addr: &SocketAddr, listen: &Listen, options: &ServeOptions) -> Result<()> {
    if addr.ip().is_loopback() || options.token_file.is_some() || listen.insecure_public {
        return Ok(());
    }
    Err(Error::usage(format!(
        "--addr {}: a network address needs --token-file FILE (bearer tokens); on a network \
         where anyone may use the model, say --insecure-public",
        listen.addr
    ))
    .into())
}

/// Serves on `listen` until SIGTERM or Ctrl-C, then lets in-flight requests finish. Prints the
/// address it listens on (port 0 picks a free one) before accepting.
pub fn serve(
    run_dir: &Path,
    predictor: Predictor,
    listen: &Listen,
    options: ServeOptions,
) -> Result<()> {
    let addr = listen
        .addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::usage(format!("--addr {}: not a host:port address", listen.addr)))?;
    check_exposure(&addr, listen, &options)?;
    let tcp = std::net::TcpListener::bind(addr)
        .map_err(|e| Error::usage(format!("cannot listen on {}: {e}", listen.addr)))?;
    let local = tcp.local_addr()?;
    if options.token_file.is_some() && listen.tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "serve: warning: tokens travel in clear text without --tls-cert/--tls-key; \
             use TLS or a TLS proxy on a shared network"
        );
    }
    let routes = if options.metrics {
        "GET /, POST /api/predict, GET /healthz, GET /readyz, GET /metrics"
    } else {
        "GET /, POST /api/predict, GET /healthz, GET /readyz"
    };
    let app = router(predictor, options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let tls = match &listen.tls {
            Some((cert, key)) => {
                // One crypto provider for the process (ring, as compiled in).
                let _ = rustls::crypto::ring::default_provider().install_default();
                let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .map_err(|e| {
                        Error::usage(format!(
                            "--tls-cert {} / --tls-key {}: {e}",
                            cert.display(),
                            key.display()
                        ))
                    })?;
                Some(config)
            }
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!(
            "serving {} on {scheme}://{local} ({routes})",
            run_name(run_dir)
        );
        tracing::info!(model = %run_name(run_dir), addr = %local, scheme, "listening");
        use std::io::Write;
        std::io::stdout().flush()?;
        let handle = axum_server::Handle::new();
        tokio::spawn({
            let handle = handle.clone();
            async move {
                shutdown_signal().await;
                handle.graceful_shutdown(Some(Duration::from_secs(30)));
            }
        });
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let served = match tls {
            Some(config) => {
                axum_server::from_tcp_rustls(tcp, config)?
                    .handle(handle)
                    .serve(service)
                    .await
            }
            None => {
                axum_server::from_tcp(tcp)?
                    .handle(handle)
                    .serve(service)
                    .await
            }
        };
        served.context("server")?;
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
