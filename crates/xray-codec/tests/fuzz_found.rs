//! The inputs the fuzz targets of `fuzz/` found, each a crash once: now refused with a reason,
//! without the allocation they asked for.

use std::path::Path;

use xray_codec::decode::decode_image_bytes;
use xray_codec::ImageFault;

fn refused(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_found")
        .join(file);
    let bytes = std::fs::read(&path).unwrap();
    let e = decode_image_bytes(&bytes, &path, 4_000_000).unwrap_err();
    assert_eq!(e.kind, ImageFault::Corrupt, "{e}");
    e.reason
}

#[test]
fn a_data_set_element_declaring_3_6_gb_in_a_4_kb_file_is_refused_from_its_header() {
    // dicom-parser reserved the declared 3,621,048,782 bytes before reading them.
    let why = refused("oom-data-set-length.dcm");
    assert!(why.contains("declares") && why.contains("remain"), "{why}");
}

#[test]
fn a_file_meta_element_declaring_3_8_gb_is_refused_from_its_header() {
    // dicom-object's file meta reader reserved the declared 3,818,688,118 bytes.
    let why = refused("oom-meta-length.dcm");
    assert!(why.contains("file meta header"), "{why}");
}

#[test]
fn a_file_meta_element_of_an_unknown_vr_declaring_2_9_gb_is_refused_from_its_header() {
    // An unknown VR is read as UN, with a 4-byte length: 2,972,855,857 bytes reserved.
    let why = refused("oom-meta-unknown-vr.dcm");
    assert!(why.contains("file meta header"), "{why}");
}

#[test]
fn a_value_length_that_is_no_whole_number_of_values_is_refused() {
    // Pixel Representation as SL of 2 bytes: dicom-parser read no value, lost its place by
    // 2 bytes and took the next bytes for a 4,294,901,760-byte element.
    let why = refused("oom-parser-ob.dcm");
    assert!(why.contains("not a whole number of 4-byte values"), "{why}");
}

#[test]
fn a_short_fl_is_refused_too() {
    let why = refused("oom-parser-fl.dcm");
    assert!(why.contains("not a whole number"), "{why}");
}

#[test]
fn an_undefined_length_value_other_than_pixel_data_is_walked_as_a_sequence() {
    // (7FE0,0014) OB of undefined length: dicom-parser reads it as a sequence of data sets,
    // and an element in its item declared 3,758,161,918 bytes.
    let why = refused("oom-undefined-length-ob.dcm");
    assert!(
        why.contains("declares") || why.contains("ends inside"),
        "{why}"
    );
}

#[test]
fn an_item_outside_any_sequence_is_taken_as_bytes_as_the_parser_does() {
    let why = refused("oom-item-outside-sequence.dcm");
    assert!(why.contains("declares"), "{why}");
}
#[test]
fn a_delimiter_with_a_length_is_refused() {
    let why = refused("oom-delimiter-length.dcm");
    assert!(why.contains("instead of 0"), "{why}");
}

#[test]
fn a_c_store_stream_with_zero_samples_per_pixel_is_refused_before_the_jpeg_adapter() {
    // dicom-rs's JPEG adapter sized its output from SamplesPerPixel 0 and panicked copying
    // into it (contained, but a decoder fault all the same).
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_found/crash-jpeg-zero-samples.bin");
    let input = std::fs::read(&path).unwrap();
    let (&pick, mut stream) = input.split_first().unwrap();
    let syntax = xray_codec::dimse::TRANSFER_SYNTAXES
        [pick as usize % xray_codec::dimse::TRANSFER_SYNTAXES.len()];
    let mut incoming = xray_codec::dimse::Incoming::new(1 << 20);
    let mut refusals = Vec::new();
    while let Ok(Some(pdu)) = dicom_ul_pdu(&mut stream) {
        for (context, command, last, bytes) in pdu {
            let Ok(Some(m)) = incoming.push(context, command, last, &bytes) else {
                continue;
            };
            let c = &m.command;
            let Ok(file) =
                xray_codec::dimse::part10(&c.class, &c.instance, syntax, "1.2.3", &m.data)
            else {
                continue;
            };
            if let Err(e) = decode_image_bytes(&file, Path::new("stream"), 4_000_000) {
                refusals.push(e);
            }
        }
    }
    assert!(!refusals.is_empty());
    for e in refusals {
        assert_ne!(e.kind, ImageFault::DecoderFault, "{e}");
    }
}

/// The PDVs of one P-DATA PDU off the front of `stream` (other PDUs skipped): context,
/// command or data, last, bytes.
#[allow(clippy::type_complexity)]
fn dicom_ul_pdu(stream: &mut &[u8]) -> Result<Option<Vec<(u8, bool, bool, Vec<u8>)>>, ()> {
    let s = *stream;
    if s.len() < 6 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(s[2..6].try_into().unwrap()) as usize;
    let body = s.get(6..6 + len).ok_or(())?;
    *stream = &s[6 + len..];
    if s[0] != 0x04 {
        return Ok(Some(Vec::new()));
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at + 6 <= body.len() {
        let n = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
        if n < 2 || at + 4 + n > body.len() {
            break;
        }
        let control = body[at + 5];
        out.push((
            body[at + 4],
            control & 1 == 1,
            control & 2 == 2,
            body[at + 6..at + 4 + n].to_vec(),
        ));
        at += 4 + n;
    }
    Ok(Some(out))
}
