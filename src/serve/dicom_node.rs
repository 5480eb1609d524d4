//! `serve --dicom-addr ADDR --ae-title AE --results-to AE@HOST:PORT`: xray as a DICOM node.
//!
//! A PACS (or a modality, or a router) opens an association and sends images with C-STORE;
//! each image is decoded, answered by the same inference thread, guard and audit log as the
//! HTTP API, and its results (a Structured Report and a Grad-CAM Secondary Capture, in the
//! image's study: [`crate::dicom`]) are queued on disk and sent to `--results-to`.
//!
//! What an association must pass, in order, before anything of an image is decoded:
//! - a place among `--dicom-max-associations` (else rejected, transient, "local limit
//!   exceeded"), and the A-ASSOCIATE-RQ within the ARTIM time (`--header-timeout`);
//! - the called AE title must be ours, and the calling AE title and the peer's address on the
//!   allow list (`--dicom-allow AE@HOST`; without one, any AE title from the loopback);
//! - presentation contexts: Verification and the storage classes of [`STORAGE_CLASSES`], in
//!   the transfer syntaxes this build decodes ([`transfer_syntaxes`]); the others are refused
//!   at negotiation, not accepted and then failed;
//! - each PDU within the idle time (`--body-idle-timeout`), each data set at most
//!   `--max-upload-mb` (the rest is read and dropped, and the image gets 0xA700), each image's
//!   size judged from its header (`--max-megapixels`) by one of the `--decode-threads`.
//!
//! Refusals carry the standard C-STORE statuses: 0xA700 out of resources (too large, queue
//! full, results queue full), 0xA900 data set does not match SOP class, 0xC000 cannot
//! understand (unreadable, undecodable). Every association and every image is audited: the
//! calling AE title, the peer, the sha256 of the SOP Instance UID (never a patient attribute),
//! the result.

use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_ul::association::server::{
    AccessControl, AsyncServerAssociation, ServerAssociationOptions,
};
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, Pdu, PresentationContextNegotiated,
    PresentationContextResultReason, UserIdentity,
};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::audit::AuditLog;
use super::refusal::Refused;
use super::tally::{Tally, Verdict};
use super::worker::{Job, Prepared};
use crate::data::decode::{decode_image_bytes, to_model_pixels};
use crate::dicom::outbox::{Delivery, Destination, Outbox};
use crate::dicom::scu::encode_command;
use crate::dicom::status;
use crate::dicom::uid::UidRoot;
use crate::dicom::{encode, results, text, Producer, Source};
use crate::error::Error;
use crate::explain::overlay::preview;
use xray_codec::dimse::{part10, Incoming, Message};

/// The storage SOP classes accepted: what a chest X-ray, an MRI slice or a photograph arrives
/// as (CR, DX for presentation and processing, Digital Mammography is not among them, MR,
/// Enhanced MR, Secondary Capture, VL Photographic).
pub const STORAGE_CLASSES: &[&str] = &[
    uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::MR_IMAGE_STORAGE,
    uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::VL_PHOTOGRAPHIC_IMAGE_STORAGE,
];

/// Transfer syntaxes offered, in order of preference, before the ones this build cannot
/// decode are taken out.
const CANDIDATE_SYNTAXES: &[&str] = xray_codec::dimse::TRANSFER_SYNTAXES;

/// The transfer syntaxes accepted: those of [`CANDIDATE_SYNTAXES`] this build can decode.
pub fn transfer_syntaxes() -> Vec<&'static str> {
    use dicom_encoding::TransferSyntaxIndex;
    CANDIDATE_SYNTAXES
        .iter()
        .copied()
        .filter(|uid| {
            dicom_transfer_syntax_registry::TransferSyntaxRegistry
                .get(uid)
                .is_some_and(|ts| ts.can_decode_all())
        })
        .collect()
}

/// Largest PDU we receive (the peer splits larger data sets).
const MAX_PDU_BYTES: u32 = 64 << 10;

/// One entry of `--dicom-allow`: a calling AE title, the host it must come from and,
/// under mutual TLS, the subject Common Name of its certificate.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// The calling AE title.
    pub ae_title: String,
    /// The addresses the host name resolved to at start (any, for `*`).
    pub hosts: Option<Vec<IpAddr>>,
    /// The client certificate's subject CN it must present (`AE@HOST/CN`).
    pub subject: Option<String>,
    /// As given, for messages.
    pub text: String,
}

impl Allowed {
    /// Whether `peer` is this entry's host (any, for `*`).
    fn admits_host(&self, peer: IpAddr) -> bool {
        self.hosts.as_ref().is_none_or(|h| h.contains(&peer))
    }

