//! The size a compressed DICOM frame says of itself, read from its own codestream header
//! before any decoder allocates for it.
//!
//! A DICOM header's Rows x Columns is only a claim: the decoder sizes its buffers from the
//! codestream (a JPEG frame header, an RLE segment table). A 402-byte data set whose JPEG frame
//! header says 20000x20000 under Rows/Columns of 512x512 would make the decoder allocate
//! gigabytes, or panic when the two disagree. [`check_frame`] reads that header and refuses
//! the frame unless it agrees with the DICOM header, costing no more than a pass over the
//! frame's bytes.

/// What the DICOM header says one frame decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameShape {
    /// Rows (height).
    pub rows: u32,
    /// Columns (width).
    pub columns: u32,
    /// Samples per pixel (1 grey, 3 colour).
    pub samples: u32,
    /// Bits allocated per sample (8 or 16).
    pub bits_allocated: u32,
}

/// How a frame is compressed, for the header that sizes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codestream {
    /// ISO 10918 (baseline, extended, lossless): the SOF marker segment.
    Jpeg,
    /// DICOM RLE (PS3.5 G): the 64-byte segment table and each segment's decoded length.
    Rle,
}

impl Codestream {
    /// The codestream of a transfer syntax UID; `None` for native (uncompressed) and deflated
    /// data sets, which have no codestream of their own (deflate is capped while inflating).
    pub fn of_transfer_syntax(uid: &str) -> Option<Codestream> {
        match uid.trim_end_matches('\0') {
            // JPEG baseline, extended, lossless (process 14 and SV1).
            "1.2.840.10008.1.2.4.50"
            | "1.2.840.10008.1.2.4.51"
            | "1.2.840.10008.1.2.4.57"
            | "1.2.840.10008.1.2.4.70" => Some(Codestream::Jpeg),
            "1.2.840.10008.1.2.5" => Some(Codestream::Rle),
            _ => None,
        }
    }
}

/// Checks one compressed frame's own header against `shape`: the reason it disagrees, or
/// `Ok`.
pub fn check_frame(kind: Codestream, frame: &[u8], shape: FrameShape) -> Result<(), String> {
    match kind {
        Codestream::Jpeg => check_jpeg(frame, shape),
        Codestream::Rle => check_rle(frame, shape),
    }
}

/// A JPEG frame header: precision, lines (height), samples per line (width), components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegFrame {
    /// Sample precision in bits.
    pub precision: u8,
    /// Number of lines (height); 0 would be set later by a DNL marker, which xray refuses.
    pub height: u16,
    /// Samples per line (width).
    pub width: u16,
    /// Number of image components.
    pub components: u8,
}

/// Reads the first SOF marker segment of a JPEG codestream, walking the marker segments from
/// SOI; the reason it cannot be found otherwise.
pub fn jpeg_frame(data: &[u8]) -> Result<JpegFrame, String> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err("the JPEG codestream does not start with SOI".into());
    }
    let mut at = 2;
    loop {
        // Fill bytes (0xFF) may precede a marker.
        while at < data.len() && data[at] == 0xFF && data.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&ff), Some(&marker)) = (data.get(at), data.get(at + 1)) else {
            return Err("the JPEG codestream ends before its frame header (SOF)".into());
        };
        if ff != 0xFF {
            return Err(format!(
                "the JPEG codestream has no marker where one is due (byte {at})"
            ));
        }
        at += 2;
        match marker {
            // Standalone markers: no length.
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => {
                return Err("the JPEG codestream has no frame header (SOF) before its scan".into())
            }
            _ => {}
        }
        let len = match (data.get(at), data.get(at + 1)) {
            (Some(&hi), Some(&lo)) => u16::from_be_bytes([hi, lo]) as usize,
            _ => return Err("the JPEG codestream ends inside a marker segment".into()),
        };
        if len < 2 || at + len > data.len() {
            return Err(format!(
                "a JPEG marker segment (0xFF{marker:02X}) runs past the end of the codestream"
            ));
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            if len < 8 {
                return Err("the JPEG frame header (SOF) is too short".into());
            }
            let s = &data[at + 2..at + len];
            return Ok(JpegFrame {
                precision: s[0],
                height: u16::from_be_bytes([s[1], s[2]]),
                width: u16::from_be_bytes([s[3], s[4]]),
                components: s[5],
            });
        }
        at += len;
    }
}

