//! `xray serve`: the upload page and a JSON API over one loaded model, built to hold on a
//! hostile network.
//!
//! A request goes through, in order (each file here is one stage):
//! - [`connections`]: a cap on connections held at once; hyper's header timeout closes a
//!   connection whose request head (or, idle, whose next request) does not arrive in time.
//! - [`admission`]: on the headers alone, before any body byte is read: Host and Origin (the
//!   token-less loopback mode), the rate limit, the bearer token ([`auth`]), the declared size
//!   and a place among the admitted requests. Refusals close the connection.
//! - [`handlers`]: the body, read within a time limit; each image's size judged from its header,
//!   then decoded by a bounded set of decoders and reduced at once to the model's input.
//! - [`worker`]: one inference thread owns the model; one forward pass a request.
//! - [`audit`]: every answer and every refusal, written off the runtime by one writer thread;
//!   a flood of unauthenticated refusals counted per address ([`tally`]).
//!
//! Memory is bounded by the flags ([`options::MemoryBound`]), TLS is [`tls`], and for a
//! cluster there are `GET /metrics` ([`metrics`], Prometheus; behind the token when tokens are
//! configured), `GET /readyz` and `GET /healthz` (which say nothing about the model), and logs
//! through `tracing`.

mod admission;
pub mod audit;
pub mod auth;
mod connections;
pub mod dicom_node;
pub mod dicom_tls;
mod handlers;
pub mod options;
pub mod prometheus;
pub mod rate_limit;
pub mod refusal;
pub mod tally;
pub mod tls;
mod worker;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::error::Error;
use crate::infer::Predictor;
use crate::run::run_name;
use admission::Admission;
use audit::{AuditLog, Rotation};
use auth::TokenFile;
pub use options::{Listen, MemoryBound, ServeOptions, Timeouts};
use prometheus::Metrics;
use rate_limit::RateLimit;
use worker::Job;

/// Which model answers: the run's name and the sha256 of its weights file.
#[derive(Debug, Clone)]
struct ModelIdentity {
    model: String,
    weights_sha256: String,
}

/// The model's input size and channels, for the decoders.
#[derive(Debug, Clone, Copy)]
struct PixelSpec {
    size: u32,
    channels: u32,
}

/// What the handlers share.
struct AppState {
    jobs: SyncSender<Job>,
    options: ServeOptions,
    /// The page's model line and `GET /api/model`: name, architecture, validation figures.
    model_info: Value,
    identity: ModelIdentity,
    /// The run's card (classes, threshold), for the DICOM results.
    card: crate::run::ModelCard,
    input_spec: PixelSpec,
    tokens: Option<TokenFile>,
    audit: Option<AuditLog>,
    /// Unauthenticated refusals, counted per address and interval.
    refusals: Arc<tally::Tally>,
    limit: Option<RateLimit>,
    metrics: Metrics,
    /// Places for requests, taken before their body is read.
    admission: Admission,
    /// Places for images being decoded, across all requests.
    decoders: Arc<Semaphore>,
    /// The inference thread (finished: the model stopped).
    worker: std::thread::JoinHandle<()>,
}

/// The model's description for the page and `GET /api/model` (with the arithmetic it is
/// served in and, where `auto` timed it, the two times).
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
        "precision": predictor.precision.label(),
        "precision_auto": predictor.auto,
        "auth": if options.token_file.is_some() { "bearer" } else { "none" },
        "max_files": options.max_files,
    })
}

