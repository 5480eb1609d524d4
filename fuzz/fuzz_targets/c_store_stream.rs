//! What a DICOM peer sends once associated: upper layer PDUs (read by dicom-ul's reader, as
//! the node does, strict at 64 KiB), P-DATA fragments put together into DIMSE messages, and
//! each C-STORE's data set made into a Part 10 file and decoded. The first byte chooses the
//! presentation context's transfer syntax. Any answer is fine but a panic or a decoder fault.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xray_codec::decode::decode_image_bytes;
use xray_codec::dimse::{part10, Incoming};
use xray_codec::ImageFault;

/// The transfer syntaxes the node accepts.
const SYNTAXES: &[&str] = xray_codec::dimse::TRANSFER_SYNTAXES;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut stream)) = data.split_first() else {
        return;
    };
    let syntax = SYNTAXES[pick as usize % SYNTAXES.len()];
    let mut incoming = Incoming::new(1 << 20);
    while let Ok(Some(pdu)) = dicom_ul::pdu::read_pdu(&mut stream, 64 << 10, true) {
        let dicom_ul::Pdu::PData { data } = pdu else {
            continue;
        };
        for pdv in data {
            let is_command = pdv.value_type == dicom_ul::pdu::PDataValueType::Command;
            let message =
                match incoming.push(pdv.presentation_context_id, is_command, pdv.is_last, &pdv.data) {
                    Ok(Some(message)) => message,
                    Ok(None) => continue,
                    Err(_) => return,
                };
            if message.command.field != 0x0001 || message.data.is_empty() {
                continue;
            }
            let c = &message.command;
            let Ok(file) = part10(&c.class, &c.instance, syntax, "1.2.3", &message.data) else {
                continue;
            };
            if let Err(e) = decode_image_bytes(&file, std::path::Path::new("fuzz"), 4_000_000) {
                assert!(e.kind != ImageFault::DecoderFault, "{e}");
            }
        }
    }
});