fn check_jpeg(frame: &[u8], shape: FrameShape) -> Result<(), String> {
    let sof = jpeg_frame(frame)?;
    if sof.height as u32 != shape.rows || sof.width as u32 != shape.columns {
        return Err(format!(
            "the JPEG frame header says {}x{} but the DICOM header says {}x{} (Columns x Rows); refused before decoding",
            sof.width, sof.height, shape.columns, shape.rows
        ));
    }
    if sof.components as u32 != shape.samples {
        return Err(format!(
            "the JPEG frame has {} components but the DICOM header says {} samples per pixel",
            sof.components, shape.samples
        ));
    }
    if sof.precision as u32 > shape.bits_allocated {
        return Err(format!(
            "the JPEG frame's precision is {} bits but the DICOM header allocates {}",
            sof.precision, shape.bits_allocated
        ));
    }
    Ok(())
}

/// Bytes an RLE segment may decode to past Rows x Columns (one run of an encoder that does
/// not stop exactly at the end); beyond it the segment is refused.
const RLE_SLACK: usize = 128;

/// The DICOM RLE header: a segment count, then 15 offsets (PS3.5 G.5).
const RLE_HEADER_BYTES: usize = 64;

fn check_rle(frame: &[u8], shape: FrameShape) -> Result<(), String> {
    if frame.len() < RLE_HEADER_BYTES {
        return Err(format!(
            "the RLE frame is {} bytes, shorter than its 64-byte header",
            frame.len()
        ));
    }
    let word = |i: usize| u32::from_le_bytes(frame[4 * i..4 * i + 4].try_into().unwrap()) as usize;
    let segments = word(0);
    let want = shape.samples as usize * shape.bits_allocated.div_ceil(8) as usize;
    if segments != want {
        return Err(format!(
            "the RLE header lists {segments} segments but the DICOM header needs {want} (samples x bytes per sample)"
        ));
    }
    let offsets: Vec<usize> = (1..=segments).map(word).collect();
    if offsets[0] != RLE_HEADER_BYTES {
        return Err(format!(
            "the first RLE segment starts at byte {}, not 64",
            offsets[0]
        ));
    }
    let plane = shape.rows as usize * shape.columns as usize;
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(frame.len());
        if start > end || end > frame.len() {
            return Err(format!(
                "RLE segment {} has offsets {start}..{end} outside its {}-byte frame",
                i + 1,
                frame.len()
            ));
        }
        // Counted a little past Rows x Columns: the decoder decodes a segment to its end, so
        // a segment of runs far longer than the image (16 MB of them made 2.2 GB) is refused.
        let decoded = packbits_length(&frame[start..end], plane + RLE_SLACK);
        if decoded < plane {
            return Err(format!(
                "RLE segment {} decodes to {decoded} bytes, fewer than Rows x Columns = {plane}",
                i + 1
            ));
        }
        if decoded > plane + RLE_SLACK {
            return Err(format!(
                "RLE segment {} decodes to more than Rows x Columns = {plane} bytes",
                i + 1
            ));
        }
    }
    Ok(())
}

