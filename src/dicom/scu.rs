//! C-STORE as a service class user: sends DICOM files to another node (a PACS) over one
//! association, and reports each file's status. `xray dicom-send` and the result queue of
//! `serve --results-to` use it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{open_file, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};

use super::status;
use crate::error::Error;

/// Another DICOM node: `AE@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its AE title (called AE title of the association).
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Node {
    /// Parses `AE@HOST:PORT` (`flag` names the option in the usage error).
    pub fn parse(text: &str, flag: &str) -> Result<Node> {
        let bad = || {
            Error::usage(format!(
                "{flag} {text}: expected AE@HOST:PORT (for example ORTHANC@pacs.example:4242)"
            ))
        };
        let (ae, addr) = text.split_once('@').ok_or_else(bad)?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        check_ae_title(ae, flag)?;
        if host.is_empty() {
            return Err(bad().into());
        }
        Ok(Node {
            ae_title: ae.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.ae_title, self.address())
    }
}

/// An AE title: 1 to 16 characters of printable ASCII other than backslash, not all spaces
/// (PS3.5 6.2), else a usage error naming `flag`.
pub fn check_ae_title(ae: &str, flag: &str) -> Result<()> {
    let ok = !ae.trim().is_empty()
        && ae.len() <= 16
        && ae.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{flag} {ae:?}: an AE title is 1 to 16 printable ASCII characters without backslash"
        ))
        .into())
    }
}

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The peer stored it (status 0x0000, or a warning 0xB000-0xBFFF).
    Stored,
    /// The peer refused it with this status (DIMSE, or HTTP for STOW-RS).
    Refused(u16),
    /// Not sent this time (the peer stopped answering): try again later.
    Later,
}

/// The C-STORE-RQ command set.
fn store_command(message_id: u16, sop_class: &str, sop_instance: &str) -> InMemDicomObject {
    InMemDicomObject::command_from_element_iter([
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class),
        ),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(0x0001u16)),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(message_id)),
        DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0000u16),
        ),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop_instance),
        ),
    ])
}

/// A command set encoded in implicit VR little endian, as DIMSE commands are.
pub fn encode_command(cmd: &InMemDicomObject) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(160);
    cmd.write_dataset_with_ts(&mut out, &implicit_le())
        .context("encoding a DIMSE command")?;
    Ok(out)
}

/// Implicit VR little endian.
pub fn implicit_le() -> dicom_encoding::TransferSyntax {
    dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()
}

/// The transfer syntax of `uid`, if this build knows it.
fn syntax(uid: &str) -> Option<&'static dicom_encoding::TransferSyntax> {
    use dicom_encoding::TransferSyntaxIndex;
    TransferSyntaxRegistry.get(uid.trim_end_matches('\0'))
}

