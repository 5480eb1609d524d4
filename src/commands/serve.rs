//! `xray serve [--checkpoint RUN_DIR] [--addr 127.0.0.1:8080] [--token-file FILE]
//! [--audit-log FILE] [--tls-cert F --tls-key F]`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::compute::device::resolve_device;
use crate::config::{DeviceChoice, PrecisionChoice};
use crate::dicom::outbox::Destination;
use crate::dicom::scu::{check_ae_title, Node};
use crate::dicom::stow::Stow;
use crate::dicom::uid::UidRoot;
use crate::error::Error;
use crate::infer::Predictor;
use crate::serve::dicom_node::{default_queue_dir, Allowed, NodeOptions};
use crate::serve::dicom_tls::ClientCa;
use crate::serve::options::{default_max_connections, default_per_ip};
use crate::serve::{serve, Listen, ServeOptions, Timeouts};

/// Arguments of `xray serve`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("results").args(["results_to", "results_stow"])))]
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
    /// Arithmetic: fp32, bf16 (bfloat16 autocast, channels-last) or auto (on a CPU with
    /// AVX512-BF16 or AMX, bf16 where a timed forward pass is at least 1.15x faster, once per
    /// model on this machine; else fp32).
    #[arg(long, value_enum, default_value_t = PrecisionChoice::Auto)]
    pub precision: PrecisionChoice,
    /// Largest accepted request in MiB (all its files together).
    #[arg(long, default_value_t = 32, value_parser = at_least_one::<usize>)]
    pub max_upload_mb: usize,
    /// Largest accepted image in megapixels.
    #[arg(long, default_value_t = 50.0)]
    pub max_megapixels: f64,
    /// Requests admitted at once (being read, decoded, waiting for or in the model); beyond
    /// that the answer is 503, before the body is read.
    #[arg(long, default_value_t = 8, value_parser = at_least_one::<usize>)]
    pub queue: usize,
    /// Images decoded at once, across all requests (each may hold --max-megapixels x 16 bytes
    /// while it decodes).
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<usize>)]
    pub decode_threads: usize,
    /// Connections held at once; more are closed when accepted (default: 1024, or half the
    /// process's open-file limit when lower).
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub max_connections: Option<usize>,
    /// Connections held at once from one client address, so that one address cannot take
    /// every place (default: a sixteenth of --max-connections, at least 8; an IPv6 address
    /// counts by its /64). Behind a proxy on this host every client shares its address: raise
    /// it to --max-connections there.
    #[arg(long, value_name = "N", value_parser = at_least_one::<usize>)]
    pub max_connections_per_ip: Option<usize>,
    /// Seconds for a request's headers to arrive; also how long an idle keep-alive connection
    /// stays open.
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds for a request's whole body to arrive (else 408).
    #[arg(long, default_value_t = 30.0)]
    pub body_timeout: f64,
    /// Seconds a body may pause between two pieces before the request is cut.
    #[arg(long, default_value_t = 10.0)]
    pub body_idle_timeout: f64,
    /// Most files in one request to /api/predict.
    #[arg(long, default_value_t = 16, value_parser = at_least_one::<usize>)]
    pub max_files: usize,
    /// Bearer tokens for the API, one per line, each optionally followed by an expiry
    /// (YYYY-MM-DD or RFC 3339); read again when the file changes.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Append one JSON line per answered image and per refused request (no images, no names);
    /// reopened on SIGHUP (logrotate).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Rotate the audit log past this many MiB (FILE.1 is the newest rotated file), so that a
    /// flood of refusals cannot fill the disk; with --audit-keep 5, at most 6 x 256 MiB.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 256,
        requires = "audit_log",
        value_parser = at_least_one::<u64>
    )]
    pub audit_max_mb: u64,
    /// Rotated audit files kept.
    #[arg(long, default_value_t = 5, value_parser = at_least_one::<usize>)]
    pub audit_keep: usize,
    /// Refusals of clients without a valid token (401, 429, and the loopback mode's 421 and
    /// 403): per address and interval of this many seconds, the first is audited and logged in
    /// full and the rest counted into one line, so that a flood fills neither disk nor log
    /// (0: every refusal in full).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub audit_aggregate_seconds: u64,
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
    /// Tokens on a network address without --tls-cert: tokens and images cross the network in
    /// clear text (only behind a TLS proxy on the same host).
    #[arg(long)]
    pub insecure_http: bool,
    /// Log lines as plain text (warnings and refusals only) or as JSON objects, one per line,
    /// with a line per request (request id, route, status, latency, client) for a log
    /// collector.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// No GET /metrics and no per-request counting or access log.
    #[arg(long)]
    pub no_metrics: bool,
    /// Serve GET /metrics on this loopback or private address instead (plain HTTP, no token),
    /// for a scraper inside the cluster.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Count answers by predicted label in /metrics (off by default: whoever reads the
    /// metrics could follow which label each scan got).
    #[arg(long)]
    pub metrics_labels: bool,
    /// Also be a DICOM node on this address (host:port; 0 picks a port): C-ECHO and C-STORE of
    /// CR, DX, MR, Secondary Capture and VL photographs, each answered with a Structured Report
    /// and a Grad-CAM Secondary Capture sent to --results-to.
    #[arg(long, value_name = "ADDR", requires = "results")]
    pub dicom_addr: Option<String>,
    /// Our AE title: the called AE title associations must use, and the calling one when
    /// sending results.
    #[arg(long, value_name = "AE", default_value = "XRAY")]
    pub ae_title: String,
    /// Who may send to the DICOM node: a calling AE title and its host (AE@HOST, AE@* for any
    /// host); repeatable. Without it, any AE title from the loopback only.
    #[arg(long, value_name = "AE@HOST")]
    pub dicom_allow: Vec<String>,
    /// Where the DICOM results go (typically the PACS that sent the image): AE@HOST:PORT.
    #[arg(long, value_name = "AE@HOST:PORT", requires = "dicom_addr")]
    pub results_to: Option<String>,
    /// Or send them by DICOMweb STOW-RS to this URL (the DICOMweb root or its /studies;
    /// user@ in the URL, with the password of --results-stow-password-file or of the
    /// environment variable XRAY_STOW_PASSWORD, is sent as Basic auth and never shown).
    #[arg(long, value_name = "URL", requires = "dicom_addr")]
    pub results_stow: Option<String>,
    /// The STOW-RS password: the first line of FILE (mode 0600 or stricter).
    #[arg(long, value_name = "FILE", requires = "results_stow")]
    pub results_stow_password_file: Option<PathBuf>,
    /// Folder of the results waiting to be sent (kept across restarts; default
    /// $XDG_STATE_HOME/xray/outbox-AE or ~/.local/state/xray/outbox-AE).
    #[arg(long, value_name = "DIR", requires = "dicom_addr")]
    pub results_queue: Option<PathBuf>,
    /// Most MiB of results waiting; beyond it, new images are refused with "out of resources"
    /// (0xA700), so the sender tries again later.
    #[arg(long, value_name = "MIB", default_value_t = 1024, value_parser = at_least_one::<u64>)]
    pub results_queue_mb: u64,
    /// Days a result the destination refused is kept in the queue folder (as NAME.refused,
    /// for the operator to look at) before it is removed: it holds patient data.
    #[arg(long, value_name = "DAYS", default_value_t = 7.0)]
    pub results_keep_days: f64,
    /// Associations held at once, taken only by peers that pass the AE title and address
    /// checks; more are rejected. Connections that have not associated yet have their own
    /// small budget (4 per address, 32 in all, each for at most --header-timeout).
    #[arg(long, default_value_t = 8, value_parser = at_least_one::<usize>)]
    pub dicom_max_associations: usize,
    /// Most seconds one association may last, however busy it is; then it is aborted (the
    /// sender associates again for more).
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    pub dicom_association_timeout: f64,
    /// Root of the UIDs of the DICOM results (default: UUID-derived 2.25 UIDs).
    #[arg(long, value_name = "UID")]
    pub uid_root: Option<String>,
    /// DICOM TLS on --dicom-addr, with the certificate and key of --tls-cert/--tls-key (read
    /// again when they change, as for HTTPS).
    #[arg(long, requires = "dicom_addr", requires = "tls_cert")]
    pub dicom_tls: bool,
    /// Mutual TLS: a peer must present a client certificate signed by the CA (PEM) of FILE
    /// before it may associate; `--dicom-allow AE@HOST/CN` can then also require the
    /// certificate's subject Common Name.
    #[arg(long, value_name = "FILE", requires = "dicom_tls")]
    pub dicom_tls_client_ca: Option<PathBuf>,
    /// Allow a non-loopback --dicom-addr without --dicom-tls: images, patient names and AE
    /// titles then cross the network in clear text, and an AE title can be claimed by anyone.
    #[arg(long, requires = "dicom_addr")]
    pub insecure_dicom: bool,
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
    use tracing::Level;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::fmt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // xray's own events at the format's level; the libraries' only when they are errors (the
    // DICOM decoder warns about every file without a VOI window, once per upload).
    let _ = match format {
        LogFormat::Text => fmt()
            .with_writer(std::io::stderr)
            .with_max_level(Level::WARN)
            .without_time()
            .with_target(false)
            .with_level(false)
            .with_ansi(false)
            .finish()
            .with(
                Targets::new()
                    .with_target("xray", Level::WARN)
                    .with_default(Level::ERROR),
            )
            .try_init(),
        LogFormat::Json => fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_max_level(Level::INFO)
            .with_current_span(false)
            .finish()
            .with(
                Targets::new()
                    .with_target("xray", Level::INFO)
                    .with_default(Level::WARN),
            )
            .try_init(),
    };
}