/// How many bytes a PackBits segment decodes to, counted without decoding, stopping once past
/// `enough`; a run cut short by the segment's end counts only what is there.
fn packbits_length(segment: &[u8], enough: usize) -> usize {
    let (mut at, mut out) = (0usize, 0usize);
    while at < segment.len() && out <= enough {
        let n = segment[at] as i8;
        at += 1;
        match n {
            0..=127 => {
                let literal = (n as usize + 1).min(segment.len() - at);
                out += literal;
                at += literal;
            }
            -127..=-1 => {
                if at < segment.len() {
                    out += (1 - n as isize) as usize;
                    at += 1;
                }
            }
            -128 => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREY_512: FrameShape = FrameShape {
        rows: 512,
        columns: 512,
        samples: 1,
        bits_allocated: 8,
    };

    /// SOI, an APP0 segment, then SOF0 of `w`x`h` with `c` components and nothing after.
    fn jpeg_header(w: u16, h: u16, c: u8) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
        v.extend_from_slice(&[0xFF, 0xC0]);
        let len = 8 + 3 * c as u16;
        v.extend_from_slice(&len.to_be_bytes());
        v.push(8);
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&w.to_be_bytes());
        v.push(c);
        for i in 0..c {
            v.extend_from_slice(&[i + 1, 0x11, 0]);
        }
        v.extend_from_slice(&[0xFF, 0xD9]);
        v
    }

    #[test]
    fn a_jpeg_frame_header_is_read_past_other_segments() {
        let f = jpeg_frame(&jpeg_header(640, 480, 3)).unwrap();
        assert_eq!(
            (f.width, f.height, f.components, f.precision),
            (640, 480, 3, 8)
        );
    }

    #[test]
    fn a_jpeg_whose_frame_disagrees_with_rows_and_columns_is_refused() {
        assert!(check_frame(Codestream::Jpeg, &jpeg_header(512, 512, 1), GREY_512).is_ok());
        let e = check_frame(Codestream::Jpeg, &jpeg_header(20000, 20000, 1), GREY_512);
        assert!(e.unwrap_err().contains("20000x20000"));
        let e = check_frame(Codestream::Jpeg, &jpeg_header(512, 512, 3), GREY_512);
        assert!(e.unwrap_err().contains("3 components"));
        // No SOF before the scan, a segment running past the end, not a JPEG at all.
        assert!(jpeg_frame(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]).is_err());
        assert!(jpeg_frame(&[0xFF, 0xD8, 0xFF, 0xE0, 0xFF, 0xFF]).is_err());
        assert!(jpeg_frame(b"not a jpeg").is_err());
        assert!(jpeg_frame(&[]).is_err());
    }

    /// An RLE frame of `segments` segments, each `plane` bytes as runs of 128.
    fn rle(segments: u32, plane: usize) -> Vec<u8> {
        let mut segment = Vec::new();
        let mut left = plane;
        while left > 0 {
            let run = left.min(128);
            segment.extend_from_slice(&[(1 - run as isize) as i8 as u8, 7]);
            left -= run;
        }
        let mut v = vec![0u8; 64];
        v[0..4].copy_from_slice(&segments.to_le_bytes());
        for i in 0..segments as usize {
            let offset = (64 + i * segment.len()) as u32;
            v[4 + 4 * i..8 + 4 * i].copy_from_slice(&offset.to_le_bytes());
        }
        for _ in 0..segments {
            v.extend_from_slice(&segment);
        }
        v
    }

    #[test]
    fn rle_segments_are_counted_against_rows_and_columns() {
        let shape = FrameShape {
            rows: 16,
            columns: 16,
            ..GREY_512
        };
        assert!(check_frame(Codestream::Rle, &rle(1, 256), shape).is_ok());
        let short = check_frame(Codestream::Rle, &rle(1, 200), shape).unwrap_err();
        assert!(short.contains("200 bytes"), "{short}");
        let long = check_frame(Codestream::Rle, &rle(1, 256 + 1024), shape).unwrap_err();
        assert!(long.contains("more than"), "{long}");
        let many = check_frame(Codestream::Rle, &rle(3, 256), shape).unwrap_err();
        assert!(many.contains("3 segments"), "{many}");
        let mut bad = rle(1, 256);
        bad[4..8].copy_from_slice(&9999u32.to_le_bytes());
        assert!(check_frame(Codestream::Rle, &bad, shape).is_err());
        assert!(check_frame(Codestream::Rle, &[1, 0, 0], shape).is_err());
    }

    #[test]
    fn packbits_lengths_by_hand() {
        // A literal of 3, a run of 5, a no-op, a literal cut short (2 of 4 bytes there).
        assert_eq!(
            packbits_length(&[2, 1, 2, 3, 0xFC, 9, 0x80, 3, 1, 2], 100),
            10
        );
    }
}
