//! Every supported format is read correctly, and every broken file is refused with its reason:
//! fixtures are written by the test itself.

use std::path::{Path, PathBuf};

use dicom_core::{value::PrimitiveValue, DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use image::{ImageBuffer, Luma, Rgba};
use xray::data::decode::{decode_image, load_model_pixels};
use xray::Error;

use crate::common::{read_json, split_dataset, synth_dataset};

/// A 16-bit grey DICOM, `width` x `height`, values rising left to right (12 bits stored).
pub fn write_dicom(path: &Path, photometric: &str, width: u16, height: u16) {
    let mut pixels: Vec<u16> = Vec::new();
    for _ in 0..height {
        for x in 0..width {
            pixels.push((x as u32 * 4095 / (width as u32 - 1)) as u16);
        }
    }
    Dicom::new(width, height, pixels)
        .photometric(photometric)
        .write(path);
}

/// A DICOM to write: 12-bit grey pixels (16 allocated), one frame unless told otherwise.
pub struct Dicom {
    width: u16,
    height: u16,
    /// Row-major, every frame one after another.
    pixels: Vec<u16>,
    photometric: String,
    frames: u32,
    transfer_syntax: &'static str,
    pixel_data: bool,
    patient: Option<(String, String)>,
}

impl Dicom {
    /// Uncompressed (explicit VR little endian) MONOCHROME2.
    pub fn new(width: u16, height: u16, pixels: Vec<u16>) -> Dicom {
        Dicom {
            width,
            height,
            pixels,
            photometric: "MONOCHROME2".into(),
            frames: 1,
            transfer_syntax: uids::EXPLICIT_VR_LITTLE_ENDIAN,
            pixel_data: true,
            patient: None,
        }
    }

    /// A grey image's pixels, scaled to 12 bits.
    pub fn from_grey(img: &image::GrayImage) -> Dicom {
        let pixels = img.pixels().map(|p| p.0[0] as u16 * 16).collect();
        Dicom::new(img.width() as u16, img.height() as u16, pixels)
    }

    pub fn photometric(mut self, p: &str) -> Dicom {
        self.photometric = p.into();
        self
    }

    /// Repeats the pixels as `n` frames.
    pub fn frames(mut self, n: u32) -> Dicom {
        let one = self.pixels.clone();
        for _ in 1..n {
            self.pixels.extend_from_slice(&one);
        }
        self.frames = n;
        self
    }

    /// Without the PixelData element.
    pub fn without_pixel_data(mut self) -> Dicom {
        self.pixel_data = false;
        self
    }

    /// JPEG 2000 lossless, the pixel data one encapsulated fragment (not a real codestream:
    /// xray must refuse the transfer syntax before reading it).
    pub fn jpeg2000(mut self) -> Dicom {
        self.transfer_syntax = uids::JPEG2000_LOSSLESS;
        self
    }

    /// With PatientName and PatientID.
    pub fn patient(mut self, name: &str, id: &str) -> Dicom {
        self.patient = Some((name.into(), id.into()));
        self
    }

    pub fn write(self, path: &Path) {
        use dicom_core::value::{PixelFragmentSequence, Value};
        let mut obj = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::SOP_CLASS_UID,
                VR::UI,
                uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
            ),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "2.25.1234567890"),
            DataElement::new(tags::MODALITY, VR::CS, "DX"),
            DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
            DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                self.photometric.as_str(),
            ),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(self.height)),
            DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(self.width)),
            DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
            DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)),
            DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16)),
            DataElement::new(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ),
            DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, "0"),
            DataElement::new(tags::RESCALE_SLOPE, VR::DS, "1"),
            DataElement::new(tags::WINDOW_CENTER, VR::DS, "2048"),
            DataElement::new(tags::WINDOW_WIDTH, VR::DS, "4096"),
        ]);
        if self.frames > 1 {
            obj.put(DataElement::new(
                tags::NUMBER_OF_FRAMES,
                VR::IS,
                self.frames.to_string(),
            ));
        }
        if let Some((name, id)) = &self.patient {
            obj.put(DataElement::new(tags::PATIENT_NAME, VR::PN, name.as_str()));
            obj.put(DataElement::new(tags::PATIENT_ID, VR::LO, id.as_str()));
        }
        if self.pixel_data {
            if self.transfer_syntax == uids::EXPLICIT_VR_LITTLE_ENDIAN {
                obj.put(DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OW,
                    PrimitiveValue::U16(self.pixels.into()),
                ));
            } else {
                let fragment: Vec<u8> = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 0, 0, 0];
                obj.put(DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OB,
                    Value::PixelSequence(PixelFragmentSequence::new(vec![], vec![fragment])),
                ));
            }
        }
        obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(self.transfer_syntax))
            .unwrap()
            .write_to_file(path)
            .unwrap();
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG header claiming `side` x `side` pixels, with no image data worth the name.
pub fn write_huge_png_header(path: &Path, side: u32) {
    std::fs::write(path, huge_png_header(side)).unwrap();
}