    /// Parses `AE@HOST` (`AE@*`: from any host), resolving HOST now, and `AE@HOST/CN`: the
    /// same, with a client certificate whose subject Common Name is CN.
    pub fn parse(text: &str) -> Result<Allowed> {
        let bad = || {
            Error::usage(format!(
                "--dicom-allow {text}: expected AE@HOST or AE@HOST/CN (for example PACS@10.0.0.5, PACS@* for any host, PACS@*/pacs.hospital.example for a certificate's subject)"
            ))
        };
        let (ae, rest) = text.split_once('@').ok_or_else(bad)?;
        let (host, subject) = match rest.split_once('/') {
            Some((_, "")) => return Err(bad().into()),
            Some((host, cn)) => (host, Some(cn.to_string())),
            None => (rest, None),
        };
        crate::dicom::scu::check_ae_title(ae, "--dicom-allow")?;
        let hosts = if host == "*" {
            None
        } else {
            let addrs: Vec<IpAddr> = (host, 0)
                .to_socket_addrs()
                .map_err(|e| {
                    Error::usage(format!("--dicom-allow {text}: cannot resolve {host}: {e}"))
                })?
                .map(|a| a.ip())
                .collect();
            if addrs.is_empty() {
                return Err(bad().into());
            }
            Some(addrs)
        };
        Ok(Allowed {
            ae_title: ae.to_string(),
            hosts,
            subject,
            text: text.to_string(),
        })
    }
}

/// Settings of the DICOM node.
#[derive(Debug)]
pub struct NodeOptions {
    /// Where to listen (`host:port`; port 0 picks one, printed at start).
    pub addr: String,
    /// Our AE title: the called AE title associations must use, and the calling one of ours.
    pub ae_title: String,
    /// Who may connect; empty: any AE title from the loopback.
    pub allow: Vec<Allowed>,
    /// Where results go.
    pub results_to: Destination,
    /// The results queue folder.
    pub queue_dir: PathBuf,
    /// Its size bound in bytes (waiting and refused results together).
    pub queue_bytes: u64,
    /// How long results the destination refused are kept (`--results-keep-days`).
    pub keep_refused: Duration,
    /// Root of new UIDs.
    pub uids: UidRoot,
    /// Associations held at once.
    pub max_associations: usize,
    /// Time for the A-ASSOCIATE-RQ to arrive (DICOM's ARTIM timer).
    pub artim: Duration,
    /// Most time between two PDUs of an association.
    pub idle: Duration,
    /// Most time an association is held in all (`--dicom-association-timeout`): a peer that
    /// keeps a trickle going cannot keep its place for ever.
    pub association_timeout: Duration,
    /// Time for each step of sending the results.
    pub send_timeout: Duration,
    /// `--dicom-tls`: TLS on the node's port, with the certificate of `--tls-cert`.
    pub want_tls: bool,
    /// That certificate, once loaded (set by [`super::serve`]).
    pub tls: Option<axum_server::tls_rustls::RustlsConfig>,
    /// `--dicom-tls-client-ca`: peers must present a certificate it signed.
    pub client_ca: Option<super::dicom_tls::ClientCa>,
}

/// What the node shares with the HTTP side.
pub struct Shared {
    /// The inference thread's queue.
    pub jobs: SyncSender<Job>,
    /// The audit log.
    pub audit: Option<AuditLog>,
    /// The model's input size and channels.
    pub size: u32,
    /// The model's input channels.
    pub channels: u32,
    /// Largest data set (bytes) and image (pixels).
    pub max_bytes: usize,
    /// Largest image in pixels.
    pub max_pixels: u64,
    /// Images decoded at once (shared with the HTTP side).
    pub decoders: Arc<tokio::sync::Semaphore>,
    /// The async runtime (to wait for a decoder place and the model from this thread).
    pub runtime: tokio::runtime::Handle,
    /// The run's card (classes, threshold) and who made the results.
    pub card: crate::run::ModelCard,
    /// The model's name and weights hash.
    pub producer: Producer,
    /// Rejected associations of one address and reason in this interval: the first audited in
    /// full, the others counted into one line (zero: each in full).
    pub audit_aggregate: Duration,
}

/// A running node: its address and the results sender.
pub struct Running {
    /// Where it listens.
    pub local: SocketAddr,
    /// The results queue.
    pub outbox: Arc<Outbox>,
}

/// The access rule of one connection: our AE title, and the allow list against this peer;
/// a request that passes them takes its place among `--dicom-max-associations` here, so that
/// only an authenticated peer ever holds one.
struct Gate<'a> {
    allow: &'a [Allowed],
    peer: IpAddr,
    slots: &'a Arc<tokio::sync::Semaphore>,
    /// The place taken, moved out once the association is established.
    slot: &'a std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    /// Whether the request passed the checks but found every place taken.
    busy: &'a std::sync::atomic::AtomicBool,
    /// The subject CN of the client certificate verified in the TLS handshake.
    subject: &'a Mutex<Option<String>>,
}

impl AccessControl for Gate<'_> {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let subject = self
            .subject
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        admits(
            self.allow,
            self.peer,
            subject.as_deref(),
            this_ae_title,
            calling_ae_title,
            called_ae_title,
        )?;
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
                Ok(())
            }
            Err(_) => {
                // dicom-ul's access control can only reject as the service user; the audit
                // line says why.
                self.busy.store(true, Ordering::SeqCst);
                Err(AssociationRJServiceUserReason::NoReasonGiven)
            }
        }
    }
}

