//! The server's settings: limits, timeouts, where it listens, and the worst-case memory they
//! allow.

use std::path::PathBuf;
use std::time::Duration;

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest accepted request body in bytes (all its files together).
    pub max_upload_bytes: usize,
    /// Largest accepted image in pixels (width x height; rows x columns x frames for DICOM).
    pub max_pixels: u64,
    /// Requests admitted at once (reading, decoding, waiting for or in the model); more get
    /// 503 before their body is read.
    pub queue: usize,
    /// Images decoded at once, across all requests.
    pub decode_threads: usize,
    /// Most files in one request.
    pub max_files: usize,
    /// API requests a minute per client address; 0 for no limit.
    pub rate_per_minute: u32,
    /// Bearer tokens, one per line; `None`: the API is open (loopback only, see [`Listen`]).
    pub token_file: Option<PathBuf>,
    /// Append-only JSON-lines record of every answer and every refusal.
    pub audit_log: Option<PathBuf>,
    /// Rotate the audit log when it grows past this many bytes (`None`: never).
    pub audit_max_bytes: Option<u64>,
    /// Rotated audit files kept (`audit.jsonl.1` ... `.N`).
    pub audit_keep: usize,
    /// Unauthenticated refusals of one address in this interval: the first written in full,
    /// the others counted into one line (zero: each written in full).
    pub audit_aggregate: Duration,
    /// Seconds the caller took to load the model (reported by /metrics).
    pub model_load_seconds: f64,
    /// Serve `GET /metrics` and count every request for it (and log requests at info level).
    pub metrics: bool,
    /// Count answers by predicted label in /metrics (off: anyone allowed to read the metrics
    /// could follow which label each scan got).
    pub metrics_labels: bool,
    /// Time limits of each connection.
    pub timeouts: Timeouts,
    /// Connections held at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Connections held at once from one client address (at most `max_connections`).
    pub max_connections_per_ip: usize,
    /// DICOM associations held at once (0: no DICOM node).
    pub dicom_associations: usize,
}

/// Time limits of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A request's headers must arrive within this. It also closes an idle keep-alive
    /// connection: hyper starts this clock when it waits for the next request.
    pub header: Duration,
    /// A request's whole body must arrive within this (so at least `max_upload / body` bytes
    /// a second for the largest upload); else 408.
    pub body: Duration,
    /// Most time between two pieces of a body (a stalled upload is cut sooner than `body`).
    pub body_idle: Duration,
    /// TLS handshake.
    pub handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            body_idle: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
        }
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_upload_bytes: 32 << 20,
            max_pixels: 50_000_000,
            queue: 8,
            decode_threads: 1,
            max_files: 16,
            rate_per_minute: 0,
            token_file: None,
            audit_log: None,
            audit_max_bytes: None,
            audit_keep: 5,
            audit_aggregate: Duration::from_secs(60),
            model_load_seconds: 0.0,
            metrics: true,
            metrics_labels: false,
            timeouts: Timeouts::default(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_per_ip(default_max_connections()),
            dicom_associations: 0,
        }
    }
}

/// Connections held at once by default: 1,024, or fewer where the process may open fewer
/// files (half of `RLIMIT_NOFILE`, leaving the rest for the model, logs and the audit file).
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and reads nothing else.
    let files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur as usize
    } else {
        1024
    };
    (files / 2).clamp(16, 1024)
}

/// Connections from one address by default: a sixteenth of `max_connections`, at least 8 (and
/// never more than `max_connections`), so that it takes sixteen addresses, not one, to hold
/// every place.
pub fn default_per_ip(max_connections: usize) -> usize {
    (max_connections / 16).max(8).min(max_connections.max(1))
}

/// Connections held at once on `--metrics-addr` (a scraper needs one or two), and from one
/// address there.
pub const METRICS_CONNECTIONS: usize = 16;
/// See [`METRICS_CONNECTIONS`].
pub const METRICS_CONNECTIONS_PER_IP: usize = 4;

/// Bytes of the read buffer of one connection (hyper's `max_buf_size`): the longest request
/// head accepted.
pub const CONNECTION_BUFFER_BYTES: usize = 64 << 10;

