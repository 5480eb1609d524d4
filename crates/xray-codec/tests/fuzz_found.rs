//! The inputs the fuzz targets of `fuzz/` found, each a crash once, rebuilt here from their
//! structure (a few header bytes each): now refused with a reason, without the allocation they
//! asked for.

use std::path::Path;

use xray_codec::decode::decode_image_bytes;
use xray_codec::elements::SHORT_VRS;
use xray_codec::ImageFault;

const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

/// An explicit VR little endian element declaring `length` bytes, followed by `value` (which
/// may be shorter: that is the lie).
fn element(group: u16, elem: u16, vr: &[u8; 2], length: u32, value: &[u8]) -> Vec<u8> {
    let mut v = group.to_le_bytes().to_vec();
    v.extend_from_slice(&elem.to_le_bytes());
    v.extend_from_slice(vr);
    if SHORT_VRS.contains(&vr) {
        v.extend_from_slice(&(length as u16).to_le_bytes());
    } else {
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&length.to_le_bytes());
    }
    v.extend_from_slice(value);
    v
}

/// An element whose declared length is its value's.
fn whole(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    element(group, elem, vr, value.len() as u32, value)
}

/// An item or delimiter (FFFE,`elem`) declaring `length`.
fn item(elem: u16, length: u32) -> Vec<u8> {
    let mut v = vec![0xFE, 0xFF];
    v.extend_from_slice(&elem.to_le_bytes());
    v.extend_from_slice(&length.to_le_bytes());
    v
}