/// Whether a request from `peer` (with the client certificate's `subject` under mutual TLS)
/// calling `calling` and called `called` passes our AE title and the allow list (without one,
/// loopback peers only).
fn admits(
    allow: &[Allowed],
    peer: IpAddr,
    subject: Option<&str>,
    this_ae_title: &str,
    calling: &str,
    called: &str,
) -> Result<(), AssociationRJServiceUserReason> {
    if called.trim() != this_ae_title.trim() {
        return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
    }
    let calling = calling.trim();
    let allowed = if allow.is_empty() {
        peer.is_loopback()
    } else {
        allow.iter().any(|a| {
            a.ae_title == calling
                && a.admits_host(peer)
                && a.subject.as_deref().is_none_or(|cn| Some(cn) == subject)
        })
    };
    if allowed {
        Ok(())
    } else {
        Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
    }
}

/// The called and calling AE titles of the A-ASSOCIATE-RQ waiting on `stream` (bytes 10 to 26
/// and 26 to 42 of the PDU, PS3.8 9.3.2), read without taking them from the socket, so that
/// dicom-ul still reads the whole request; `None` when the first byte is not an
/// A-ASSOCIATE-RQ or the connection ends first.
async fn peek_titles(stream: &tokio::net::TcpStream) -> Option<(String, String)> {
    let mut head = [0u8; 42];
    loop {
        let n = stream.peek(&mut head).await.ok()?;
        if n == 0 || head[0] != 0x01 {
            return None;
        }
        if n == head.len() {
            break;
        }
        // Part of it has come: wait for the rest (the caller bounds this by ARTIM).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    Some((text(&head[10..26]), text(&head[26..42])))
}

/// A-ASSOCIATE-RJ, rejected-transient (2) by the service provider, presentation related (3):
/// local limit exceeded (2), PS3.8 9.3.4: the peer may try again later.
const REJECT_BUSY: [u8; 10] = [0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2];

/// Answers the waiting request with [`REJECT_BUSY`], reads what the peer still sends for at
/// most a second (so that closing does not reset the connection before the peer reads the
/// answer), and closes.
async fn reject_busy(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.write_all(&REJECT_BUSY).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 8192];
    let mut left = PENDING_BYTES;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while left > 0 {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n as u64),
            _ => break,
        }
    }
}

/// Connections that have not yet associated, from one address at most; more are closed at
/// once, before anything is read.
pub const PENDING_PER_PEER: usize = 4;
/// Connections that have not yet associated, in all, from addresses `--dicom-allow` names
/// and, apart, from the others (half each): more are closed at once. Strangers from many
/// addresses fill their own half, never the listed peers'.
pub const PENDING_TOTAL: usize = 32;
/// What one connection holds before it associates: the A-ASSOCIATE-RQ's buffer.
pub const PENDING_BYTES: u64 = MAX_PDU_BYTES as u64 + 6;

/// The pre-association budget: connections counted per address and in total (listed and
/// other addresses apart), each count given back by the [`Pending`] guard however the
/// connection ends.
#[derive(Default)]
struct PendingBudget {
    counts: std::sync::Mutex<PendingCounts>,
}

#[derive(Default)]
struct PendingCounts {
    by_peer: std::collections::HashMap<IpAddr, usize>,
    /// In all: from listed addresses, from the others.
    listed: usize,
    others: usize,
}

/// One connection's place in the pre-association budget; given back on drop.
struct Pending<'a> {
    budget: &'a PendingBudget,
    peer: IpAddr,
    listed: bool,
}

impl PendingBudget {
    /// A place for a new connection from `peer` (`listed`: an address of `--dicom-allow`),
    /// or `None` when that address or its kind already has as many as allowed.
    fn enter(&self, peer: IpAddr, listed: bool) -> Option<Pending<'_>> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let total = if listed { counts.listed } else { counts.others };
        let mine = counts.by_peer.get(&peer).copied().unwrap_or(0);
        if mine >= PENDING_PER_PEER || total >= PENDING_TOTAL / 2 {
            return None;
        }
        *counts.by_peer.entry(peer).or_insert(0) += 1;
        if listed {
            counts.listed += 1;
        } else {
            counts.others += 1;
        }
        Some(Pending {
            budget: self,
            peer,
            listed,
        })
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut counts = self.budget.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.by_peer.remove(&self.peer);
            }
        }
        if self.listed {
            counts.listed -= 1;
        } else {
            counts.others -= 1;
        }
    }
}

/// Whether `--dicom-allow` names `peer`'s address (an `AE@*` entry names every address;
/// without the flag, the loopback is the allowed host).
fn listed(allow: &[Allowed], peer: IpAddr) -> bool {
    if allow.is_empty() {
        peer.is_loopback()
    } else {
        allow.iter().any(|a| a.admits_host(peer))
    }
}