/// The page's Content-Security-Policy: its own script and style only, nothing inline, no
/// frames, no form posts elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The security headers of every answer (OWASP's list); HSTS under TLS.
fn security_headers(router: Router<Arc<AppState>>, tls: bool) -> Router<Arc<AppState>> {
    let mut headers = vec![
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    if tls {
        headers.push((
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ));
    }
    headers.into_iter().fold(router, |r, (name, value)| {
        r.layer(SetResponseHeaderLayer::overriding(name, value))
    })
}

impl AppState {
    /// Everything the handlers share, from a loaded model: the token file read, the audit log
    /// opened, the weights hashed, the metrics registered and the inference thread started.
    /// Fails (usage, exit 2) on a bad token file or an audit log that cannot be opened.
    fn build(predictor: Predictor, options: &ServeOptions) -> Result<Arc<AppState>> {
        let tokens = options
            .token_file
            .as_deref()
            .map(TokenFile::load)
            .transpose()?;
        let rotation = options.audit_max_bytes.map(|max_bytes| Rotation {
            max_bytes,
            keep: options.audit_keep,
        });
        let audit = options
            .audit_log
            .as_deref()
            .map(|p| AuditLog::open(p, rotation))
            .transpose()
            .map_err(|e| Error::usage(format!("{e:#}")))?;
        let weights = predictor.run_dir.join("model.safetensors");
        let identity = ModelIdentity {
            model: run_name(&predictor.run_dir),
            weights_sha256: crate::fsutil::sha256_file(&weights)
                .with_context(|| format!("reading {}", weights.display()))?,
        };
        let info = model_info(&predictor, &identity, options);
        let spec = predictor.input_spec();
        let metrics = Metrics::new(
            &identity.model,
            predictor.card.arch.as_str(),
            &identity.weights_sha256,
            options.queue.max(1),
            options.model_load_seconds,
            options.metrics_labels,
        )
        .context("registering the metrics")?;
        let card = predictor.card.clone();
        let (jobs, worker) = worker::start(predictor, identity.model.clone(), options.queue)?;
        Ok(Arc::new(AppState {
            jobs,
            worker,
            options: options.clone(),
            model_info: info,
            identity,
            card,
            input_spec: PixelSpec {
                size: spec.size,
                channels: spec.channels,
            },
            tokens,
            audit,
            refusals: Arc::new(tally::Tally::new(options.audit_aggregate)),
            limit: RateLimit::new(options.rate_per_minute),
            metrics,
            admission: Admission::new(options.queue),
            decoders: Arc::new(Semaphore::new(options.decode_threads.max(1))),
        }))
    }
}

/// What the routes depend on beyond the settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouterFlags {
    /// Served over TLS: HSTS is sent.
    pub tls: bool,
    /// No tokens on a loopback address: the Host and Origin checks apply.
    pub loopback_only: bool,
    /// `GET /metrics` has an address of its own (`--metrics-addr`).
    pub separate_metrics: bool,
}

/// The names of the routes as they are added ("GET /healthz"), for the line `serve` prints.
#[derive(Default)]
struct Names(std::cell::RefCell<Vec<String>>);

impl Names {
    /// `path`, noted under `method`.
    fn at(&self, method: &str, path: &'static str) -> &'static str {
        self.0.borrow_mut().push(format!("{method} {path}"));
        path
    }
}

/// What [`router`] builds.
pub struct Routes {
    /// The main address's routes.
    pub app: Router,
    /// `GET /metrics` alone, for `--metrics-addr`.
    pub metrics: Option<Router>,
    /// The main address's routes by name, in the order they were added.
    pub names: Vec<String>,
}

/// The route table over the shared state: the main address's routes and layers, and
/// `GET /metrics` alone when it has an address of its own.
fn router(state: &Arc<AppState>, flags: RouterFlags) -> Routes {
    let options = &state.options;
    let names = Names::default();
    let public = Router::new()
        .route(names.at("GET", "/"), get(handlers::index))
        .route("/static/serve.js", get(handlers::script))
        .route("/static/serve.css", get(handlers::style))
        .route(names.at("GET", "/healthz"), get(handlers::healthz))
        .route(names.at("GET", "/readyz"), get(handlers::readyz));
    let upload = Router::new()
        .route(names.at("POST", "/api/predict"), post(handlers::predict))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admission::admit,
        ));
    let mut authenticated = Router::new()
        .route(names.at("GET", "/api/model"), get(handlers::model))
        .merge(upload);
    if options.metrics && !flags.separate_metrics {
        authenticated =
            authenticated.route(names.at("GET", "/metrics"), get(handlers::metrics_text));
    }
    let metrics_only = (options.metrics && flags.separate_metrics).then(|| {
        security_headers(
            Router::new().route("/metrics", get(handlers::metrics_text)),
            false,
        )
        .with_state(state.clone())
    });
    let authenticated = authenticated.route_layer(middleware::from_fn_with_state(
        state.clone(),
        admission::authenticate,
    ));
    let mut app = public.merge(authenticated);
    if options.metrics {
        app = app.layer(middleware::from_fn_with_state(
            state.clone(),
            handlers::track,
        ));
    }
    let mut app = app.layer(middleware::from_fn(admission::request_id));
    if flags.loopback_only {
        app = app.layer(middleware::from_fn_with_state(
            state.clone(),
            admission::local_only,
        ));
    }
    let app = security_headers(app, flags.tls)
        .layer(DefaultBodyLimit::max(options.max_upload_bytes))
        .with_state(state.clone());
    Routes {
        app,
        metrics: metrics_only,
        names: names.0.into_inner(),
    }
}

