//! Writes the seed corpora of the fuzz targets (`fuzz/`), made like the test fixtures: a
//! 64 x 64 grey gradient as PNG, JPEG, BMP and TIFF, and as DICOM CR images in each transfer
//! syntax the node accepts (explicit and implicit VR little endian, deflated, JPEG baseline,
//! RLE); for `c_store_stream`, each DICOM data set in a P-DATA stream after its C-STORE-RQ.
//!
//!     cargo run --release -p xray-codec --example fuzz_seeds -- fuzz/corpus

use std::io::Write;
use std::path::Path;

use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

const SIDE: u32 = 64;
/// The fuzz target's transfer syntax list (its first input byte picks one).
const SYNTAXES: &[&str] = xray_codec::dimse::TRANSFER_SYNTAXES;

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let out = Path::new(&out);
    let decode = out.join("dicom_decode");
    let stream = out.join("c_store_stream");
    std::fs::create_dir_all(&decode).unwrap();
    std::fs::create_dir_all(&stream).unwrap();
    let img =
        image::GrayImage::from_fn(SIDE, SIDE, |x, y| image::Luma([((x * 3 + y) % 256) as u8]));
    let dynamic = image::DynamicImage::ImageLuma8(img.clone());
    let mut jpeg = Vec::new();
    for (name, format) in [
        ("png", image::ImageFormat::Png),
        ("jpg", image::ImageFormat::Jpeg),
        ("bmp", image::ImageFormat::Bmp),
        ("tif", image::ImageFormat::Tiff),
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        dynamic.write_to(&mut bytes, format).unwrap();
        if name == "jpg" {
            jpeg = bytes.get_ref().clone();
        }
        std::fs::write(decode.join(format!("image.{name}")), bytes.into_inner()).unwrap();
    }
    let pixels = img.into_raw();
    let sets: Vec<(&str, &str, InMemDicomObject)> = vec![
        (
            "explicit",
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            cr(native(&pixels)),
        ),
        (
            "implicit",
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            cr(native(&pixels)),
        ),
        ("jpeg", uids::JPEG_BASELINE8_BIT, cr(encapsulated(jpeg))),
        ("rle", uids::RLE_LOSSLESS, cr(encapsulated(rle(&pixels)))),
    ];
    for (name, syntax, set) in sets {
        let data = data_set(&set, syntax);
        let file = part10(syntax, &data);
        std::fs::write(decode.join(format!("{name}.dcm")), &file).unwrap();
        let pick = SYNTAXES.iter().position(|s| *s == syntax).unwrap() as u8;
        std::fs::write(stream.join(format!("{name}.bin")), c_store(pick, &data)).unwrap();
    }
    // Deflated: the explicit VR data set, raw deflate.
    let explicit = data_set(&cr(native(&pixels)), uids::EXPLICIT_VR_LITTLE_ENDIAN);
    let mut deflater =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    deflater.write_all(&explicit).unwrap();
    let deflated = deflater.finish().unwrap();
    let syntax = uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
    std::fs::write(decode.join("deflated.dcm"), part10(syntax, &deflated)).unwrap();
    std::fs::write(stream.join("deflated.bin"), c_store(2, &deflated)).unwrap();
    // Each seed is an image the decoder reads (a stream: the image its C-STORE carries), so
    // the fuzzers start from the paths a real peer takes.
    let seeds = |dir: &Path, ext: &[&str]| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| ext.iter().any(|e| x == *e)))
            .collect()
    };
    // (The folders also hold what the fuzzers added: those are not checked.)
    for path in seeds(&decode, &["png", "jpg", "bmp", "tif", "dcm"]) {
        let bytes = std::fs::read(&path).unwrap();
        let name = Path::new("seed");
        if let Err(e) = xray_codec::decode::decode_image_bytes(&bytes, name, 1 << 22) {
            panic!("{}: {e}", path.display());
        }
    }
    for path in seeds(&stream, &["bin"]) {
        let bytes = std::fs::read(&path).unwrap();
        let decoded = decode_stream(&bytes);
        assert_eq!(decoded, Ok(1), "{}", path.display());
    }
    println!("seeds in {}", out.display());
}

/// What `c_store_stream` does with an input: how many images it decoded, or the first error.
fn decode_stream(input: &[u8]) -> Result<usize, String> {
    let (&pick, mut stream) = input.split_first().ok_or("empty")?;
    let syntax = SYNTAXES[pick as usize % SYNTAXES.len()];
    let mut incoming = xray_codec::dimse::Incoming::new(1 << 20);
    let mut decoded = 0;
    while let Some(pdu) = dicom_ul_free_read(&mut stream) {
        let (context, control, bytes) = pdu;
        let message = incoming
            .push(context, control & 1 == 1, control & 2 == 2, &bytes)
            .map_err(|e| e.to_string())?;
        if let Some(m) = message {
            let c = &m.command;
            let file = xray_codec::dimse::part10(&c.class, &c.instance, syntax, "1.2.3", &m.data)
                .map_err(|e| e.to_string())?;
            xray_codec::decode::decode_image_bytes(&file, Path::new("seed"), 1 << 22)
                .map_err(|e| e.to_string())?;
            decoded += 1;
        }
    }
    Ok(decoded)
}