/// Binds `options.addr`, starts the results sender and the listener (a task on the current
/// Tokio runtime: call it from within one); prints nothing.
pub fn start(options: NodeOptions, shared: Shared) -> Result<Running> {
    let listener = TcpListener::bind(&options.addr)
        .map_err(|e| Error::usage(format!("--dicom-addr {}: cannot listen: {e}", options.addr)))?;
    let local = listener.local_addr()?;
    let outbox = Arc::new(Outbox::open(
        &options.queue_dir,
        options.queue_bytes,
        options.keep_refused,
    )?);
    let audit = shared.audit.clone();
    let to = options.results_to.clone();
    outbox.start(
        options.results_to.clone(),
        options.send_timeout,
        move |d| {
            let (result, extra, file) = match &d {
                Delivery::Stored(path, seconds) => {
                    ("stored", json!({"seconds_since_received": seconds}), Some(path))
                }
                Delivery::Refused(path, status) => {
                    ("refused", json!(format!("0x{status:04X}")), Some(path))
                }
                Delivery::Unreachable(e) => ("unreachable", json!(e), None),
                Delivery::Expired(n) => ("expired", json!({"refused_files_removed": n}), None),
            };
            if result != "stored" {
                tracing::warn!("dicom: results to {to}: {result} {extra}");
            }
            // The queue file's name: time of receipt, index and kind; nothing of the patient.
            let file = file.and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
            // Sent already: a line that cannot be written is logged as an error (audit_line).
            let _ = audit_line(
                audit.as_ref(),
                json!({"dicom": "results-sent", "to": to.to_string(), "result": result, "detail": extra, "file": file}),
            );
        },
    )?;
    let shared_interval = shared.audit_aggregate;
    let node = Arc::new(NodeState {
        slots: Arc::new(tokio::sync::Semaphore::new(options.max_associations)),
        options,
        shared,
        outbox: outbox.clone(),
        pending: PendingBudget::default(),
        crowded: AtomicUsize::new(0),
        rejections: Tally::new(shared_interval),
        syntaxes: transfer_syntaxes(),
    });
    // One task a connection on the server's runtime: negotiation and messages are async;
    // decoding, waiting for the model and writing the queue run in place of a worker
    // (block_in_place), as the HTTP side runs them on blocking threads.
    listener
        .set_nonblocking(true)
        .context("the DICOM listener")?;
    let listener = tokio::net::TcpListener::from_std(listener).context("the DICOM listener")?;
    {
        let flushed = node.clone();
        node.rejections
            .every_second(move || flushed.flush_rejections());
    }
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin on the error.
                    tracing::warn!("dicom: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // An IPv4 peer on a dual-stack listener arrives as ::ffff:a.b.c.d.
            let peer = peer.ip().to_canonical();
            let node = node.clone();
            tokio::spawn(async move { node.association(stream, peer).await });
        }
    });
    Ok(Running { local, outbox })
}

/// Writes one audit line (the writer stamps its time) and waits until it is on disk; why it
/// could not be written (the writer too far behind, or the disk). Without an audit log, `Ok`.
fn audit_line(audit: Option<&AuditLog>, record: Value) -> Result<(), String> {
    let Some(audit) = audit else { return Ok(()) };
    let result = audit.write_blocking(&[record]);
    if let Err(e) = &result {
        tracing::error!("dicom: audit line not written: {e}");
    }
    result
}

struct NodeState {
    options: NodeOptions,
    shared: Shared,
    outbox: Arc<Outbox>,
    /// The places of `--dicom-max-associations`, taken by [`Gate`].
    slots: Arc<tokio::sync::Semaphore>,
    /// Connections not yet associated.
    pending: PendingBudget,
    /// Connections closed unread since the last log line about them.
    crowded: AtomicUsize,
    /// Rejected associations, counted per address and reason.
    rejections: Tally,
    syntaxes: Vec<&'static str>,
}

/// A C-STORE status and why.
struct Status(u16, String);

/// DIMSE command fields (PS3.7 E.1).
const C_STORE_RQ: u16 = 0x0001;
const C_ECHO_RQ: u16 = 0x0030;
/// Set in a response's command field.
const RESPONSE: u16 = 0x8000;

/// The accepted presentation context a message may be handled on: the one its PDVs name,
/// accepted at negotiation, whose abstract syntax is the command's affected SOP class, which
/// must be among `classes`. Otherwise why not (answered 0x0122, SOP class not supported).
fn context_for<'a>(
    msg: &Message,
    contexts: &'a [PresentationContextNegotiated],
    class: &str,
    classes: &[&str],
) -> Result<&'a PresentationContextNegotiated, String> {
    if msg.mixed_contexts {
        return Err("the message's PDVs name more than one presentation context".into());
    }
    let id = msg.context_id;
    let Some(pc) = contexts.iter().find(|pc| pc.id == id) else {
        return Err(format!("presentation context {id} was not proposed"));
    };
    if pc.reason != PresentationContextResultReason::Acceptance {
        return Err(format!(
            "presentation context {id} was refused at negotiation"
        ));
    }
    let syntax = pc.abstract_syntax.trim_end_matches('\0');
    if syntax != class {
        return Err(format!(
            "SOP class {class} sent on presentation context {id}, negotiated for {syntax}"
        ));
    }
    if !classes.contains(&class) {
        return Err(format!("SOP class {class} is not one xray accepts"));
    }
    Ok(pc)
}

