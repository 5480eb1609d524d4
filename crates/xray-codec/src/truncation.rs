//! Whether a JPEG or PNG file ends early. Decoders fill a cut-off image with grey and carry on;
//! PIL refuses such a file ("image file is truncated"), and so does xray: a scan whose lower
//! part is missing must not be trained on or answered for.
//!
//! Both checks walk the file's structure without decoding it (a few microseconds a file): a
//! JPEG must reach its end-of-image marker through its segments and entropy-coded data; a PNG
//! must hold every chunk its lengths announce, up to `IEND`.

/// Why `bytes` (a whole JPEG or PNG file) is truncated, or `None` when it is complete or of
/// another format.
pub fn truncation(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        (!jpeg_complete(bytes))
            .then_some("truncated (JPEG data ends before its end-of-image marker)")
    } else if bytes.starts_with(PNG_SIGNATURE) {
        (!png_complete(bytes)).then_some("truncated (PNG data ends before its IEND chunk)")
    } else {
        None
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Walks the JPEG's markers from SOI to EOI: segment lengths, and after each start-of-scan its
/// entropy-coded data up to the next marker (0xFF followed by neither 0x00 nor a restart).
fn jpeg_complete(b: &[u8]) -> bool {
    let n = b.len();
    let mut i = 2;
    loop {
        // Anything between segments that is not a marker is skipped, as decoders do.
        while i < n && b[i] != 0xFF {
            i += 1;
        }
        // Fill bytes.
        while i < n && b[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return false;
        }
        let marker = b[i];
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => {}
            _ => {
                if i + 2 > n {
                    return false;
                }
                let len = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
                i += len;
                if i > n {
                    return false;
                }
                if marker == 0xDA {
                    // Entropy-coded data of the scan.
                    while i + 1 < n
                        && !(b[i] == 0xFF && b[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&b[i + 1]))
                    {
                        i += 1;
                    }
                    if i + 1 >= n {
                        return false;
                    }
                }
            }
        }
    }
}

/// Walks the PNG's chunks (length, type, data, CRC) up to `IEND`.
fn png_complete(b: &[u8]) -> bool {
    let mut i = PNG_SIGNATURE.len();
    loop {
        if i + 8 > b.len() {
            return false;
        }
        let len = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        let kind = &b[i + 4..i + 8];
        let end = i + 12 + len;
        if end > b.len() {
            return false;
        }
        if kind == b"IEND" {
            return true;
        }
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: image::ImageFormat) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn complete_files_pass() {
        assert_eq!(truncation(&encoded(image::ImageFormat::Jpeg)), None);
        assert_eq!(truncation(&encoded(image::ImageFormat::Png)), None);
        assert_eq!(truncation(b"BM not checked"), None);
    }

    #[test]
    fn cut_jpeg_is_truncated() {
        let jpeg = encoded(image::ImageFormat::Jpeg);
        for keep in [jpeg.len() / 3, jpeg.len() - 2, 3] {
            let reason = truncation(&jpeg[..keep]).expect("cut JPEG");
            assert!(reason.starts_with("truncated"), "{reason}");
        }
        // Bytes after the end-of-image marker (camera trailers) are not a truncation.
        let mut trailer = jpeg.clone();
        trailer.extend_from_slice(b"trailing metadata");
        assert_eq!(truncation(&trailer), None);
    }

    #[test]
    fn png_without_iend_or_with_short_idat_is_truncated() {
        let png = encoded(image::ImageFormat::Png);
        // IEND is the last 12 bytes.
        assert!(truncation(&png[..png.len() - 12]).is_some());
        assert!(truncation(&png[..png.len() / 2]).is_some());
    }
}