/// The bytes of [`write_huge_png_header`].
pub fn huge_png_header(side: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]); // 8-bit grey
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    png.extend(0u32.to_be_bytes());
    png.extend(b"IEND");
    png.extend(crc32(b"IEND").to_be_bytes());
    png
}

/// Writes every fixture into `dir` and returns (path, expected: Ok or the reason's key words).
pub fn write_fixtures(dir: &Path) -> Vec<(PathBuf, Result<(), &'static str>)> {
    let mut out = Vec::new();
    let p = dir.join("zero.png");
    std::fs::write(&p, b"").unwrap();
    out.push((p, Err("empty")));

    let p = dir.join("notes.png");
    std::fs::write(&p, b"hello, I am a text file").unwrap();
    out.push((p, Err("not a recognised image format")));

    let jpeg = dir.join("full.jpg");
    let rgb = ImageBuffer::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])
    });
    rgb.save(&jpeg).unwrap();
    let bytes = std::fs::read(&jpeg).unwrap();
    let p = dir.join("truncated.jpg");
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    out.push((p, Err("truncated")));
    out.push((jpeg, Ok(())));

    // Large enough that a decoder would fill the missing two thirds with grey and carry on.
    let big = ImageBuffer::from_fn(512, 512, |x, y| {
        image::Rgb([(x ^ y) as u8, (x * 3) as u8, (y * 5) as u8])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    big.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
    let bytes = bytes.into_inner();
    let p = dir.join("cut_to_a_third.jpg");
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    out.push((p, Err("truncated")));

    let mut bytes = std::io::Cursor::new(Vec::new());
    big.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    let bytes = bytes.into_inner();
    let p = dir.join("no_iend.png");
    std::fs::write(&p, &bytes[..bytes.len() - 12]).unwrap();
    out.push((p, Err("truncated")));

    let p = dir.join("grey16.png");
    ImageBuffer::from_fn(64, 64, |x, _| Luma([(x * 1040) as u16]))
        .save(&p)
        .unwrap();
    out.push((p, Ok(())));

    let p = dir.join("rgba.png");
    ImageBuffer::from_fn(64, 64, |x, y| Rgba([x as u8 * 4, y as u8 * 4, 0, 100]))
        .save(&p)
        .unwrap();
    out.push((p, Ok(())));

    let p = dir.join("image.bmp");
    ImageBuffer::from_fn(64, 64, |x, _| Luma([x as u8 * 4]))
        .save(&p)
        .unwrap();
    out.push((p, Ok(())));

    let p = dir.join("image.tiff");
    ImageBuffer::from_fn(64, 64, |x, _| Luma([x as u8 * 4]))
        .save(&p)
        .unwrap();
    out.push((p, Ok(())));

    for kind in ["MONOCHROME1", "MONOCHROME2"] {
        let p = dir.join(format!("{kind}.dcm"));
        write_dicom(&p, kind, 64, 48);
        out.push((p, Ok(())));
    }

    let p = dir.join("huge.png");
    write_huge_png_header(&p, 20_000);
    out.push((p, Err("too large")));
    out
}

fn reason(e: Error) -> String {
    match e {
        Error::Image { reason, .. } => reason,
        other => other.to_string(),
    }
}

#[test]
fn each_fixture_is_read_or_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (path, expected) in write_fixtures(dir.path()) {
        let got = decode_image(&path);
        match (expected, got) {
            (Ok(()), Ok(img)) => assert!(img.width() > 0, "{}", path.display()),
            (Err(words), Err(e)) => {
                let r = reason(e);
                assert!(
                    r.contains(words),
                    "{}: reason {r:?} lacks {words:?}",
                    path.display()
                );
            }
            (Ok(()), Err(e)) => panic!("{} refused: {}", path.display(), reason(e)),
            (Err(words), Ok(_)) => panic!("{} read, expected refusal ({words})", path.display()),
        }
    }
}