/// Starts the DICOM node over the shared state: the same model, inference thread, decoders,
/// audit log and limits.
fn start_node(state: &AppState, node: dicom_node::NodeOptions) -> Result<dicom_node::Running> {
    let options = &state.options;
    let producer = crate::dicom::Producer::new(
        state.identity.model.clone(),
        state.identity.weights_sha256.clone(),
        &state.card,
    );
    dicom_node::start(
        node,
        dicom_node::Shared {
            jobs: state.jobs.clone(),
            audit: state.audit.clone(),
            size: state.input_spec.size,
            channels: state.input_spec.channels,
            max_bytes: options.max_upload_bytes,
            max_pixels: options.max_pixels,
            decoders: state.decoders.clone(),
            runtime: tokio::runtime::Handle::current(),
            card: state.card.clone(),
            producer,
            audit_aggregate: options.audit_aggregate,
        },
    )
}

/// Writes the refusal counts whose interval ended (`all`: every count): see [`tally::Tally::flush`].
fn flush_tally(state: &AppState, all: bool) {
    state.refusals.flush(
        all,
        "serve: refused without a valid token",
        state.audit.as_ref(),
        tally::Count::line,
    );
}

/// Every second, writes the refusal counts whose interval ended.
fn spawn_tally(state: Arc<AppState>) {
    let refusals = state.refusals.clone();
    refusals.every_second(move || flush_tally(&state, false));
}

/// `--metrics-addr`: the address, refused (usage) unless loopback or private (RFC 1918, unique
/// local): the endpoint there has no token.
fn metrics_listener(addr: &str) -> Result<std::net::TcpListener> {
    let bad = |why: &str| Error::usage(format!("--metrics-addr {addr}: {why}"));
    let socket = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| bad("not a host:port address"))?;
    let internal = match socket.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback() || ip.is_private(),
        std::net::IpAddr::V6(ip) => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
    };
    if !internal {
        return Err(bad(
            "the metrics there need no token, so the address must be loopback or private \
             (10/8, 172.16/12, 192.168/16, fc00::/7)",
        )
        .into());
    }
    std::net::TcpListener::bind(socket).map_err(|e| bad(&format!("cannot listen: {e}")).into())
}

/// On SIGHUP the audit log is reopened (logrotate); the TLS certificate has its own watcher.
fn spawn_hangup(state: Arc<AppState>) {
    if state.audit.is_none() || tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangup.recv().await.is_some() {
            if let Some(audit) = &state.audit {
                audit.reopen();
                tracing::warn!("serve: SIGHUP: the audit log reopened");
            }
        }
    });
}