impl NodeState {
    /// Writes an audit line from async code (the writer's acknowledgement is waited for in
    /// place of a worker); why it could not be written.
    fn audit(&self, line: Value) -> Result<(), String> {
        tokio::task::block_in_place(|| audit_line(self.shared.audit.as_ref(), line))
    }

    /// Audits a rejected association (`code` 2 transient, 1 permanent): the first of its
    /// address and reason in an interval in full, the others counted ([`Tally`]).
    fn rejected(&self, peer: IpAddr, code: u16, why: &str, calling: Option<&str>) {
        if self.rejections.refusal(Some(peer), code, why, None) == Verdict::Counted {
            return;
        }
        // Rejected already: a line that cannot be written is logged as an error.
        let _ = self.audit(
            json!({"dicom": "association", "peer": peer.to_string(), "calling_ae": calling, "result": "rejected", "reason": why}),
        );
    }

    /// Writes the counts of rejected associations whose interval ended: see [`Tally::flush`].
    fn flush_rejections(&self) {
        self.rejections.flush(
            false,
            "dicom: associations rejected (2: transient, 1: permanent)",
            self.shared.audit.as_ref(),
            |c| json!({"dicom": "association", "result": "rejected", "peer": c.client.map(|ip| ip.to_string()), "reason": c.reason, "rejections": c.refusals, "written_in_full": 1, "from": c.from, "to": c.to}),
        );
    }

    /// Serves one connection: a place in the pre-association budget (else closed unread),
    /// the association within the ARTIM time, its messages, the release. Every place taken is
    /// a guard, given back on every way out, a panic included.
    async fn association(self: Arc<Self>, stream: tokio::net::TcpStream, peer: IpAddr) {
        let listed = listed(&self.options.allow, peer);
        let Some(pending) = self.pending.enter(peer, listed) else {
            // One line per 100 such connections: a flood must not fill the log or the audit.
            if self
                .crowded
                .fetch_add(1, Ordering::SeqCst)
                .is_multiple_of(100)
            {
                tracing::warn!(
                    "dicom: connection from {peer} closed unread: {PENDING_PER_PEER} from one address, or {} from listed or from other addresses, are waiting to associate", PENDING_TOTAL / 2
                );
            }
            drop(stream);
            return;
        };
        if let Err(e) = self.serve_association(stream, peer, pending).await {
            tracing::warn!("dicom: association from {peer}: {e:#}");
        }
    }

    /// Negotiates the association (over TLS with `--dicom-tls`) within the ARTIM time, then
    /// serves it.
    async fn serve_association(
        &self,
        stream: tokio::net::TcpStream,
        peer: IpAddr,
        pending: Pending<'_>,
    ) -> Result<()> {
        let slot = std::sync::Mutex::new(None);
        let busy = std::sync::atomic::AtomicBool::new(false);
        let subject = Arc::new(Mutex::new(None));
        let gate = Gate {
            allow: &self.options.allow,
            peer,
            slots: &self.slots,
            slot: &slot,
            busy: &busy,
            subject: &subject,
        };
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(gate)
            .ae_title(self.options.ae_title.clone())
            .max_pdu_length(MAX_PDU_BYTES)
            .read_timeout(self.options.artim)
            .write_timeout(self.options.idle)
            .with_abstract_syntax(uids::VERIFICATION);
        for class in STORAGE_CLASSES {
            options = options.with_abstract_syntax(*class);
        }
        for ts in &self.syntaxes {
            options = options.with_transfer_syntax(*ts);
        }
        // One ARTIM time for all that comes before the association: the busy check's look at
        // the request, the TLS handshake, the negotiation.
        let deadline = tokio::time::Instant::now() + self.options.artim;
        match &self.options.tls {
            // The current certificate: renewed ones apply to the next association.
            Some(tls) => {
                let config = match &self.options.client_ca {
                    // Mutual TLS: this connection's verifier leaves the subject for the gate.
                    Some(ca) => ca
                        .config_for(&tls.get_inner(), subject.clone())
                        .map_err(|e| anyhow!("TLS configuration: {e}"))?,
                    None => tls.get_inner(),
                };
                let options = options.tls_config(config);
                let established =
                    tokio::time::timeout_at(deadline, options.establish_tls_async(stream)).await;
                let cn = subject.lock().unwrap_or_else(|e| e.into_inner()).clone();
                self.settle(established, peer, pending, &slot, &busy, cn)
                    .await
            }
            None => {
                // Every place taken: a peer that would pass the gate is told "transient, local
                // limit exceeded" (try again later), which dicom-ul's access control cannot
                // send. Read from the request's head without taking it; under TLS the head is
                // encrypted, and the gate rejects as the service user instead.
                if self.slots.available_permits() == 0 {
                    let titles = tokio::time::timeout_at(deadline, peek_titles(&stream)).await;
                    if let Ok(Some((called, calling))) = titles {
                        let passes = admits(
                            &self.options.allow,
                            peer,
                            None,
                            &self.options.ae_title,
                            &calling,
                            &called,
                        )
                        .is_ok();
                        if passes && self.slots.available_permits() == 0 {
                            // The pre-association place is held until the connection is
                            // closed: a peer that never reads its rejection still counts.
                            reject_busy(stream).await;
                            drop(pending);
                            let why = format!(
                                "too many associations ({} held); rejected transient, local limit exceeded",
                                self.options.max_associations
                            );
                            self.rejected(peer, 2, &why, Some(&calling));
                            return Ok(());
                        }
                    }
                }
                let established =
                    tokio::time::timeout_at(deadline, options.establish_async(stream)).await;
                self.settle(established, peer, pending, &slot, &busy, None)
                    .await
            }
        }
    }

