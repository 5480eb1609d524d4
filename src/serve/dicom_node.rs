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
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, PDataValue, PDataValueType, Pdu,
    UserIdentity,
};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::audit::AuditLog;
use super::worker::{Job, Prepared};
use crate::data::decode::{decode_image_bytes, to_model_pixels};
use crate::dicom::outbox::{Delivery, Destination, Outbox};
use crate::dicom::scu::{encode_command, implicit_le};
use crate::dicom::uid::UidRoot;
use crate::dicom::{encode, results, text, Producer, Source};
use crate::error::Error;
use crate::explain::overlay::preview;

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
const CANDIDATE_SYNTAXES: &[&str] = &[
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
    uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    uids::JPEG_BASELINE8_BIT,
    uids::JPEG_EXTENDED12_BIT,
    uids::JPEG_LOSSLESS,
    uids::JPEG_LOSSLESS_SV1,
    uids::RLE_LOSSLESS,
];

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

/// Largest command set accepted (a C-STORE-RQ is about 200 bytes).
const MAX_COMMAND_BYTES: usize = 64 << 10;

/// Largest PDU we receive (the peer splits larger data sets).
const MAX_PDU_BYTES: u32 = 64 << 10;

/// One entry of `--dicom-allow`: a calling AE title and the host it must come from.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// The calling AE title.
    pub ae_title: String,
    /// The addresses the host name resolved to at start (any, for `*`).
    pub hosts: Option<Vec<IpAddr>>,
    /// As given, for messages.
    pub text: String,
}

impl Allowed {
    /// Parses `AE@HOST` (`AE@*`: from any host), resolving HOST now.
    pub fn parse(text: &str) -> Result<Allowed> {
        let bad = || {
            Error::usage(format!(
                "--dicom-allow {text}: expected AE@HOST (for example PACS@10.0.0.5, or PACS@* for any host)"
            ))
        };
        let (ae, host) = text.split_once('@').ok_or_else(bad)?;
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
    /// Its size bound in bytes.
    pub queue_bytes: u64,
    /// Root of new UIDs.
    pub uids: UidRoot,
    /// Associations held at once.
    pub max_associations: usize,
    /// Time for the A-ASSOCIATE-RQ to arrive (DICOM's ARTIM timer).
    pub artim: Duration,
    /// Most time between two PDUs of an association.
    pub idle: Duration,
    /// Time for each step of sending the results.
    pub send_timeout: Duration,
    /// `--dicom-tls`: TLS on the node's port, with the certificate of `--tls-cert`.
    pub want_tls: bool,
    /// That certificate, once loaded (set by [`super::serve`]).
    pub tls: Option<axum_server::tls_rustls::RustlsConfig>,
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
}

/// A running node: its address and the results sender.
pub struct Running {
    /// Where it listens.
    pub local: SocketAddr,
    /// The results queue.
    pub outbox: Arc<Outbox>,
}

/// The access rule of one connection: our AE title, and the allow list against this peer.
struct Gate<'a> {
    allow: &'a [Allowed],
    peer: IpAddr,
}

impl AccessControl for Gate<'_> {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let calling = calling_ae_title.trim();
        let allowed = if self.allow.is_empty() {
            self.peer.is_loopback()
        } else {
            self.allow.iter().any(|a| {
                a.ae_title == calling && a.hosts.as_ref().is_none_or(|h| h.contains(&self.peer))
            })
        };
        if allowed {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// Binds `options.addr`, starts the results sender and the listener (a task on the current
/// Tokio runtime: call it from within one); prints nothing.
pub fn start(options: NodeOptions, shared: Shared) -> Result<Running> {
    let listener = TcpListener::bind(&options.addr)
        .map_err(|e| Error::usage(format!("--dicom-addr {}: cannot listen: {e}", options.addr)))?;
    let local = listener.local_addr()?;
    let outbox = Arc::new(Outbox::open(&options.queue_dir, options.queue_bytes)?);
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
            };
            if result != "stored" {
                tracing::warn!("dicom: results to {to}: {result} {extra}");
            }
            // The queue file's name: time of receipt, index and kind; nothing of the patient.
            let file = file.and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
            audit_line(
                audit.as_ref(),
                json!({"dicom": "results-sent", "to": to.to_string(), "result": result, "detail": extra, "file": file}),
            );
        },
    )?;
    let node = Arc::new(NodeState {
        options,
        shared,
        outbox: outbox.clone(),
        active: AtomicUsize::new(0),
        syntaxes: transfer_syntaxes(),
    });
    // One task a connection on the server's runtime: negotiation and messages are async;
    // decoding, waiting for the model and writing the queue run in place of a worker
    // (block_in_place), as the HTTP side runs them on blocking threads.
    listener
        .set_nonblocking(true)
        .context("the DICOM listener")?;
    let listener = tokio::net::TcpListener::from_std(listener).context("the DICOM listener")?;
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
            let node = node.clone();
            tokio::spawn(async move { node.association(stream, peer.ip()).await });
        }
    });
    Ok(Running { local, outbox })
}

