//! DIMSE messages as they arrive over P-DATA (PS3.8 9.3.5, PS3.7 6.3.1): fragments of a
//! command set, then fragments of its data set, each fragment naming its presentation
//! context. [`Incoming`] puts a message together within fixed bounds (64 KiB of command, the
//! caller's bound of data set: beyond it the rest is counted and dropped), and
//! [`Command::parse`] reads the few command fields a storage SCP answers from.

use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// The transfer syntaxes a storage SCP built on this crate offers, in order of preference:
/// explicit and implicit VR little endian, deflated, JPEG baseline, extended and lossless,
/// RLE (what the decoders here read; JPEG 2000 and JPEG-LS need C libraries xray does not
/// link).
pub const TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.5",
];

/// Largest command set accepted (a C-STORE-RQ is about 200 bytes).
pub const MAX_COMMAND_BYTES: usize = 64 << 10;

/// The Command Data Set Type that says no data set follows.
const NO_DATA_SET: u16 = 0x0101;

/// One message being received: its command, then its data set.
#[derive(Debug, Default)]
pub struct Incoming {
    command: Vec<u8>,
    command_done: bool,
    data: Vec<u8>,
    data_bytes: usize,
    data_done: bool,
    context_id: Option<u8>,
    mixed_contexts: bool,
    max_data: usize,
}

/// A whole message.
#[derive(Debug)]
pub struct Message {
    /// Its command.
    pub command: Command,
    /// Its data set as received, when it had one within the bound.
    pub data: Vec<u8>,
    /// The data set's size as sent (more than `data` holds when it passed the bound).
    pub data_bytes: usize,
    /// The presentation context of its first fragment.
    pub context_id: u8,
    /// Whether a later fragment named another presentation context.
    pub mixed_contexts: bool,
}

/// The fields of a command set a storage SCP answers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Command Field (0x0001 C-STORE-RQ, 0x0030 C-ECHO-RQ, ...).
    pub field: u16,
    /// Message ID, echoed in the response (0 when absent).
    pub message_id: u16,
    /// Affected SOP Class UID (empty when absent).
    pub class: String,
    /// Affected SOP Instance UID (empty when absent).
    pub instance: String,
    /// Whether a data set follows.
    pub has_data: bool,
}

/// Why a message cannot be understood: the association is aborted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

impl Command {
    /// Reads a command set (implicit VR little endian, PS3.7 E.1).
    pub fn parse(bytes: &[u8]) -> Result<Command, Unreadable> {
        // Its declared lengths first: the parser reserves what a length says (a 64 KiB
        // command whose element declared 2.7 GB: found by fuzzing).
        let implicit = crate::elements::Encoding {
            implicit: true,
            big_endian: false,
        };
        crate::elements::check_lengths(bytes, implicit, false)
            .map_err(|why| Unreadable(format!("unreadable command set: {why}")))?;
        let syntax = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let obj = InMemDicomObject::read_dataset_with_ts(bytes, &syntax)
            .map_err(|e| Unreadable(format!("unreadable command set: {e}")))?;
        let int = |tag| obj.element(tag).ok().and_then(|e| e.to_int::<u16>().ok());
        let text = |tag| {
            obj.element(tag)
                .ok()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
                .unwrap_or_default()
        };
        Ok(Command {
            field: int(tags::COMMAND_FIELD)
                .ok_or_else(|| Unreadable("a command set without Command Field".into()))?,
            message_id: int(tags::MESSAGE_ID).unwrap_or(0),
            class: text(tags::AFFECTED_SOP_CLASS_UID),
            instance: text(tags::AFFECTED_SOP_INSTANCE_UID),
            has_data: int(tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET),
        })
    }
}

impl Incoming {
    /// A message of at most `max_data` bytes of data set (more is counted, not kept).
    pub fn new(max_data: usize) -> Incoming {
        Incoming {
            max_data,
            ..Incoming::default()
        }
    }