/// The parts of the worst-case resident memory of `serve`, beyond the loaded model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryBound {
    /// `max_connections x 2 x CONNECTION_BUFFER_BYTES`: request heads and answers in flight.
    pub connections: u64,
    /// `queue x max_upload_bytes`: the bodies of the admitted requests.
    pub bodies: u64,
    /// `decode_threads x max_pixels x 16 bytes`: the largest image being decoded by each
    /// decoder, with its copies (measured at 49 megapixels: 16-bit grey PNG 3.8 bytes a pixel,
    /// RGB JPEG 4.8, 16-bit RGBA PNG 9.8, 16-bit grey DICOM 10.2 to 10.5, 8-bit RGB DICOM 11.9 to
    /// 12.0, over two runs).
    pub decoding: u64,
    /// `queue x max_files x 2.2 MB`: the decoded images of admitted requests, kept at model
    /// size and, for the heatmap, at most 768 pixels a side.
    pub decoded: u64,
    /// `dicom_associations x (2 x max_upload_bytes + 2.2 MB + 128 KiB)`: each DICOM association
    /// holds one data set as received and as a file in memory, its decoded image, and its PDU
    /// buffers; plus `PENDING_TOTAL x 64 KiB` for the connections not yet associated.
    pub dicom: u64,
}

impl MemoryBound {
    /// Bytes a decoder holds per pixel at most (see [`MemoryBound::decoding`]): the worst
    /// measured, 12.0, with a third more.
    pub const DECODE_BYTES_PER_PIXEL: u64 = 16;
    /// Bytes kept per admitted image at most: 768 x 768 RGB plus a 512 x 512 RGB model input.
    pub const KEPT_BYTES_PER_IMAGE: u64 = 768 * 768 * 3 + 512 * 512 * 3;

    /// The bound for `options`.
    pub fn of(options: &ServeOptions) -> MemoryBound {
        let queue = options.queue.max(1) as u64;
        MemoryBound {
            connections: options.max_connections as u64 * 2 * CONNECTION_BUFFER_BYTES as u64,
            bodies: queue * options.max_upload_bytes as u64,
            decoding: options.decode_threads.max(1) as u64
                * options.max_pixels
                * Self::DECODE_BYTES_PER_PIXEL,
            decoded: queue * options.max_files as u64 * Self::KEPT_BYTES_PER_IMAGE,
            dicom: if options.dicom_associations == 0 {
                0
            } else {
                options.dicom_associations as u64
                    * (2 * options.max_upload_bytes as u64
                        + Self::KEPT_BYTES_PER_IMAGE
                        + (128 << 10))
                    + super::dicom_node::PENDING_TOTAL as u64 * super::dicom_node::PENDING_BYTES
            },
        }
    }

    /// All parts together, in bytes.
    pub fn total(&self) -> u64 {
        self.connections + self.bodies + self.decoding + self.decoded + self.dicom
    }

    /// One line for the operator: the total and its parts, in MiB.
    pub fn describe(&self) -> String {
        let mib = |b: u64| b >> 20;
        format!(
            "at most {} MiB beyond the model: request bodies {} MiB (--queue x --max-upload-mb), \
             decoding {} MiB (--decode-threads x --max-megapixels x {} B), decoded images {} MiB \
             (--queue x --max-files), connections {} MiB (--max-connections){}",
            mib(self.total()),
            mib(self.bodies),
            mib(self.decoding),
            Self::DECODE_BYTES_PER_PIXEL,
            mib(self.decoded),
            mib(self.connections),
            if self.dicom > 0 {
                format!(
                    ", DICOM associations {} MiB (--dicom-max-associations x 2 x --max-upload-mb, and 32 connections waiting to associate)",
                    mib(self.dicom)
                )
            } else {
                String::new()
            }
        )
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
    /// Allow tokens on a non-loopback address without TLS (they cross the network in clear
    /// text).
    pub insecure_http: bool,
    /// Serve `GET /metrics` here instead (plain HTTP, no token), on a loopback or private
    /// address only.
    pub metrics_addr: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_bound_adds_its_parts() {
        let options = ServeOptions {
            max_upload_bytes: 32 << 20,
            max_pixels: 50_000_000,
            queue: 16,
            decode_threads: 2,
            max_files: 16,
            max_connections: 1024,
            ..ServeOptions::default()
        };
        let m = MemoryBound::of(&options);
        assert_eq!(m.connections, 1024 * 2 * 65536);
        assert_eq!(m.bodies, 16 * 32 * 1048576);
        assert_eq!(m.decoding, 2 * 50_000_000 * 16);
        assert_eq!(m.decoded, 16 * 16 * (768 * 768 * 3 + 512 * 512 * 3));
        assert_eq!(m.dicom, 0);
        assert_eq!(m.total(), m.connections + m.bodies + m.decoding + m.decoded);
        let node = MemoryBound::of(&ServeOptions {
            dicom_associations: 8,
            ..options
        });
        assert_eq!(
            node.dicom,
            8 * (2 * 32 * 1048576 + 768 * 768 * 3 + 512 * 512 * 3 + 131072) + 32 * (65536 + 6)
        );
        assert_eq!(node.total(), m.total() + node.dicom);
        assert!((16..=1024).contains(&default_max_connections()));
        assert_eq!(default_per_ip(1024), 64);
        assert_eq!(default_per_ip(16), 8);
        assert_eq!(default_per_ip(4), 4);
    }
}