/// Writes one audit line (the writer stamps its time) and waits until it is on disk; a line
/// the writer is too far behind to take is dropped, the DICOM side answering with its status.
fn audit_line(audit: Option<&AuditLog>, record: Value) {
    let Some(audit) = audit else { return };
    if let Ok(written) = audit.submit(&[record]) {
        let _ = written.blocking_recv();
    }
}

struct NodeState {
    options: NodeOptions,
    shared: Shared,
    outbox: Arc<Outbox>,
    active: AtomicUsize,
    syntaxes: Vec<&'static str>,
}

/// One message being received: its command, then its data set.
#[derive(Default)]
struct Incoming {
    command: Vec<u8>,
    command_done: bool,
    data: Vec<u8>,
    data_bytes: usize,
    data_done: bool,
    context_id: u8,
}

/// A C-STORE status and why.
struct Status(u16, String);

impl NodeState {
    /// Writes an audit line from async code (the writer's acknowledgement is waited for in
    /// place of a worker).
    fn audit(&self, line: Value) {
        tokio::task::block_in_place(|| audit_line(self.shared.audit.as_ref(), line));
    }

    /// Serves one connection: the association, its messages, the release.
    async fn association(self: Arc<Self>, stream: tokio::net::TcpStream, peer: IpAddr) {
        let n = self.active.fetch_add(1, Ordering::SeqCst);
        if n >= self.options.max_associations {
            self.reject_busy(stream, peer).await;
        } else if let Err(e) = self.serve_association(stream, peer).await {
            tracing::warn!("dicom: association from {peer}: {e:#}");
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// Reads the request (within the ARTIM time) and rejects it: transient, local limit
    /// exceeded.
    async fn reject_busy(&self, mut stream: tokio::net::TcpStream, peer: IpAddr) {
        use tokio::io::AsyncWriteExt;
        let mut buf = bytes::BytesMut::new();
        let read = dicom_ul::association::read_pdu_from_wire_async(
            &mut stream,
            &mut buf,
            MAX_PDU_BYTES,
            false,
        );
        let _ = tokio::time::timeout(self.options.artim, read).await;
        let pdu = Pdu::AssociationRJ(AssociationRJ {
            result: AssociationRJResult::Transient,
            source: AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            ),
        });
        let mut out = Vec::new();
        if dicom_ul::pdu::write_pdu(&mut out, &pdu).is_ok() {
            let _ = tokio::time::timeout(self.options.idle, stream.write_all(&out)).await;
        }
        self.audit(
            json!({"dicom": "association", "peer": peer.to_string(), "result": "rejected", "reason": "too many associations"}),
        );
    }

    /// Negotiates the association (over TLS with `--dicom-tls`) within the ARTIM time, then
    /// serves it.
    async fn serve_association(&self, stream: tokio::net::TcpStream, peer: IpAddr) -> Result<()> {
        let gate = Gate {
            allow: &self.options.allow,
            peer,
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
        let artim = self.options.artim;
        let refused = |why: String| {
            self.audit(
                json!({"dicom": "association", "peer": peer.to_string(), "result": "rejected", "reason": why}),
            );
            Ok(())
        };
        let late = || format!("no association request within {} s", artim.as_secs_f64());
        match &self.options.tls {
            // The current certificate: renewed ones apply to the next association.
            Some(tls) => {
                let options = options.tls_config(tls.get_inner());
                match tokio::time::timeout(artim, options.establish_tls_async(stream)).await {
                    Ok(Ok(assoc)) => self.run_association(assoc, peer).await,
                    Ok(Err(e)) => refused(e.to_string()),
                    Err(_) => refused(late()),
                }
            }
            None => match tokio::time::timeout(artim, options.establish_async(stream)).await {
                Ok(Ok(assoc)) => self.run_association(assoc, peer).await,
                Ok(Err(e)) => refused(e.to_string()),
                Err(_) => refused(late()),
            },
        }
    }

    /// The association's receive loop: one arm per PDU kind, until release, abort, error or
    /// the idle time without a PDU.
    async fn run_association<S>(
        &self,
        mut assoc: dicom_ul::association::server::AsyncServerAssociation<S>,
        peer: IpAddr,
    ) -> Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let calling = dicom_ul::association::Association::peer_ae_title(&assoc)
            .trim()
            .to_string();
        self.audit(
            json!({"dicom": "association", "peer": peer.to_string(), "calling_ae": calling, "result": "accepted"}),
        );
        let contexts = assoc.presentation_contexts().to_vec();
        let mut msg = Incoming::default();
        loop {
            let ended = |why: String| json!({"dicom": "association", "peer": peer.to_string(), "calling_ae": calling, "result": "ended", "reason": why});
            let pdu = match tokio::time::timeout(self.options.idle, assoc.receive()).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    self.audit(ended(e.to_string()));
                    let _ = assoc.abort().await;
                    return Ok(());
                }
                Err(_) => {
                    let idle = self.options.idle.as_secs_f64();
                    self.audit(ended(format!("no PDU within {idle} s")));
                    let _ = assoc.abort().await;
                    return Ok(());
                }
            };
            match pdu {
                Pdu::PData { data } => {
                    for pdv in data {
                        let reply = tokio::task::block_in_place(|| {
                            self.take(&mut msg, pdv, &contexts, &calling, peer)
                        });
                        if let Some(reply) = reply {
                            assoc
                                .send(&reply)
                                .await
                                .map_err(|e| anyhow!("answering {calling}: {e}"))?;
                            msg = Incoming::default();
                        }
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

    /// Adds a PDV to the message; when the message is complete, handles it and returns the
    /// response PDU.
    fn take(
        &self,
        msg: &mut Incoming,
        pdv: PDataValue,
        contexts: &[dicom_ul::pdu::PresentationContextNegotiated],
        calling: &str,
        peer: IpAddr,
    ) -> Option<Pdu> {
        msg.context_id = pdv.presentation_context_id;
        match pdv.value_type {
            PDataValueType::Command => {
                if msg.command.len() + pdv.data.len() <= MAX_COMMAND_BYTES {
                    msg.command.extend_from_slice(&pdv.data);
                }
                msg.command_done = pdv.is_last;
            }
            PDataValueType::Data => {
                msg.data_bytes += pdv.data.len();
                if msg.data_bytes <= self.shared.max_bytes {
                    msg.data.extend_from_slice(&pdv.data);
                } else {
                    msg.data = Vec::new();
                }
                msg.data_done = pdv.is_last;
                if !pdv.is_last {
                    return None;
                }
            }
        }
        if !msg.command_done {
            return None;
        }
        let command =
            InMemDicomObject::read_dataset_with_ts(msg.command.as_slice(), &implicit_le()).ok()?;
        let field = command
            .element(tags::COMMAND_FIELD)
            .ok()
            .and_then(|e| e.to_int::<u16>().ok())?;
        let has_data = command
            .element(tags::COMMAND_DATA_SET_TYPE)
            .ok()
            .and_then(|e| e.to_int::<u16>().ok())
            .is_some_and(|t| t != 0x0101);
        if has_data && !msg.data_done {
            return None; // the data set follows
        }
        let message_id = command
            .element(tags::MESSAGE_ID)
            .ok()
            .and_then(|e| e.to_int::<u16>().ok())
            .unwrap_or(0);
        let class = text_or_empty(&command, tags::AFFECTED_SOP_CLASS_UID);
        match field {
            0x0030 => Some(response(
                msg.context_id,
                0x8030,
                message_id,
                &class,
                None,
                0,
            )),
            0x0001 => Some(self.c_store(msg, &command, message_id, contexts, calling, peer)),
            _ => Some(response(
                msg.context_id,
                field | 0x8000,
                message_id,
                &class,
                None,
                0x0211,
            )),
        }
    }

    /// Answers a complete C-STORE-RQ: the image stored, answered and its results queued, or
    /// refused with a status; audited either way. The C-STORE-RSP.
    fn c_store(
        &self,
        msg: &mut Incoming,
        command: &InMemDicomObject,
        message_id: u16,
        contexts: &[dicom_ul::pdu::PresentationContextNegotiated],
        calling: &str,
        peer: IpAddr,
    ) -> Pdu {
        let class = text_or_empty(command, tags::AFFECTED_SOP_CLASS_UID);
        let instance = text_or_empty(command, tags::AFFECTED_SOP_INSTANCE_UID);
        let started = Instant::now();
        let received = std::time::SystemTime::now();
        let ts = contexts
            .iter()
            .find(|pc| pc.id == msg.context_id)
            .map(|pc| pc.transfer_syntax.trim_end_matches('\0').to_string())
            .unwrap_or_default();
        let outcome = if msg.data_bytes > self.shared.max_bytes {
            Err(Status(
                0xA700,
                format!(
                    "data set of {} MiB; limit {} MiB",
                    msg.data_bytes >> 20,
                    self.shared.max_bytes >> 20
                ),
            ))
        } else {
            let data = std::mem::take(&mut msg.data);
            self.store(&class, &instance, &ts, data, received)
        };
        let (status, record) = match outcome {
            Ok(record) => (0u16, record),
            Err(Status(status, reason)) => (
                status,
                json!({"status": format!("0x{status:04X}"), "error": reason}),
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
        audit_line(self.shared.audit.as_ref(), line);
        response(
            msg.context_id,
            0x8001,
            message_id,
            &class,
            Some(&instance),
            status,
        )
    }

    /// Decodes, answers and queues the results of one received image; the audit record of the
    /// answer, or the status to refuse it with.
    fn store(
        &self,
        class: &str,
        instance: &str,
        ts: &str,
        data: Vec<u8>,
        received: std::time::SystemTime,
    ) -> Result<Value, Status> {
        // Long on purpose: the checks of one image in their order, each with its status.
        let name = PathBuf::from(format!("C-STORE {}", short_uid(instance)));
        if !self.outbox.has_room(2 * data.len() as u64) {
            return Err(Status(0xA700, "the results queue is full".into()));
        }
        let part10 =
            part10(class, instance, ts, &data).map_err(|e| Status(0xC000, format!("{e:#}")))?;
        drop(data);
        let header = dicom_object::OpenFileOptions::new()
            .read_preamble(dicom_object::file::ReadPreamble::Always)
            .read_until(tags::PIXEL_DATA)
            .from_reader(part10.as_slice())
            .map_err(|e| Status(0xC000, format!("unreadable data set: {e}")))?;
        let in_set = text_or_empty(&header, tags::SOP_CLASS_UID);
        if in_set != class || text_or_empty(&header, tags::SOP_INSTANCE_UID) != instance {
            return Err(Status(
                0xA900,
                "the data set's SOP class or instance differs from the command's".into(),
            ));
        }
        let source = Source::of(&header, &name).map_err(|e| Status(0xC000, e.to_string()))?;
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
                .map_err(|_| Status(0xA700, "stopping".into()))?;
            let image = decode_image_bytes(&part10, &name, max_pixels).map_err(|e| {
                let reason = match &e {
                    Error::Image { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                let status = if reason.contains("too large") {
                    0xA700
                } else {
                    0xC000
                };
                Status(status, reason)
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
            .map_err(|_| Status(0xA700, "the model is not running".into()))?;
        let answer = answer
            .blocking_recv()
            .map_err(|_| Status(0xA700, "the model stopped".into()))?
            .map_err(|e| Status(0xA700, e))?
            .pop()
            .ok_or_else(|| Status(0xA700, "no answer".into()))?;
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
        .map_err(|e| Status(0xA700, format!("{e:#}")))?;
        let mut objects = vec![(
            "sr".to_string(),
            encode(set.report).map_err(|e| Status(0xA700, format!("{e:#}")))?,
        )];
        if let Some(sc) = set.capture {
            objects.push((
                "sc".to_string(),
                encode(sc).map_err(|e| Status(0xA700, format!("{e:#}")))?,
            ));
        }
        self.outbox
            .push(&objects, received)
            .map_err(|e| Status(0xA700, format!("{e:#}")))?;
        let mut record = answer.json.clone();
        if let Some(o) = record.as_object_mut() {
            o.remove("path");
            o.remove("message");
            o.insert("status".into(), json!("0x0000"));
            o.insert("results".into(), json!(objects.len()));
        }
        Ok(record)
    }
}

/// The first characters of a UID, for names in messages.
fn short_uid(uid: &str) -> String {
    uid.chars().take(24).collect()
}

/// A text element's value, trimmed; empty when absent.
fn text_or_empty(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    text(obj, tag).unwrap_or_default()
}

/// A received data set made into a Part 10 file in memory (preamble, file meta, data set as
/// received), which the decoder reads.
fn part10(class: &str, instance: &str, ts: &str, data: &[u8]) -> Result<Vec<u8>> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(instance)
        .transfer_syntax(ts)
        .implementation_class_uid(crate::dicom::IMPLEMENTATION_CLASS_UID)
        .build()
        .context("file meta group")?;
    let mut out = Vec::with_capacity(data.len() + 512);
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).context("file meta group")?;
    out.extend_from_slice(data);
    Ok(out)
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
/// `~/.local/state/xray/outbox-AE`).
pub fn default_queue_dir(ae_title: &str) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("xray")
        .join(format!("outbox-{}", ae_title.trim()))
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