#[test]
fn sixteen_bit_png_keeps_its_scale() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g16.png");
    // Columns at 0, 1/3, 2/3 and full scale of 16 bits.
    ImageBuffer::from_fn(4, 4, |x, _| Luma([(x * 21845) as u16]))
        .save(&p)
        .unwrap();
    let px = load_model_pixels(&p, 4, 1).unwrap();
    assert_eq!(&px[..4], &[0, 85, 170, 255]);
}

#[test]
fn rgba_png_drops_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rgba.png");
    ImageBuffer::from_fn(2, 2, |_, _| Rgba([200u8, 100, 50, 10]))
        .save(&p)
        .unwrap();
    assert_eq!(&load_model_pixels(&p, 2, 3).unwrap()[..3], &[200, 100, 50]);
}

#[test]
fn dicom_monochrome1_is_inverted() {
    let dir = tempfile::tempdir().unwrap();
    let mono2 = dir.path().join("m2.dcm");
    let mono1 = dir.path().join("m1.dcm");
    write_dicom(&mono2, "MONOCHROME2", 32, 32);
    write_dicom(&mono1, "MONOCHROME1", 32, 32);
    let a = load_model_pixels(&mono2, 8, 1).unwrap();
    let b = load_model_pixels(&mono1, 8, 1).unwrap();
    // MONOCHROME2: dark on the left, bright on the right; MONOCHROME1 the other way round.
    assert!(a[0] < 30 && a[7] > 225, "{a:?}");
    assert!(b[0] > 225 && b[7] < 30, "{b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!((*x as i32 + *y as i32 - 255).abs() <= 2, "{a:?} vs {b:?}");
    }
}

#[test]
fn split_completes_past_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_dataset(dir.path(), 10, 32);
    let fixtures = write_fixtures(&data.join("normal"));
    let out = dir.path().join("split");
    split_dataset(&data, &out);
    let report = read_json(&out.join("split_report.json"));
    let skipped = report["corrupt_skipped"].as_array().unwrap();
    let bad: Vec<_> = fixtures.iter().filter(|f| f.1.is_err()).collect();
    assert_eq!(skipped.len(), bad.len(), "{skipped:?}");
    for (path, expected) in bad {
        let name = path.file_name().unwrap().to_string_lossy();
        let entry = skipped
            .iter()
            .find(|s| s["path"].as_str().unwrap().ends_with(name.as_ref()))
            .unwrap_or_else(|| panic!("{name} not listed"));
        assert!(
            entry["reason"]
                .as_str()
                .unwrap()
                .contains(expected.unwrap_err()),
            "{entry}"
        );
    }
    let good = fixtures.iter().filter(|f| f.1.is_ok()).count();
    assert_eq!(report["images_kept"].as_u64().unwrap() as usize, 20 + good);
}

/// A DICOM that is not one decodable image is refused with the reason, for every command.
#[test]
fn dicom_without_pixels_multi_frame_or_jpeg2000_is_refused_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let grey = image::GrayImage::from_fn(32, 24, |x, y| Luma([(x * 7 + y) as u8]));
    let cases = [
        ("report.dcm", Dicom::from_grey(&grey).without_pixel_data(), "DICOM without pixel data"),
        ("cine.dcm", Dicom::from_grey(&grey).frames(3), "multi-frame DICOM (3 frames)"),
        (
            "j2k.dcm",
            Dicom::from_grey(&grey).jpeg2000(),
            "JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.90) is compressed in a way xray cannot decode",
        ),
    ];
    for (name, dicom, want) in cases {
        let p = dir.path().join(name);
        dicom.write(&p);
        match decode_image(&p) {
            Err(Error::Image { path, reason, .. }) => {
                assert!(path.ends_with(name), "{path}");
                assert!(reason.contains(want), "{name}: {reason}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // The same picture, one uncompressed frame: read, 12 bits scaled back to 8.
    let p = dir.path().join("ok.dcm");
    Dicom::from_grey(&grey)
        .patient("DOE^JANE", "MRN-0042")
        .write(&p);
    let img = decode_image(&p).unwrap();
    assert_eq!((img.width(), img.height()), (32, 24));
}