impl ServeArgs {
    /// Runs the server until SIGTERM or Ctrl-C.
    pub fn execute(self) -> Result<()> {
        init_logs(self.log_format);
        let seconds = |flag: &str, s: f64| {
            if s.is_finite() && s > 0.0 {
                Ok(Duration::from_secs_f64(s))
            } else {
                Err(Error::usage(format!(
                    "--{flag} {s}: give a number of seconds above 0"
                )))
            }
        };
        if !(self.max_megapixels.is_finite() && self.max_megapixels >= 0.001) {
            return Err(Error::usage(format!(
                "--max-megapixels {}: give a number of megapixels of at least 0.001",
                self.max_megapixels
            ))
            .into());
        }
        let timeouts = Timeouts {
            header: seconds("header-timeout", self.header_timeout)?,
            body: seconds("body-timeout", self.body_timeout)?,
            body_idle: seconds("body-idle-timeout", self.body_idle_timeout)?,
            ..Timeouts::default()
        };
        let max_connections = self.max_connections.unwrap_or_else(default_max_connections);
        let options = ServeOptions {
            max_upload_bytes: self.max_upload_mb << 20,
            max_pixels: (self.max_megapixels * 1e6) as u64,
            queue: self.queue,
            decode_threads: self.decode_threads,
            max_files: self.max_files,
            rate_per_minute: self.rate_limit,
            token_file: self.token_file,
            audit_log: self.audit_log,
            audit_max_bytes: Some(self.audit_max_mb << 20),
            audit_keep: self.audit_keep,
            audit_aggregate: Duration::from_secs(self.audit_aggregate_seconds),
            model_load_seconds: 0.0,
            metrics: !self.no_metrics,
            metrics_labels: self.metrics_labels,
            timeouts,
            max_connections,
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or_else(|| default_per_ip(max_connections))
                .clamp(1, max_connections),
            dicom_associations: if self.dicom_addr.is_some() {
                self.dicom_max_associations
            } else {
                0
            },
        };
        let listen = Listen {
            addr: self.addr,
            tls: self.tls_cert.zip(self.tls_key),
            insecure_public: self.insecure_public,
            insecure_http: self.insecure_http,
            metrics_addr: self.metrics_addr,
        };
        let dicom = match &self.dicom_addr {
            Some(addr) => {
                check_ae_title(&self.ae_title, "--ae-title")?;
                check_dicom_exposure(addr, self.dicom_tls, self.insecure_dicom)?;
                let results_to = match (&self.results_to, &self.results_stow) {
                    (Some(to), _) => Destination::Dicom {
                        node: Node::parse(to, "--results-to")?,
                        calling_ae: self.ae_title.clone(),
                    },
                    (None, Some(url)) => Destination::Stow(Stow::parse(
                        url,
                        stow_password(self.results_stow_password_file.as_deref())?.as_deref(),
                        self.insecure_http,
                    )?),
                    (None, None) => {
                        return Err(Error::usage(
                            "--dicom-addr needs --results-to or --results-stow",
                        )
                        .into())
                    }
                };
                Some(NodeOptions {
                    addr: addr.clone(),
                    ae_title: self.ae_title.clone(),
                    allow: self
                        .dicom_allow
                        .iter()
                        .map(|a| Allowed::parse(a))
                        .collect::<Result<_>>()?,
                    queue_dir: match &self.results_queue {
                        Some(dir) => dir.clone(),
                        None => default_queue_dir(&self.ae_title)?,
                    },
                    results_to,
                    queue_bytes: self.results_queue_mb << 20,
                    keep_refused: if self.results_keep_days.is_finite()
                        && self.results_keep_days > 0.0
                    {
                        Duration::from_secs_f64(self.results_keep_days * 86400.0)
                    } else {
                        return Err(Error::usage(format!(
                            "--results-keep-days {}: give a number of days above 0",
                            self.results_keep_days
                        ))
                        .into());
                    },
                    uids: match &self.uid_root {
                        Some(root) => UidRoot::parse(root)?,
                        None => UidRoot::default(),
                    },
                    max_associations: self.dicom_max_associations,
                    artim: timeouts.header,
                    idle: timeouts.body_idle,
                    association_timeout: seconds(
                        "dicom-association-timeout",
                        self.dicom_association_timeout,
                    )?,
                    send_timeout: Duration::from_secs(30),
                    want_tls: self.dicom_tls,
                    tls: None,
                    client_ca: match &self.dicom_tls_client_ca {
                        Some(path) => Some(ClientCa::load(path)?),
                        None => None,
                    },
                })
            }
            None => None,
        };
        let started = std::time::Instant::now();
        let mut predictor = Predictor::load(&self.checkpoint, resolve_device(self.device)?)?;
        predictor.set_precision(self.precision)?;
        let options = ServeOptions {
            model_load_seconds: started.elapsed().as_secs_f64(),
            ..options
        };
        serve(&self.checkpoint, predictor, &listen, options, dicom)
    }
}