    /// After the negotiation (plain or TLS): the association served with the place the gate
    /// took (held until it ends), or the rejection or the silence audited.
    async fn settle<S, E: std::fmt::Display>(
        &self,
        established: Result<Result<AsyncServerAssociation<S>, E>, tokio::time::error::Elapsed>,
        peer: IpAddr,
        pending: Pending<'_>,
        slot: &std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
        busy: &std::sync::atomic::AtomicBool,
        subject: Option<String>,
    ) -> Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        // No longer waiting to associate, whatever the outcome (before the audit line, which
        // may take a while: a rejected peer's next try must find its place).
        drop(pending);
        let why = match established {
            Ok(Ok(assoc)) => {
                let _slot = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                return self.run_association(assoc, peer, subject).await;
            }
            Ok(Err(_)) if busy.load(Ordering::SeqCst) => format!(
                "too many associations ({} held)",
                self.options.max_associations
            ),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no association request within {} s",
                self.options.artim.as_secs_f64()
            ),
        };
        self.rejected(peer, 1, &why, None);
        Ok(())
    }

    /// The association's receive loop: one arm per PDU kind, until release, abort, error or
    /// the idle time without a PDU.
    async fn run_association<S>(
        &self,
        mut assoc: AsyncServerAssociation<S>,
        peer: IpAddr,
        subject: Option<String>,
    ) -> Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let calling = dicom_ul::association::Association::peer_ae_title(&assoc)
            .trim()
            .to_string();
        // An association whose acceptance cannot be audited is aborted before any message.
        if let Err(e) = self.audit(
            json!({"dicom": "association", "peer": peer.to_string(), "calling_ae": calling, "certificate_cn": subject, "result": "accepted"}),
        ) {
            let _ = assoc.abort().await;
            return Err(anyhow!("aborted: the audit log cannot be written ({e})"));
        }
        let contexts = assoc.presentation_contexts().to_vec();
        let mut msg = Incoming::new(self.shared.max_bytes);
        let deadline = tokio::time::Instant::now() + self.options.association_timeout;
        loop {
            let ended = |why: String| json!({"dicom": "association", "peer": peer.to_string(), "calling_ae": calling, "result": "ended", "reason": why});
            let wait = self
                .options
                .idle
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let pdu = match tokio::time::timeout(wait, assoc.receive()).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    let _ = self.audit(ended(e.to_string()));
                    let _ = assoc.abort().await;
                    return Ok(());
                }
                Err(_) => {
                    let why = if tokio::time::Instant::now() >= deadline {
                        let most = self.options.association_timeout.as_secs_f64();
                        format!("held for {most} s, the most an association may last")
                    } else {
                        let idle = self.options.idle.as_secs_f64();
                        format!("no PDU within {idle} s")
                    };
                    let _ = self.audit(ended(why));
                    let _ = assoc.abort().await;
                    return Ok(());
                }
            };
            match pdu {
                Pdu::PData { data } => {
                    for pdv in data {
                        let is_command = pdv.value_type == PDataValueType::Command;
                        let pushed = msg.push(
                            pdv.presentation_context_id,
                            is_command,
                            pdv.is_last,
                            &pdv.data,
                        );
                        let mut message = match pushed {
                            Ok(Some(message)) => message,
                            Ok(None) => continue,
                            // A stream that is not DIMSE: a protocol error, the association
                            // ends (PS3.8 7.3.2: the provider aborts).
                            Err(why) => {
                                let _ = self.audit(ended(why.to_string()));
                                let _ = assoc.abort().await;
                                return Ok(());
                            }
                        };
                        let reply = tokio::task::block_in_place(|| {
                            self.answer(&mut message, &contexts, &calling, peer)
                        });
                        assoc
                            .send(&reply)
                            .await
                            .map_err(|e| anyhow!("answering {calling}: {e}"))?;
                    }
                }
                Pdu::ReleaseRQ => {
                    let _ = assoc.send(&Pdu::ReleaseRP).await;
                    return Ok(());
                }
                Pdu::AbortRQ { .. } => return Ok(()),
                _ => {
                    let _ = assoc.abort().await;
                    return Ok(());
                }
            }
        }
    }

    /// Answers a whole message: its response PDU.
    fn answer(
        &self,
        msg: &mut Message,
        contexts: &[PresentationContextNegotiated],
        calling: &str,
        peer: IpAddr,
    ) -> Pdu {
        let command = msg.command.clone();
        let context_id = msg.context_id;
        match command.field {
            C_ECHO_RQ => {
                let status = match context_for(msg, contexts, &command.class, &[uids::VERIFICATION])
                {
                    Ok(_) => status::SUCCESS,
                    Err(_) => status::SOP_CLASS_NOT_SUPPORTED,
                };
                response(
                    context_id,
                    C_ECHO_RQ | RESPONSE,
                    command.message_id,
                    &command.class,
                    None,
                    status,
                )
            }
            C_STORE_RQ => self.c_store(msg, contexts, calling, peer),
            field => response(
                context_id,
                field | RESPONSE,
                command.message_id,
                &command.class,
                None,
                status::UNRECOGNIZED_OPERATION,
            ),
        }
    }

    /// Answers a complete C-STORE-RQ: the image stored, answered and its results queued, or
    /// refused with a status; audited either way. The C-STORE-RSP.
    fn c_store(
        &self,
        msg: &mut Message,
        contexts: &[PresentationContextNegotiated],
        calling: &str,
        peer: IpAddr,
    ) -> Pdu {
        let (class, instance) = (msg.command.class.clone(), msg.command.instance.clone());
        let message_id = msg.command.message_id;
        let started = Instant::now();
        let received = std::time::SystemTime::now();
        let context = context_for(msg, contexts, &class, STORAGE_CLASSES);
        let outcome = if let Err(why) = &context {
            Err(Status(status::SOP_CLASS_NOT_SUPPORTED, why.clone()))
        } else if msg.data_bytes > self.shared.max_bytes {
            Err(Status(
                status::OUT_OF_RESOURCES,
                format!(
                    "data set of {} MiB; limit {} MiB",
                    msg.data_bytes >> 20,
                    self.shared.max_bytes >> 20
                ),
            ))
        } else {
            let data = std::mem::take(&mut msg.data);
            let ts = context.map(|pc| pc.transfer_syntax.trim_end_matches('\0').to_string());
            self.store(&class, &instance, &ts.unwrap_or_default(), data)
        };
        let (mut status, record, objects) = match outcome {
            Ok(Stored { record, objects }) => (status::SUCCESS, record, objects),
            Err(Status(code, reason)) => (
                code,
                json!({"status": status::hex(code), "error": reason}),
                Vec::new(),
            ),
        };
        let mut line = json!({
            "dicom": "c-store",
            "peer": peer.to_string(),
            "calling_ae": calling,
            "sop_instance_uid_sha256": crate::fsutil::sha256_hex(instance.as_bytes()),
            "input_bytes": msg.data_bytes,
            "seconds": started.elapsed().as_secs_f64(),
            "model": self.shared.producer.model,
            "weights_sha256": self.shared.producer.weights_sha256,
        });
        if let (Some(l), Some(r)) = (line.as_object_mut(), record.as_object()) {
            l.extend(r.clone());
        }
        // The answer waits for its line, as on the HTTP side: an image whose line cannot be
        // written gets 0xA700 (the sender tries again later) and its results are not queued.
        // The results are queued once the line is on disk; if that fails, a second line says
        // so and the image gets 0xA700.
        match audit_line(self.shared.audit.as_ref(), line.clone()) {
            Err(_) => status = status::OUT_OF_RESOURCES,
            Ok(()) if !objects.is_empty() => {
                if let Err(e) = self.outbox.push(&objects, received) {
                    status = status::OUT_OF_RESOURCES;
                    if let Some(l) = line.as_object_mut() {
                        l.insert("status".into(), json!(status::hex(status)));
                        l.insert(
                            "error".into(),
                            json!(format!("queueing the results: {e:#}")),
                        );
                        l.insert("correction".into(), json!(true));
                    }
                    let _ = audit_line(self.shared.audit.as_ref(), line);
                }
            }
            Ok(()) => {}
        }
        response(
            msg.context_id,
            C_STORE_RQ | RESPONSE,
            message_id,
            &class,
            Some(&instance),
            status,
        )
    }

    /// Decodes and answers one received image: the audit record of the answer and the result
    /// objects to queue, or the status to refuse it with.
    fn store(
        &self,
        class: &str,
        instance: &str,
        ts: &str,
        data: Vec<u8>,
    ) -> Result<Stored, Status> {
        // Long on purpose: the checks of one image in their order, each with its status.
        let name = PathBuf::from(format!("C-STORE {}", short_uid(instance)));
        if !self.outbox.has_room(2 * data.len() as u64) {
            return Err(Status(
                status::OUT_OF_RESOURCES,
                "the results queue is full".into(),
            ));
        }
        let part10 = part10(
            class,
            instance,
            ts,
            crate::dicom::IMPLEMENTATION_CLASS_UID,
            &data,
        )
        .map_err(|e| Status(status::CANNOT_UNDERSTAND, e.to_string()))?;
        drop(data);
        // Framing first: dicom-rs reserves what an element's length says before reading it.
        xray_codec::decode::check_dicom(&part10, &name).map_err(|e| {
            let refused = Refused::of(&e.into());
            Status(refused.dicom_status(), refused.reason)
        })?;
        let header = dicom_object::OpenFileOptions::new()
            .read_preamble(dicom_object::file::ReadPreamble::Always)
            .read_until(tags::PIXEL_DATA)
            .from_reader(part10.as_slice())
            .map_err(|e| {
                Status(
                    status::CANNOT_UNDERSTAND,
                    format!("unreadable data set: {e}"),
                )
            })?;
        let in_set = text_or_empty(&header, tags::SOP_CLASS_UID);
        if in_set != class || text_or_empty(&header, tags::SOP_INSTANCE_UID) != instance {
            return Err(Status(
                status::DATA_SET_MISMATCH,
                "the data set's SOP class or instance differs from the command's".into(),
            ));
        }
        let source = Source::of(&header, &name)
            .map_err(|e| Status(status::CANNOT_UNDERSTAND, e.to_string()))?;
        drop(header);
        let (size, channels, max_pixels) = (
            self.shared.size,
            self.shared.channels,
            self.shared.max_pixels,
        );
        let decoders = self.shared.decoders.clone();
        let prepared = self.shared.runtime.block_on(async move {
            let _place = decoders
                .acquire_owned()
                .await
                .map_err(|_| Status(status::OUT_OF_RESOURCES, "stopping".into()))?;
            let image = decode_image_bytes(&part10, &name, max_pixels).map_err(|e| {
                let refused = Refused::of(&e);
                Status(refused.dicom_status(), refused.reason)
            })?;
            Ok::<_, Status>(Prepared {
                preview: Some(preview(&image)),
                pixels: to_model_pixels(image, size, channels),
                name: name.display().to_string(),
            })
        })?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            items: vec![prepared],
            heatmap: true,
            data_uris: false,
            reply,
        };
        // An association waits for its place in the model's queue (the HTTP side is refused
        // instead): the associations are already capped, and a sender would only send again.
        self.shared
            .jobs
            .send(job)
            .map_err(|_| Status(status::OUT_OF_RESOURCES, "the model is not running".into()))?;
        let answer = answer
            .blocking_recv()
            .map_err(|_| Status(status::OUT_OF_RESOURCES, "the model stopped".into()))?
            .map_err(|e| Status(status::OUT_OF_RESOURCES, e))?
            .pop()
            .ok_or_else(|| Status(status::OUT_OF_RESOURCES, "no answer".into()))?;
        let device = crate::dicom::Producer::device_uid(&self.options.ae_title);
        let set = results(
            &source,
            &answer.prediction,
            &self.shared.card,
            answer.overlay.as_ref(),
            &self.shared.producer,
            &self.options.uids,
            &device,
        )
        .map_err(|e| Status(status::OUT_OF_RESOURCES, format!("{e:#}")))?;
        let mut objects = vec![(
            "sr".to_string(),
            encode(set.report).map_err(|e| Status(status::OUT_OF_RESOURCES, format!("{e:#}")))?,
        )];
        if let Some(sc) = set.capture {
            objects.push((
                "sc".to_string(),
                encode(sc).map_err(|e| Status(status::OUT_OF_RESOURCES, format!("{e:#}")))?,
            ));
        }
        let mut record = answer.json.clone();
        if let Some(o) = record.as_object_mut() {
            o.remove("path");
            o.remove("message");
            o.insert("status".into(), json!(status::hex(status::SUCCESS)));
            o.insert("results".into(), json!(objects.len()));
        }
        Ok(Stored { record, objects })
    }
}