/// Sends `files` to `to` as `calling_ae` over one association, each in the transfer syntax
/// the peer accepts (the file's own, else explicit or implicit VR little endian). Fails as a
/// whole when the peer cannot be reached or the association is refused; otherwise one
/// [`Sent`] per file, in order.
pub fn store(
    files: &[PathBuf],
    to: &Node,
    calling_ae: &str,
    timeout: Duration,
) -> Result<Vec<Sent>> {
    // Long on purpose: association set-up, then one command and data set per file, then the
    // release, each step with its own error message.
    let objects = files
        .iter()
        .map(|p| open_file(p).map_err(|e| anyhow!("{}: unreadable DICOM: {e}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling_ae)
        .called_ae_title(&to.ae_title)
        .connection_timeout(timeout)
        .read_timeout(timeout)
        .write_timeout(timeout);
    let mut classes: Vec<(String, String)> = Vec::new();
    for obj in &objects {
        let meta = obj.meta();
        let key = (
            meta.media_storage_sop_class_uid().to_string(),
            meta.transfer_syntax().trim_end_matches('\0').to_string(),
        );
        if !classes.contains(&key) {
            classes.push(key);
        }
    }
    for (class, ts) in &classes {
        let mut syntaxes = vec![ts.clone()];
        for alt in [
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
        ] {
            if !syntaxes.iter().any(|s| s == alt) {
                syntaxes.push(alt.to_string());
            }
        }
        options = options.with_presentation_context(class.clone(), syntaxes);
    }
    let mut assoc = options
        .establish_with(&format!("{}@{}", to.ae_title, to.address()))
        .map_err(|e| anyhow!("cannot associate with {to}: {e}"))?;
    let mut results = Vec::with_capacity(objects.len());
    for (i, obj) in objects.iter().enumerate() {
        let meta = obj.meta();
        let class = meta.media_storage_sop_class_uid().trim_end_matches('\0');
        let instance = meta.media_storage_sop_instance_uid().trim_end_matches('\0');
        let pc = assoc
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.abstract_syntax.trim_end_matches('\0') == class
                    && pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance
            })
            .cloned();
        let Some(pc) = pc else {
            results.push(Sent::Refused(status::SOP_CLASS_NOT_SUPPORTED));
            continue;
        };
        let ts = syntax(&pc.transfer_syntax).ok_or_else(|| {
            anyhow!(
                "{to} chose an unknown transfer syntax {}",
                pc.transfer_syntax
            )
        })?;
        let message_id = (i % 0xffff + 1) as u16;
        let cmd = encode_command(&store_command(message_id, class, instance))?;
        let mut data = Vec::new();
        obj.write_dataset_with_ts(&mut data, ts)
            .with_context(|| format!("encoding {}", files[i].display()))?;
        assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc.id,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: cmd,
                }],
            })
            .map_err(|e| anyhow!("sending to {to}: {e}"))?;
        {
            let mut writer = assoc.send_pdata(pc.id);
            writer
                .write_all(&data)
                .and_then(|()| writer.finish())
                .map_err(|e| anyhow!("sending to {to}: {e}"))?;
        }
        let status = response_status(&mut assoc).with_context(|| format!("the answer of {to}"))?;
        results.push(if status::is_stored(status) {
            Sent::Stored
        } else {
            Sent::Refused(status)
        });
    }
    let _ = assoc.release();
    Ok(results)
}

/// The Status of the next DIMSE response on `assoc`.
fn response_status<S: std::io::Read + std::io::Write + dicom_ul::association::CloseSocket>(
    assoc: &mut dicom_ul::association::client::ClientAssociation<S>,
) -> Result<u16> {
    let mut command = Vec::new();
    loop {
        match assoc.receive().map_err(|e| anyhow!("{e}"))? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type == PDataValueType::Command {
                        command.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            let cmd = InMemDicomObject::read_dataset_with_ts(
                                command.as_slice(),
                                &implicit_le(),
                            )
                            .context("an unreadable command")?;
                            return cmd
                                .element(tags::STATUS)
                                .ok()
                                .and_then(|e| e.to_int::<u16>().ok())
                                .ok_or_else(|| anyhow!("a response without Status"));
                        }
                    }
                }
            }
            Pdu::AbortRQ { source } => bail!("the association was aborted ({source:?})"),
            other => bail!("an unexpected {other:?}"),
        }
    }
}

/// The DICOM files under `dir` (walked as `predict` walks folders, sorted), for
/// `xray dicom-send`.
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    if !dir.is_dir() {
        return Err(Error::usage(format!("{}: no such file or folder", dir.display())).into());
    }
    let mut out = Vec::new();
    crate::data::scan::walk_files(dir, &mut out)?;
    out.retain(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm")));
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_parse_and_bad_ones_are_usage_errors() {
        let n = Node::parse("ORTHANC@pacs.example:4242", "--results-to").unwrap();
        assert_eq!(
            n,
            Node {
                ae_title: "ORTHANC".into(),
                host: "pacs.example".into(),
                port: 4242
            }
        );
        assert_eq!(n.address(), "pacs.example:4242");
        let v6 = Node::parse("PACS@[::1]:104", "--to").unwrap();
        assert_eq!(v6.address(), "[::1]:104");
        for bad in [
            "pacs:4242",
            "PACS@host",
            "PACS@host:x",
            "@host:1",
            "A\\B@h:1",
            "ABCDEFGHIJKLMNOPQ@h:1",
        ] {
            let e = Node::parse(bad, "--to").unwrap_err();
            assert!(e.to_string().contains("--to"), "{bad}: {e}");
        }
    }
}