/// One single-PDV P-DATA PDU off the front of `stream` (as [`c_store`] writes them): context,
/// control header, bytes.
fn dicom_ul_free_read(stream: &mut &[u8]) -> Option<(u8, u8, Vec<u8>)> {
    let s = *stream;
    if s.len() < 12 || s[0] != 0x04 {
        return None;
    }
    let len = u32::from_be_bytes(s[2..6].try_into().ok()?) as usize;
    let pdv_len = u32::from_be_bytes(s[6..10].try_into().ok()?) as usize;
    let (context, control) = (s[10], s[11]);
    let bytes = s.get(12..10 + pdv_len)?.to_vec();
    *stream = s.get(6 + len..)?;
    Some((context, control, bytes))
}

fn native(pixels: &[u8]) -> DataElement<InMemDicomObject> {
    DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pixels.into()))
}

fn encapsulated(frame: Vec<u8>) -> DataElement<InMemDicomObject> {
    let seq = PixelFragmentSequence::new(vec![0u32], vec![frame]);
    DataElement::new(tags::PIXEL_DATA, VR::OB, Value::PixelSequence(seq))
}

/// A 64 x 64 grey CR image with `pixel_data`.
fn cr(pixel_data: DataElement<InMemDicomObject>) -> InMemDicomObject {
    let s = |t, vr, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    let us = |t, v: u16| DataElement::new(t, VR::US, PrimitiveValue::from(v));
    InMemDicomObject::from_element_iter([
        s(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
        ),
        s(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5"),
        s(tags::MODALITY, VR::CS, "CR"),
        s(tags::PATIENT_NAME, VR::PN, "Seed^Patient"),
        s(tags::PATIENT_ID, VR::LO, "SEED1"),
        s(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3.4"),
        s(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4.1"),
        us(tags::SAMPLES_PER_PIXEL, 1),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, SIDE as u16),
        us(tags::COLUMNS, SIDE as u16),
        us(tags::BITS_ALLOCATED, 8),
        us(tags::BITS_STORED, 8),
        us(tags::HIGH_BIT, 7),
        us(tags::PIXEL_REPRESENTATION, 0),
        pixel_data,
    ])
}

/// PackBits of one 8-bit plane as a DICOM RLE frame: header, one segment of literals.
fn rle(pixels: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; 64];
    frame[0..4].copy_from_slice(&1u32.to_le_bytes());
    frame[4..8].copy_from_slice(&64u32.to_le_bytes());
    for chunk in pixels.chunks(128) {
        frame.push((chunk.len() - 1) as u8);
        frame.extend_from_slice(chunk);
    }
    if frame.len() % 2 == 1 {
        frame.push(0);
    }
    frame
}

/// The data set's bytes in `syntax` (encapsulated pixel data in explicit VR little endian).
fn data_set(obj: &InMemDicomObject, syntax: &str) -> Vec<u8> {
    use dicom_encoding::TransferSyntaxIndex;
    let wire = if syntax == uids::IMPLICIT_VR_LITTLE_ENDIAN {
        syntax
    } else {
        uids::EXPLICIT_VR_LITTLE_ENDIAN
    };
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(wire)
        .unwrap();
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts).unwrap();
    out
}

fn part10(syntax: &str, data: &[u8]) -> Vec<u8> {
    xray_codec::dimse::part10(
        uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
        "1.2.3.4.5",
        syntax,
        "1.2.3",
        data,
    )
    .unwrap()
}

/// The fuzz target's input: the syntax's index, then a P-DATA PDU holding a C-STORE-RQ and
/// PDUs of the data set.
fn c_store(pick: u8, data: &[u8]) -> Vec<u8> {
    let element = |group: u16, elem: u16, value: &[u8]| {
        let mut v = group.to_le_bytes().to_vec();
        v.extend_from_slice(&elem.to_le_bytes());
        v.extend_from_slice(&(value.len() as u32).to_le_bytes());
        v.extend_from_slice(value);
        v
    };
    let mut command = element(0, 0x0002, b"1.2.840.10008.5.1.4.1.1.1\0");
    command.extend(element(0, 0x0100, &1u16.to_le_bytes()));
    command.extend(element(0, 0x0110, &1u16.to_le_bytes()));
    command.extend(element(0, 0x0700, &0u16.to_le_bytes()));
    command.extend(element(0, 0x0800, &0u16.to_le_bytes()));
    command.extend(element(0, 0x1000, b"1.2.3.4.5\0"));
    let p_data = |control: u8, bytes: &[u8]| {
        let mut pdv = ((bytes.len() + 2) as u32).to_be_bytes().to_vec();
        pdv.push(1);
        pdv.push(control);
        pdv.extend_from_slice(bytes);
        let mut pdu = vec![0x04, 0];
        pdu.extend_from_slice(&(pdv.len() as u32).to_be_bytes());
        pdu.extend(pdv);
        pdu
    };
    let mut out = vec![pick];
    out.extend(p_data(0b11, &command));
    let chunks: Vec<&[u8]> = data.chunks(16000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { 0b10 } else { 0 };
        out.extend(p_data(last, chunk));
    }
    out
}
