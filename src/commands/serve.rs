//! `xray serve [--checkpoint RUN_DIR] [--addr 127.0.0.1:8080] [--token-file FILE]
//! [--audit-log FILE] [--tls-cert F --tls-key F]`

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::config::{DeviceChoice, PrecisionChoice};
use crate::infer::{resolve_device, Predictor};
use crate::serve::{serve, Listen, ServeOptions};

/// Arguments of `xray serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Trained run folder.
    #[arg(long, default_value = "checkpoints/latest")]
    pub checkpoint: PathBuf,
    /// Address to listen on (port 0: any free port, printed at start). An address other than
    /// loopback needs --token-file or --insecure-public.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// auto, cpu or cuda.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Arithmetic: fp32, bf16 (bfloat16 autocast, channels-last) or auto (bf16 where the CPU
    /// computes it in hardware: AVX512-BF16 or AMX; else fp32).
    #[arg(long, value_enum, default_value_t = PrecisionChoice::Auto)]
    pub precision: PrecisionChoice,
    /// Largest accepted request in MiB (all its files together).
    #[arg(long, default_value_t = 32)]
    pub max_upload_mb: usize,
    /// Largest accepted image in megapixels.
    #[arg(long, default_value_t = 50.0)]
    pub max_megapixels: f64,
    /// Requests that may wait for the model; beyond that the answer is 503.
    #[arg(long, default_value_t = 32)]
    pub queue: usize,
    /// Most files in one request to /api/predict.
    #[arg(long, default_value_t = 16)]
    pub max_files: usize,
    /// Bearer tokens for the API, one per line, each optionally followed by an expiry
    /// (YYYY-MM-DD or RFC 3339); read again when the file changes.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Append one JSON line per answered image and per refused request (no images, no names).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// API requests a minute from one client address (0: no limit); beyond it, 429.
    #[arg(long, default_value_t = 600)]
    pub rate_limit: u32,
    /// Listen on a network address without tokens: anyone who reaches it may use the model.
    #[arg(long)]
    pub insecure_public: bool,
    /// Log lines as plain text (warnings and refusals only) or as JSON objects, one per line,
    /// with a line per request (request id, route, status, latency, client) for a log
    /// collector.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// No GET /metrics and no per-request counting or access log.
    #[arg(long)]
    pub no_metrics: bool,
}

/// How `serve` writes its log on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Warnings and refusals as plain lines.
    Text,
    /// Every event, requests included, as one JSON object per line.
    Json,
}

/// Installs the process's log subscriber for `format`.
fn init_logs(format: LogFormat) {
    use tracing_subscriber::fmt;
    let _ = match format {
        LogFormat::Text => fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::WARN)
            .without_time()
            .with_target(false)
            .with_level(false)
            .with_ansi(false)
            .try_init(),
        LogFormat::Json => fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::INFO)
            .with_current_span(false)
            .try_init(),
    };
}

impl ServeArgs {
    /// Runs the server until SIGTERM or Ctrl-C.
    pub fn execute(self) -> Result<()> {
        init_logs(self.log_format);
        let started = std::time::Instant::now();
        let mut predictor = Predictor::load(&self.checkpoint, resolve_device(self.device)?)?;
        predictor.set_precision(self.precision)?;
        let model_load_seconds = started.elapsed().as_secs_f64();
        let options = ServeOptions {
            max_upload_bytes: self.max_upload_mb.max(1) << 20,
            max_pixels: (self.max_megapixels.max(0.001) * 1e6) as u64,
            queue: self.queue,
            max_files: self.max_files.max(1),
            rate_per_minute: self.rate_limit,
            token_file: self.token_file,
            audit_log: self.audit_log,
            model_load_seconds,
            metrics: !self.no_metrics,
        };
        let listen = Listen {
            addr: self.addr,
            tls: self.tls_cert.zip(self.tls_key),
            insecure_public: self.insecure_public,
        };
        serve(&self.checkpoint, predictor, &listen, options)
    }
}
