//! What a request must pass before any of its body is read: the Host and Origin checks of the
//! token-less loopback mode, the per-client rate limit (429), the bearer token (401), the
//! declared size (413) and a place among the admitted requests (503). Every refusal is
//! answered from the headers alone, audited, and closes the connection, so a client without a
//! token can make the server hold nothing but its request head.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::HttpBody;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::{self, Verdict as TokenVerdict};
use super::prometheus::Metrics;
use super::tally::Verdict;
use super::AppState;

/// The server's id of a request (always its own; sent back as `X-Request-Id`).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The `X-Request-Id` the client sent, when short and plain: audited beside the server's.
#[derive(Debug, Clone)]
pub struct ClientRequestId(pub String);

/// Who is asking: the peer address and, with tokens, the token's id (never the token).
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The peer's address.
    pub ip: Option<IpAddr>,
    /// The token's id, once the token was accepted.
    pub token: Option<String>,
}

/// What the audit log records of every request: ids and who asked.
pub fn audit_fields(request: &Request) -> serde_json::Map<String, Value> {
    let client = request
        .extensions()
        .get::<Client>()
        .cloned()
        .unwrap_or_else(|| Client {
            ip: peer(request),
            token: None,
        });
    let id = request.extensions().get::<RequestId>().cloned();
    let theirs = request.extensions().get::<ClientRequestId>().cloned();
    fields(&client, id.as_ref(), theirs.as_ref())
}

/// The audit fields of `client` and the request's ids.
pub fn fields(
    client: &Client,
    id: Option<&RequestId>,
    theirs: Option<&ClientRequestId>,
) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("request_id".into(), json!(id.map(|r| r.0.clone())));
    if let Some(theirs) = theirs {
        m.insert("client_request_id".into(), json!(theirs.0));
    }
    m.insert("client".into(), json!(client.ip.map(|ip| ip.to_string())));
    m.insert("token_id".into(), json!(client.token));
    m
}

/// The client's address; an IPv4 client of a dual-stack listener (`::ffff:a.b.c.d`) as IPv4,
/// so that the rate limit and the loopback rules see one client, not two.
fn peer(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())
}

/// An error answer: status and `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// How long a refused request's body is still read and thrown away after the answer went out.
pub const LINGER: Duration = Duration::from_secs(2);

/// A refusal made before the body was read: the connection closes after it. The answer goes
/// out at once; meanwhile, for at most [`LINGER`], what the client is still sending is read
/// and dropped piece by piece (nginx's lingering close): a client that sends its whole body
/// before reading, as most do, then sees the answer instead of a reset connection. Nothing of
/// it is kept, and a client that asked `Expect: 100-continue` is sent no `100` and nothing is
/// read.
fn turn_away(request: Request, response: Response) -> Response {
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects_continue {
        let mut body = request.into_body();
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(LINGER);
            tokio::pin!(deadline);
            loop {
                let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
                tokio::select! {
                    _ = &mut deadline => break,
                    frame = frame => match frame {
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
        });
    }
    close(response)
}

/// `response` with `Connection: close`: hyper closes the connection after it.
fn close(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Refuses a request before its body is read: audited with `status` and `reason` (and who
/// asked), answered with `response`, the connection closed after it ([`turn_away`]).
fn refuse_unread(
    state: &AppState,
    request: Request,
    status: StatusCode,
    reason: &str,
    response: Response,
) -> Response {
    let fields = audit_fields(&request);
    audited(state, fields, status, reason, turn_away(request, response))
}

/// Refuses a request of a client that has not authenticated, before its body is read: the
/// first such refusal of its address and status in an interval is audited and logged, the
/// others only counted ([`super::tally`]), so that a flood fills neither the disk nor the log.
fn refuse_unauthenticated(
    state: &AppState,
    request: Request,
    fields: serde_json::Map<String, Value>,
    status: StatusCode,
    reason: &str,
    response: Response,
) -> Response {
    let ip = peer(&request);
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.as_str());
    let verdict = state
        .refusals
        .refusal(ip, status.as_u16(), reason, request_id);
    let response = turn_away(request, response);
    match verdict {
        Verdict::Counted => response,
        Verdict::Write => {
            // The log gets one line per interval with the totals (serve::flush_tally); with
            // no interval, one per refusal.
            if state.refusals.interval().is_zero() {
                let addr = ip.map_or("?".into(), |ip| ip.to_string());
                tracing::warn!(client = %addr, reason, "serve: {status} for {addr}: {reason}");
            }
            audited(state, fields, status, reason, response)
        }
    }
}

/// Audits a refusal (`status` and `reason`, with `fields`) and returns `response`; when the
/// audit log is behind, a 503 instead: nothing is answered without its line.
pub fn audited(
    state: &AppState,
    mut fields: serde_json::Map<String, Value>,
    status: StatusCode,
    reason: &str,
    response: Response,
) -> Response {
    let Some(audit) = &state.audit else {
        return response;
    };
    fields.insert("status".into(), json!(status.as_u16()));
    fields.insert("error".into(), json!(reason));
    match audit.submit(&[Value::Object(fields)]) {
        // A refusal does not wait for the disk: the writer syncs it with its batch.
        Ok(_) => response,
        Err(busy) => close(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("busy: {busy}; try again shortly"),
        )),
    }
}

/// Gives every request the server's own id (echoed as `X-Request-Id`) and keeps a plain
/// `X-Request-Id` of the client's beside it.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let theirs = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .map(|v| ClientRequestId(v.to_string()));
    let id = format!("{:032x}", rand::random::<u128>());
    request.extensions_mut().insert(RequestId(id.clone()));
    if let Some(theirs) = theirs {
        request.extensions_mut().insert(theirs);
    }
    let mut response = next.run(request).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Whether `host` (a `Host` header: name or address, optional port) names the loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        })
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The token-less loopback mode's guard against other web sites: a `Host` that is not a
/// loopback name (DNS rebinding) gets 421, a POST from another origin 403.
pub async fn local_only(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    // Both refusals are audited like the other unauthenticated ones (the client's address, no
    // token; a flood counted).
    let refuse = |request: Request, status: StatusCode, reason: &str, message: &str| {
        let client = Client {
            ip: peer(&request),
            token: None,
        };
        let line = fields(
            &client,
            request.extensions().get::<RequestId>(),
            request.extensions().get::<ClientRequestId>(),
        );
        refuse_unauthenticated(
            &state,
            request,
            line,
            status,
            reason,
            error(status, message),
        )
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !is_loopback_host(&host) {
        return refuse(
            request,
            StatusCode::MISDIRECTED_REQUEST,
            "not a loopback host name",
            "this server answers only to a loopback name (localhost, 127.0.0.1, [::1]); \
             serve with --token-file to reach it by another name",
        );
    }
    if request.method() == Method::POST {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        let cross_site = request
            .headers()
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "cross-site" || v == "same-site");
        let foreign = origin.is_some_and(|o| {
            let authority = o.split_once("://").map_or(o, |(_, a)| a);
            authority != host
        });
        if cross_site || foreign {
            let message = "cross-origin requests are refused";
            return refuse(request, StatusCode::FORBIDDEN, message, message);
        }
    }
    next.run(request).await
}