    /// Adds one fragment (a PDV: its context, command or data, last or not). The message
    /// when it is whole (and this accumulator starts the next), `None` while more is due, or
    /// why it cannot be understood.
    pub fn push(
        &mut self,
        context_id: u8,
        is_command: bool,
        is_last: bool,
        bytes: &[u8],
    ) -> Result<Option<Message>, Unreadable> {
        match self.context_id {
            None => self.context_id = Some(context_id),
            Some(id) if id != context_id => self.mixed_contexts = true,
            Some(_) => {}
        }
        if is_command {
            if self.command_done {
                return Err(Unreadable(
                    "a command fragment after the command set's last".into(),
                ));
            }
            if self.command.len() + bytes.len() > MAX_COMMAND_BYTES {
                return Err(Unreadable(format!(
                    "a command set over {} KiB",
                    MAX_COMMAND_BYTES >> 10
                )));
            }
            self.command.extend_from_slice(bytes);
            self.command_done = is_last;
        } else {
            if !self.command_done {
                return Err(Unreadable(
                    "data set fragments before the command set".into(),
                ));
            }
            self.data_bytes = self.data_bytes.saturating_add(bytes.len());
            if self.data_bytes <= self.max_data {
                self.data.extend_from_slice(bytes);
            } else {
                self.data = Vec::new();
            }
            self.data_done = is_last;
        }
        if !self.command_done {
            return Ok(None);
        }
        let command = Command::parse(&self.command)?;
        if command.has_data && !self.data_done {
            return Ok(None);
        }
        let done = std::mem::replace(self, Incoming::new(self.max_data));
        Ok(Some(Message {
            command,
            data: done.data,
            data_bytes: done.data_bytes,
            context_id: done.context_id.unwrap_or(0),
            mixed_contexts: done.mixed_contexts,
        }))
    }
}

/// A received data set made into a DICOM Part 10 file in memory (preamble, file meta group
/// with `implementation` as its class UID, the data set as received), which the decoder reads.
pub fn part10(
    class: &str,
    instance: &str,
    syntax: &str,
    implementation: &str,
    data: &[u8],
) -> Result<Vec<u8>, Unreadable> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(instance)
        .transfer_syntax(syntax)
        .implementation_class_uid(implementation)
        .build()
        .map_err(|e| Unreadable(format!("file meta group: {e}")))?;
    let mut out = Vec::with_capacity(data.len() + 512);
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    meta.write(&mut out)
        .map_err(|e| Unreadable(format!("file meta group: {e}")))?;
    out.extend_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An implicit VR little endian element.
    fn element(group: u16, elem: u16, value: &[u8]) -> Vec<u8> {
        let mut v = group.to_le_bytes().to_vec();
        v.extend_from_slice(&elem.to_le_bytes());
        v.extend_from_slice(&(value.len() as u32).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    fn c_store_rq() -> Vec<u8> {
        let mut v = element(0, 0x0002, b"1.2.840.10008.5.1.4.1.1.7\0");
        v.extend(element(0, 0x0100, &1u16.to_le_bytes()));
        v.extend(element(0, 0x0110, &7u16.to_le_bytes()));
        v.extend(element(0, 0x0800, &0u16.to_le_bytes()));
        v.extend(element(0, 0x1000, b"1.2.3.4\0"));
        v
    }

    #[test]
    fn a_message_is_put_together_from_its_fragments() {
        let mut incoming = Incoming::new(10);
        let cmd = c_store_rq();
        assert!(incoming.push(3, true, false, &cmd[..20]).unwrap().is_none());
        assert!(incoming.push(3, true, true, &cmd[20..]).unwrap().is_none());
        assert!(incoming.push(3, false, false, b"abcd").unwrap().is_none());
        let m = incoming.push(3, false, true, b"efgh").unwrap().unwrap();
        assert_eq!(m.command.field, 1);
        assert_eq!(m.command.message_id, 7);
        assert_eq!(m.command.instance, "1.2.3.4");
        assert_eq!((m.data.as_slice(), m.data_bytes), (&b"abcdefgh"[..], 8));
        assert!(!m.mixed_contexts);
        // Past the bound: counted, not kept; a fragment on another context is marked.
        incoming.push(3, true, true, &cmd).unwrap();
        incoming.push(5, false, false, b"abcdefgh").unwrap();
        let m = incoming.push(3, false, true, b"ijkl").unwrap().unwrap();
        assert_eq!((m.data.len(), m.data_bytes), (0, 12));
        assert!(m.mixed_contexts);
    }

    #[test]
    fn malformed_streams_are_refused_not_accumulated() {
        let mut incoming = Incoming::new(10);
        assert!(incoming.push(1, false, true, b"data first").is_err());
        let mut incoming = Incoming::new(10);
        assert!(incoming.push(1, true, true, b"\x00\x00").is_err());
        let mut incoming = Incoming::new(10);
        let huge = vec![0u8; MAX_COMMAND_BYTES + 1];
        assert!(incoming.push(1, true, false, &huge).is_err());
        // An element declaring 2.7 GB in a 12-byte command set.
        let mut liar = element(0, 0x0002, b"");
        liar[4..8].copy_from_slice(&2_711_526_296u32.to_le_bytes());
        liar.extend_from_slice(&[0; 4]);
        let e = Command::parse(&liar).unwrap_err();
        assert!(e.0.contains("declares"), "{e}");
    }
}