/// Refuses a `--dicom-addr` that other hosts can reach without `--dicom-tls`, unless
/// `--insecure-dicom`: images and patient attributes would cross the network in clear text.
fn check_dicom_exposure(addr: &str, tls: bool, insecure: bool) -> Result<()> {
    use std::net::ToSocketAddrs;
    if tls || insecure {
        return Ok(());
    }
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| Error::usage(format!("--dicom-addr {addr}: {e}")))?
        .collect();
    if addrs.iter().all(|a| a.ip().is_loopback()) {
        return Ok(());
    }
    Err(Error::usage(format!(
        "--dicom-addr {addr} is reachable from other hosts: add --dicom-tls (with --tls-cert/--tls-key, and --dicom-tls-client-ca to authenticate peers), or --insecure-dicom to send images in clear text"
    ))
    .into())
}

/// The STOW-RS password: the first line of `file` (refused when others may read it), else
/// `XRAY_STOW_PASSWORD`; `None` without either.
fn stow_password(file: Option<&std::path::Path>) -> Result<Option<String>> {
    let flag = "--results-stow-password-file";
    match file {
        Some(path) => {
            crate::serve::tls::check_private(path, flag)?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::usage(format!("{flag} {}: {e}", path.display())))?;
            let line = text.lines().next().unwrap_or("").to_string();
            if line.is_empty() {
                return Err(Error::usage(format!("{flag} {}: empty", path.display())).into());
            }
            Ok(Some(line))
        }
        None => Ok(std::env::var("XRAY_STOW_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty())),
    }
}

/// A count that must be at least 1 (a queue, a thread, a connection, a file, MiB): 0 is
/// refused as a usage error naming the flag, not quietly raised to 1.
fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String> {
    match text.parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        Ok(_) => Err("give 1 or more".into()),
        Err(_) => Err("not a whole number".into()),
    }
}