/// The gate of the API and /metrics, on the headers alone: the per-client rate limit (429),
/// then the bearer token (401).
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let ip = peer(&request);
    let mut client = Client { ip, token: None };
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
            let line = audit_fields(&request);
            return refuse_unauthenticated(
                &state,
                request,
                line,
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit",
                r,
            );
        }
    }
    if let Some(tokens) = &state.tokens {
        let presented = auth::bearer(
            request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        );
        let verdict = presented.map_or(TokenVerdict::Unknown, |t| tokens.check(t));
        match verdict {
            TokenVerdict::Valid(id) => client.token = Some(id),
            refused => {
                let why = match &refused {
                    TokenVerdict::Expired(id) => format!("expired token {id}"),
                    _ if presented.is_none() => "no token".to_string(),
                    _ => "unknown token".to_string(),
                };
                // An expired token is named in the audit line by its id.
                if let TokenVerdict::Expired(id) = refused {
                    client.token = Some(id);
                    request.extensions_mut().insert(client);
                }
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized: send a valid token as `Authorization: Bearer <token>`",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"xray\""),
                );
                let line = audit_fields(&request);
                return refuse_unauthenticated(
                    &state,
                    request,
                    line,
                    StatusCode::UNAUTHORIZED,
                    &why,
                    r,
                );
            }
        }
    }
    request.extensions_mut().insert(client);
    next.run(request).await
}

/// A place among the admitted requests; given back (and counted out of the queue depth) when
/// the request is answered.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    metrics: Metrics,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.dequeued();
    }
}

/// Places for requests being read, decoded, waiting for or in the model.
pub struct Admission {
    places: Arc<Semaphore>,
    capacity: usize,
}

impl Admission {
    /// `capacity` requests at once.
    pub fn new(capacity: usize) -> Admission {
        let capacity = capacity.max(1);
        Admission {
            places: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// How many may be admitted at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Admitted now.
    pub fn depth(&self) -> usize {
        self.capacity - self.places.available_permits()
    }

    fn try_admit(&self, metrics: &Metrics) -> Option<Admitted> {
        let permit = self.places.clone().try_acquire_owned().ok()?;
        metrics.enqueued();
        Some(Admitted {
            _permit: permit,
            metrics: metrics.clone(),
        })
    }
}

/// The upload's gate, after [`authenticate`]: a declared body over the limit is refused 413,
/// and the request takes a place among the admitted ones or is refused 503, all before its
/// body is read.
pub async fn admit(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let limit = state.options.max_upload_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let message = format!(
            "upload too large: {} MiB declared, limit {} MiB",
            declared.unwrap_or(0) >> 20,
            limit >> 20
        );
        return refuse_unread(
            &state,
            request,
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload too large",
            error(StatusCode::PAYLOAD_TOO_LARGE, message),
        );
    }
    let Some(admitted) = state.admission.try_admit(&state.metrics) else {
        return refuse_unread(
            &state,
            request,
            StatusCode::SERVICE_UNAVAILABLE,
            "queue full",
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: the inference queue is full, try again shortly",
            ),
        );
    };
    request.extensions_mut().insert(Arc::new(admitted));
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:9",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]:80",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