/// Refuses a non-loopback address without tokens, unless `insecure_public`; and tokens on a
/// non-loopback address without TLS, unless `insecure_http`.
fn check_exposure(addr: &SocketAddr, listen: &Listen, options: &ServeOptions) -> Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if options.token_file.is_none() && !listen.insecure_public {
        return Err(Error::usage(format!(
            "--addr {}: a network address needs --token-file FILE (bearer tokens); on a network \
             where anyone may use the model, say --insecure-public",
            listen.addr
        ))
        .into());
    }
    if options.token_file.is_some() && listen.tls.is_none() && !listen.insecure_http {
        return Err(Error::usage(format!(
            "--addr {}: tokens and images would cross the network in clear text; give \
             --tls-cert and --tls-key (or, behind a TLS proxy on this host, say --insecure-http)",
            listen.addr
        ))
        .into());
    }
    Ok(())
}

/// Serves on `listen` until SIGTERM or Ctrl-C, then lets in-flight requests finish. Prints the
/// address it listens on (port 0 picks a free one) before accepting.
pub fn serve(
    run_dir: &Path,
    predictor: Predictor,
    listen: &Listen,
    options: ServeOptions,
    dicom: Option<dicom_node::NodeOptions>,
) -> Result<()> {
    // Long on purpose: the start-up sequence in its order (address checked, old uploads swept,
    // listeners bound, the memory bound, the runtime, TLS, the server and its shutdown), each
    // step needing the ones before.
    let addr = listen
        .addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::usage(format!("--addr {}: not a host:port address", listen.addr)))?;
    check_exposure(&addr, listen, &options)?;
    let precision_note = predictor.auto_note();
    sweep_old_uploads(&std::env::temp_dir());
    let tcp = std::net::TcpListener::bind(addr)
        .map_err(|e| Error::usage(format!("cannot listen on {}: {e}", listen.addr)))?;
    let local = tcp.local_addr()?;
    if options.token_file.is_some() && listen.tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "serve: warning: --insecure-http: tokens and images cross the network in clear text"
        );
    }
    let metrics_tcp = match (&listen.metrics_addr, options.metrics) {
        (Some(a), true) => Some(metrics_listener(a)?),
        _ => None,
    };
    let loopback_only = options.token_file.is_none() && addr.ip().is_loopback();
    let timeouts = options.timeouts;
    let max_connections = options.max_connections;
    let max_connections_per_ip = options.max_connections_per_ip;
    let mut memory = MemoryBound::of(&options);
    if metrics_tcp.is_some() {
        memory.connections +=
            (options::METRICS_CONNECTIONS * 2 * options::CONNECTION_BUFFER_BYTES) as u64;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let tls = match &listen.tls {
            Some((cert, key)) => {
                let config = tls::load(cert, key).await?;
                tls::watch(config.clone(), cert.clone(), key.clone());
                Some(config)
            }
            None => None,
        };
        let dicom = match (dicom, &tls) {
            (Some(mut node), Some(config)) if node.want_tls => {
                node.tls = Some(config.clone());
                Some(node)
            }
            (Some(node), None) if node.want_tls => {
                return Err(Error::usage("--dicom-tls needs --tls-cert and --tls-key").into())
            }
            (node, _) => node,
        };
        let dicom_summary = dicom.as_ref().map(|d| {
            format!(
                "{} (C-ECHO, C-STORE of CR, DX, MR, SC and VL photographs{}); results to {} through {}",
                d.ae_title,
                if d.tls.is_some() { "; TLS" } else { "" },
                d.results_to,
                d.queue_dir.display()
            )
        });
        let state = AppState::build(predictor, &options)?;
        let flags = RouterFlags {
            tls: tls.is_some(),
            loopback_only,
            separate_metrics: metrics_tcp.is_some(),
        };
        let Routes {
            app,
            metrics: metrics_app,
            names,
        } = router(&state, flags);
        let node = dicom.map(|d| start_node(&state, d)).transpose()?;
        spawn_tally(state.clone());
        spawn_hangup(state.clone());
        let flush = {
            let state = state.clone();
            move || flush_tally(&state, true)
        };
        let routes = names.join(", ");
        let mut metrics_at = None;
        if let (Some(tcp), Some(metrics_app)) = (metrics_tcp, metrics_app) {
            metrics_at = Some(tcp.local_addr()?);
            // The main listener's header timeout and head buffer; a cap of its own.
            let server = http1_server(tcp, &timeouts)?;
            let capped = connections::Capped::new(
                axum_server::accept::DefaultAcceptor,
                options::METRICS_CONNECTIONS,
                options::METRICS_CONNECTIONS_PER_IP,
            );
            let server = server.acceptor(capped);
            tokio::spawn(async move {
                if let Err(e) = server.serve(metrics_app.into_make_service()).await {
                    tracing::error!("serve: --metrics-addr: {e}");
                }
            });
        }
        // The idle timeout between two pieces of a body, outside the router so that it wraps
        // the body the handlers read.
        let service = tower::Layer::layer(&RequestBodyTimeoutLayer::new(timeouts.body_idle), app);
        let service = axum::ServiceExt::<axum::http::Request<axum::body::Body>>::into_make_service_with_connect_info::<SocketAddr>(service);
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!(
            "serving {} on {scheme}://{local} ({routes})",
            run_name(run_dir)
        );
        println!("memory: {}", memory.describe());
        if let Some(at) = metrics_at {
            println!("metrics on http://{at}/metrics (no token: keep this address internal)");
        }
        if let (Some(node), Some(summary)) = (&node, &dicom_summary) {
            println!("DICOM node {summary} on {}", node.local);
            let (pending, bytes) = node.outbox.pending();
            if !pending.is_empty() {
                println!(
                    "results queue: {} object(s), {} KiB waiting from before",
                    pending.len(),
                    bytes >> 10
                );
            }
        }
        if let Some(note) = &precision_note {
            println!("{note}");
        }
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
        let capped = connections::Capped::new(
            axum_server::accept::DefaultAcceptor,
            max_connections,
            max_connections_per_ip,
        );
        let server = http1_server(tcp, &timeouts)?.handle(handle);
        let served = match tls {
            Some(config) => {
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
                    .handshake_timeout(timeouts.handshake)
                    .acceptor(capped);
                server.acceptor(acceptor).serve(service).await
            }
            None => server.acceptor(capped).serve(service).await,
        };
        served.context("server")?;
        flush();
        if let Some(node) = &node {
            node.outbox.stop();
        }
        println!("stopped: in-flight requests answered");
        Ok(())
    })
}