/// A UID value, padded to even length with NUL.
fn uid(text: &str) -> Vec<u8> {
    let mut v = text.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// A Part 10 file: preamble, "DICM", the file meta group (its usual elements of `syntax`, then
/// `meta_extra`), then `data`.
fn part10(syntax: &str, meta_extra: &[u8], data: &[u8]) -> Vec<u8> {
    let mut meta = whole(0x0002, 0x0001, b"OB", &[0, 1]);
    meta.extend(whole(0x0002, 0x0002, b"UI", &uid(CR)));
    meta.extend(whole(0x0002, 0x0003, b"UI", &uid("1.2.3.4.5")));
    meta.extend(whole(0x0002, 0x0010, b"UI", &uid(syntax)));
    meta.extend_from_slice(meta_extra);
    let mut v = vec![0u8; 128];
    v.extend_from_slice(b"DICM");
    v.extend(whole(
        0x0002,
        0x0000,
        b"UL",
        &(meta.len() as u32).to_le_bytes(),
    ));
    v.extend(meta);
    v.extend_from_slice(data);
    v
}

/// The header of a 64 x 64 grey CR image, up to Pixel Representation, with `samples` samples
/// per pixel; `pixel_representation` replaces that element when given.
fn header(samples: u16, pixel_representation: Option<Vec<u8>>) -> Vec<u8> {
    let us = |v: u16| v.to_le_bytes();
    let mut v = whole(0x0008, 0x0016, b"UI", &uid(CR));
    v.extend(whole(0x0008, 0x0018, b"UI", &uid("1.2.3.4.5")));
    v.extend(whole(0x0010, 0x0010, b"PN", b"Seed^Patient"));
    v.extend(whole(0x0020, 0x000D, b"UI", &uid("1.2.3.4")));
    v.extend(whole(0x0028, 0x0002, b"US", &us(samples)));
    v.extend(whole(0x0028, 0x0004, b"CS", b"MONOCHROME2 "));
    v.extend(whole(0x0028, 0x0010, b"US", &us(64)));
    v.extend(whole(0x0028, 0x0011, b"US", &us(64)));
    v.extend(whole(0x0028, 0x0100, b"US", &us(8)));
    v.extend(whole(0x0028, 0x0101, b"US", &us(8)));
    v.extend(whole(0x0028, 0x0102, b"US", &us(7)));
    v.extend(pixel_representation.unwrap_or_else(|| whole(0x0028, 0x0103, b"US", &us(0))));
    v
}

/// Native 64 x 64 pixel data.
fn pixels() -> Vec<u8> {
    whole(0x7FE0, 0x0010, b"OB", &[128; 64 * 64])
}

/// Decodes `file`: it must be refused as corrupt; the reason.
fn refused(file: &[u8]) -> String {
    let e = decode_image_bytes(file, Path::new("found"), 4_000_000).unwrap_err();
    assert_eq!(e.kind, ImageFault::Corrupt, "{e}");
    e.reason
}

#[test]
fn a_data_set_element_declaring_3_6_gb_in_a_4_kb_file_is_refused_from_its_header() {
    // dicom-parser reserved the declared 3,621,048,782 bytes before reading them.
    let mut data = header(1, None);
    data.extend(element(0x0009, 0x1010, b"OB", 3_621_048_782, b"abcd"));
    data.extend(pixels());
    let why = refused(&part10(EXPLICIT_LE, &[], &data));
    assert!(why.contains("declares") && why.contains("remain"), "{why}");
}

#[test]
fn a_file_meta_element_declaring_3_8_gb_is_refused_from_its_header() {
    // dicom-object's file meta reader reserved the declared 3,818,688,118 bytes.
    let lie = element(0x0002, 0x0012, b"UN", 3_818_688_118, b"1.2.3\0");
    let data = [header(1, None), pixels()].concat();
    let why = refused(&part10(EXPLICIT_LE, &lie, &data));
    assert!(
        why.contains("file meta header") && why.contains("declares"),
        "{why}"
    );
}

#[test]
fn a_file_meta_element_of_an_unknown_vr_declaring_2_9_gb_is_refused_from_its_header() {
    // An unknown VR is read as UN, with a 4-byte length: 2,972,855,857 bytes reserved.
    let lie = element(0x0002, 0x0012, b"H\x02", 2_972_855_857, b"1.2.3\0");
    let data = [header(1, None), pixels()].concat();
    let why = refused(&part10(EXPLICIT_LE, &lie, &data));
    assert!(
        why.contains("file meta header") && why.contains("declares"),
        "{why}"
    );
}

#[test]
fn a_value_length_that_is_no_whole_number_of_values_is_refused() {
    // Pixel Representation as SL of 2 bytes: dicom-parser read no value, lost its place by
    // 2 bytes and took the next bytes for a 4,294,901,760-byte element.
    let sl = whole(0x0028, 0x0103, b"SL", &[0, 0]);
    let data = [header(1, Some(sl)), pixels()].concat();
    let why = refused(&part10(EXPLICIT_LE, &[], &data));
    assert!(why.contains("not a whole number of 4-byte values"), "{why}");
}

#[test]
fn a_short_fl_is_refused_too() {
    let mut data = header(1, None);
    data.extend(whole(0x0028, 0x0120, b"FL", &[0, 0]));
    data.extend(pixels());
    let why = refused(&part10(EXPLICIT_LE, &[], &data));
    assert!(why.contains("not a whole number"), "{why}");
}

#[test]
fn an_undefined_length_value_other_than_pixel_data_is_walked_as_a_sequence() {
    // (7FE0,0014) OB of undefined length: dicom-parser reads it as a sequence of data sets,
    // and an element in its item declared 3,758,161,918 bytes.
    let mut data = header(1, None);
    data.extend(element(0x7FE0, 0x0014, b"OB", 0xFFFF_FFFF, &[]));
    data.extend(item(0xE000, 0xFFFF_FFFF));
    data.extend(element(0x0000, 0x0400, b"OB", 3_758_161_918, &[0; 16]));
    let why = refused(&part10(EXPLICIT_LE, &[], &data));
    assert!(
        why.contains("declares") || why.contains("ends inside"),
        "{why}"
    );
}

#[test]
fn an_item_outside_any_sequence_is_taken_as_bytes_as_the_parser_does() {
    let mut data = header(1, None);
    data.extend(item(0xE000, 4));
    data.extend_from_slice(&[0; 4]);
    data.extend(element(0x0000, 0xE000, b"H\x02", 3_774_863_615, &[0; 16]));
    let why = refused(&part10(EXPLICIT_LE, &[], &data));
    assert!(why.contains("declares"), "{why}");
}

#[test]
fn a_delimiter_with_a_length_is_refused() {
    let mut data = header(1, None);
    data.extend(element(0x7FE0, 0x0010, b"OB", 0xFFFF_FFFF, &[]));
    data.extend(item(0xE000, 0));
    data.extend(item(0xE000, 4));
    data.extend_from_slice(&[0; 4]);
    data.extend(item(0xE0DD, 0xFFFF_0000));
    let why = refused(&part10(EXPLICIT_LE, &[], &data));
    assert!(why.contains("instead of 0"), "{why}");
}

#[test]
fn zero_samples_per_pixel_is_refused_before_the_jpeg_adapter() {
    // dicom-rs's JPEG adapter sized its output from SamplesPerPixel 0 and panicked copying
    // into it (contained, but a decoder fault all the same; found by c_store_stream).
    let img = image::GrayImage::from_fn(64, 64, |x, y| image::Luma([(x + y) as u8]));
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(img)
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let mut frame = jpeg.into_inner();
    if frame.len() % 2 == 1 {
        frame.push(0);
    }
    let mut data = header(0, None);
    data.extend(element(0x7FE0, 0x0010, b"OB", 0xFFFF_FFFF, &[]));
    data.extend(item(0xE000, 0));
    data.extend(item(0xE000, frame.len() as u32));
    data.extend(frame);
    data.extend(item(0xE0DD, 0));
    let why = refused(&part10(JPEG_BASELINE, &[], &data));
    assert!(why.contains("0 samples per pixel"), "{why}");
}