/// An image answered: its audit record and the result objects (kind, encoded) to queue.
struct Stored {
    record: Value,
    objects: Vec<(String, Vec<u8>)>,
}

/// The first characters of a UID, for names in messages.
fn short_uid(uid: &str) -> String {
    uid.chars().take(24).collect()
}

/// A text element's value, trimmed; empty when absent.
fn text_or_empty(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    text(obj, tag).unwrap_or_default()
}

/// A DIMSE response PDU (no data set).
fn response(
    context_id: u8,
    field: u16,
    message_id: u16,
    class: &str,
    instance: Option<&str>,
    status: u16,
) -> Pdu {
    let mut elements = vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(class),
        ),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field)),
        DataElement::new(
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            VR::US,
            PrimitiveValue::from(message_id),
        ),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0101u16),
        ),
        DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(status)),
    ];
    if let Some(instance) = instance {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(instance),
        ));
    }
    let cmd = InMemDicomObject::command_from_element_iter(elements);
    Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: context_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: encode_command(&cmd).unwrap_or_default(),
        }],
    }
}

/// The default results queue folder: `$XDG_STATE_HOME/xray/outbox-AE` (else
/// `~/.local/state/xray/outbox-AE`); never a shared temporary folder, so without either
/// variable the operator must name one.
pub fn default_queue_dir(ae_title: &str) -> Result<PathBuf, Error> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| Path::new(&h).join(".local/state"))
        })
        .ok_or_else(|| {
            Error::usage(
                "neither XDG_STATE_HOME nor HOME is set: name the results queue with --results-queue DIR (a folder of this user's, mode 0700)",
            )
        })?;
    Ok(base
        .join("xray")
        .join(format!("outbox-{}", ae_title.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offered_transfer_syntax_is_decodable_in_this_build() {
        // The docs promise these; a build without one of the decoders would negotiate it away.
        assert_eq!(transfer_syntaxes(), CANDIDATE_SYNTAXES);
    }
}