/// An HTTP/1.1 server on `tcp` with the header timeout (which also ends idle keep-alive
/// connections) and the buffer that caps a request head.
fn http1_server(
    tcp: std::net::TcpListener,
    timeouts: &Timeouts,
) -> std::io::Result<axum_server::Server<std::net::SocketAddr>> {
    let mut server = axum_server::from_tcp(tcp)?.http1_only();
    server
        .http_builder()
        .http1()
        .header_read_timeout(timeouts.header)
        .max_buf_size(options::CONNECTION_BUFFER_BYTES);
    Ok(server)
}

/// Removes the DICOM uploads that versions of xray before this one wrote to the temporary
/// folder (`xray-upload-PID-N.dcm`, whole files with their patient data) and left behind when
/// they died; this version decodes uploads in memory and writes none. Returns how many.
pub fn sweep_old_uploads(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with("xray-upload-") && name.ends_with(".dcm");
        let plain = entry.file_type().is_ok_and(|t| t.is_file());
        if ours && plain && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::warn!(
            "serve: removed {removed} DICOM upload(s) an earlier xray left in {}",
            dir.display()
        );
    }
    removed
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_only_old_dicom_uploads() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "xray-upload-4242-1f.dcm",
            "xray-upload-7-abc.dcm",
            "scan.dcm",
            "xray-upload-1.txt",
        ] {
            std::fs::write(dir.path().join(name), b"DICM").unwrap();
        }
        std::fs::create_dir(dir.path().join("xray-upload-dir.dcm")).unwrap();
        assert_eq!(sweep_old_uploads(dir.path()), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["scan.dcm", "xray-upload-1.txt", "xray-upload-dir.dcm"]
        );
    }
}
