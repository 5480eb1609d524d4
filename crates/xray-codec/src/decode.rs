//! Reading an image file into pixels the model can take, with clear reasons when it cannot.
//!
//! Decoding is bounded (`image::Limits`) so that a decompression bomb or a 100-megapixel scan is
//! refused with a message instead of exhausting memory.

use std::path::Path;

use image::{imageops::FilterType, DynamicImage, ImageReader};

use crate::codestream::{check_frame, Codestream, FrameShape};
use crate::elements::{check_lengths, Encoding};
use crate::truncation::truncation;
use crate::{ImageError as Error, ImageFault};

/// Largest accepted width or height in pixels.
pub const MAX_IMAGE_SIDE_PX: u32 = 16_384;
/// Largest accepted decoding allocation in bytes.
pub const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// File extensions (lower case) that xray reads as images.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom"];

/// Whether `path` has an image extension xray reads.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

fn limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE_PX);
    limits.max_image_height = Some(MAX_IMAGE_SIDE_PX);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// Decodes `path` (format from its content, not its name), refusing empty, corrupt, unsupported
/// and oversized files with a reason.
pub fn decode_image(path: &Path) -> Result<DynamicImage, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::corrupt(path, io_reason(&e)))?;
    if meta.len() == 0 {
        return Err(Error::corrupt(path, "empty file (0 bytes)"));
    }
    // The format comes from the content: a text file named .png is not a PNG.
    let mut head = [0u8; 132];
    let n = read_head(path, &mut head).map_err(|e| Error::corrupt(path, io_reason(&e)))?;
    if is_dicom(&head[..n]) {
        let bytes = std::fs::read(path).map_err(|e| Error::corrupt(path, io_reason(&e)))?;
        return contained(path, || decode_dicom_bytes(&bytes, path, MAX_DICOM_PIXELS));
    }
    let format = guess_format(path, &head[..n])?;
    // The whole file, once: checked for truncation, then decoded from memory.
    let bytes = std::fs::read(path).map_err(|e| Error::corrupt(path, io_reason(&e)))?;
    if let Some(reason) = truncation(&bytes) {
        return Err(Error::corrupt(path, reason));
    }
    let mut reader = ImageReader::with_format(std::io::Cursor::new(&bytes), format);
    reader.limits(limits());
    contained(path, || reader.decode().map_err(|e| image_error(path, &e)))
}

/// Decodes an image held in memory (an upload), `name` standing for it in messages; refuses
/// images over `max_pixels` from their header, before decoding.
pub fn decode_image_bytes(
    bytes: &[u8],
    name: &Path,
    max_pixels: u64,
) -> Result<DynamicImage, Error> {
    if bytes.is_empty() {
        return Err(Error::corrupt(name, "empty file (0 bytes)"));
    }
    if is_dicom(bytes) {
        return contained(name, || decode_dicom_bytes(bytes, name, max_pixels));
    }
    let format = guess_format(name, bytes)?;
    if let Some(reason) = truncation(bytes) {
        return Err(Error::corrupt(name, reason));
    }
    let reader = || {
        let mut r = ImageReader::with_format(std::io::Cursor::new(bytes), format);
        r.limits(limits());
        r
    };
    let (w, h) = reader()
        .into_dimensions()
        .map_err(|e| image_error(name, &e))?;
    if w as u64 * h as u64 > max_pixels {
        return Err(too_many_pixels(name, w, h, max_pixels));
    }
    contained(name, || {
        reader().decode().map_err(|e| image_error(name, &e))
    })
}

thread_local! {
    /// Set while this thread runs a decoder inside [`contained`]: its panics are caught there
    /// and reported as a refusal, so the panic hook keeps quiet (no message, no backtrace).
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Where the panic hook leaves a caught decoder panic's message and place.
    static PANIC_MESSAGE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs a decoder so that a panic inside it (a bug in a codec, reached by a crafted file)
/// costs this one image and not the process, the association or the worker: the panic is
/// caught and becomes [`ImageFault::DecoderFault`], with the panic's message and place in
/// the reason and nothing written to stderr.
pub fn contained<T>(name: &Path, decode: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if DECODING.with(|d| d.get()) {
                let place = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let text = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                let line = text.lines().next().unwrap_or_default().to_string();
                PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(format!("{line}{place}")));
            } else {
                previous(info);
            }
        }));
    });
    let was = DECODING.with(|d| d.replace(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode));
    DECODING.with(|d| d.set(was));
    outcome.unwrap_or_else(|_| {
        let message = PANIC_MESSAGE
            .with(|m| m.borrow_mut().take())
            .unwrap_or_else(|| "panic".into());
        Err(Error::new(
            name,
            ImageFault::DecoderFault,
            format!("the decoder failed on this image ({message}); the image is refused"),
        ))
    })
}

fn too_many_pixels(name: &Path, w: u32, h: u32, max_pixels: u64) -> Error {
    Error::too_large(
        name,
        format!(
            "image too large ({w}x{h} = {:.1} megapixels; limit {:.1})",
            (w as u64 * h as u64) as f64 / 1e6,
            max_pixels as f64 / 1e6
        ),
    )
}

/// DICOM Part 10: a 128-byte preamble, then "DICM".
fn is_dicom(head: &[u8]) -> bool {
    head.len() >= 132 && &head[128..132] == b"DICM"
}

/// Whether the file at `path` is DICOM Part 10 (its magic "DICM" at byte 128); false when it
/// cannot be read.
pub fn is_dicom_file(path: &Path) -> bool {
    let mut head = [0u8; 132];
    read_head(path, &mut head).is_ok_and(|n| is_dicom(&head[..n]))
}

fn guess_format(name: &Path, head: &[u8]) -> Result<image::ImageFormat, Error> {
    image::guess_format(head).map_err(|_| {
        Error::unsupported(
            name,
            "not a recognised image format (PNG, JPEG, BMP, TIFF or DICOM)",
        )
    })
}

/// Reads up to `buf.len()` bytes from the start of the file.
fn read_head(path: &Path, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Largest DICOM image read from a data set folder, in pixels (all frames): the side limit
/// squared. Uploads to `serve` have their own, smaller limit.
pub const MAX_DICOM_PIXELS: u64 = MAX_IMAGE_SIDE_PX as u64 * MAX_IMAGE_SIDE_PX as u64;

/// The deflated transfer syntax: the data set after the file meta group is raw deflate.
const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
/// What a deflated data set is, once inflated.
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// How much of a deflated data set is inflated to read its header (the elements before the
/// pixel data): enough for any header seen in practice, small enough to cost nothing.
const HEADER_INFLATE_BYTES: u64 = 4 << 20;
/// What an inflated data set may hold beyond its pixels (header elements, overlays, icons).
const INFLATE_SLACK_BYTES: u64 = 16 << 20;

/// An image's size as its DICOM header declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DicomSize {
    rows: u32,
    columns: u32,
    frames: u32,
    samples: u32,
    bytes_per_sample: u32,
}

impl DicomSize {
    /// Reads Rows, Columns, NumberOfFrames, SamplesPerPixel and BitsAllocated; `None` without
    /// Rows or Columns.
    fn of(obj: &dicom_object::InMemDicomObject) -> Option<DicomSize> {
        use dicom_dictionary_std::tags;
        let int = |tag| obj.element(tag).ok().and_then(|e| e.to_int::<u32>().ok());
        Some(DicomSize {
            rows: int(tags::ROWS)?,
            columns: int(tags::COLUMNS)?,
            frames: int(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1),
            // As written (0 is refused by `check`): the decoders size their output from these.
            samples: int(tags::SAMPLES_PER_PIXEL).unwrap_or(1),
            bytes_per_sample: int(tags::BITS_ALLOCATED).unwrap_or(8).div_ceil(8),
        })
    }

    fn pixels(&self) -> u64 {
        self.rows as u64 * self.columns as u64 * self.frames as u64
    }

    /// Bytes of the decoded pixel data: rows x columns x samples x frames x bytes a sample.
    fn bytes(&self) -> u64 {
        self.pixels() * self.samples as u64 * self.bytes_per_sample as u64
    }

    /// Refuses, as too large, what would decode to more than `max_pixels` pixels or
    /// [`MAX_DECODE_BYTES`] bytes, or a side over [`MAX_IMAGE_SIDE_PX`].
    fn check(&self, name: &Path, max_pixels: u64) -> Result<(), Error> {
        let (c, r) = (self.columns, self.rows);
        let frames = if self.frames > 1 {
            format!(" x {} frames", self.frames)
        } else {
            String::new()
        };
        if r == 0 || c == 0 {
            return Err(Error::corrupt(
                name,
                format!("DICOM image of {c}x{r} pixels: Rows and Columns must be above 0"),
            ));
        }
        if self.samples == 0 || self.bytes_per_sample == 0 {
            return Err(Error::corrupt(
                name,
                "DICOM image with 0 samples per pixel or 0 bits allocated",
            ));
        }
        let why = if r > MAX_IMAGE_SIDE_PX || c > MAX_IMAGE_SIDE_PX {
            format!("limit {MAX_IMAGE_SIDE_PX}x{MAX_IMAGE_SIDE_PX} pixels")
        } else if self.pixels() > max_pixels {
            format!("limit {:.1} megapixels", max_pixels as f64 / 1e6)
        } else if self.bytes() > MAX_DECODE_BYTES {
            format!(
                "{} MiB of pixel data; limit {} MiB",
                self.bytes() >> 20,
                MAX_DECODE_BYTES >> 20
            )
        } else {
            return Ok(());
        };
        Err(Error::too_large(
            name,
            format!(
                "image too large ({c}x{r}{frames} = {:.1} megapixels; {why}), judged from the DICOM header before decoding",
                self.pixels() as f64 / 1e6
            ),
        ))
    }
}

/// The first line of a dicom-rs error, after `what`.
fn dicom_reason(what: &str, e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    format!("{what}: {}", text.lines().next().unwrap_or(&text))
}

/// Decodes a DICOM Part 10 file held in memory (`name` stands for it in messages), never
/// writing it anywhere: the header is read first, up to the pixel data, and an image that would
/// decode to more than `max_pixels` pixels (rows x columns x frames) or more than
/// [`MAX_DECODE_BYTES`] bytes is refused as too large before any pixel is decoded. A deflated
/// data set is inflated with a cap derived from that header, so a deflate bomb stops at the
/// cap. Then rescale slope/intercept, the file's VOI window (or min-max normalisation),
/// MONOCHROME1 inverted so that bone is bright, 8 to 16 bits kept.
fn decode_dicom_bytes(bytes: &[u8], name: &Path, max_pixels: u64) -> Result<DynamicImage, Error> {
    use dicom_dictionary_std::tags;
    use dicom_object::file::ReadPreamble;
    use dicom_object::OpenFileOptions;
    use dicom_pixeldata::{ConvertOptions, PixelDecoder};
    let Checked {
        meta,
        head,
        complete,
        encoding,
    } = check_structure(bytes, name)?;
    let codestream = Codestream::of_transfer_syntax(meta.transfer_syntax());
    let deflated = meta.transfer_syntax() == DEFLATED_EXPLICIT_VR_LE;
    let open = || OpenFileOptions::new().read_preamble(ReadPreamble::Never);
    let header = open()
        .read_until(tags::PIXEL_DATA)
        .from_reader(&head[128..])
        .map_err(|e| Error::corrupt(name, dicom_reason("unreadable DICOM", &e)))?;
    let size = DicomSize::of(&header);
    if let Some(size) = size {
        size.check(name, max_pixels)?;
    }
    drop(header);
    let inflated;
    let whole: &[u8] = if deflated && !complete {
        let cap = size.map_or(0, |s| s.bytes()) + INFLATE_SLACK_BYTES;
        inflated = inflate_data_set(bytes, meta, cap, name, false)?.0;
        let start = data_set_start(&inflated, name)?;
        check_lengths(&inflated[start..], encoding, false)
            .map_err(|why| Error::corrupt(name, format!("unreadable DICOM: {why}")))?;
        &inflated
    } else if deflated {
        &head
    } else {
        bytes
    };
    let obj = open()
        .from_reader(&whole[128..])
        .map_err(|e| Error::corrupt(name, dicom_reason("unreadable DICOM", &e)))?;
    if obj.element(tags::PIXEL_DATA).is_err() {
        return Err(Error::new(
            name,
            ImageFault::Unprocessable,
            "DICOM without pixel data (no PixelData element)",
        ));
    }
    let Some(size) = DicomSize::of(&obj) else {
        return Err(Error::corrupt(
            name,
            "DICOM without image size (Rows/Columns)",
        ));
    };
    // The full read must agree with the header that was judged.
    size.check(name, max_pixels)?;
    if size.frames > 1 {
        return Err(Error::new(
            name,
            ImageFault::Unprocessable,
            format!(
                "multi-frame DICOM ({} frames): xray reads single images; send one frame per file",
                size.frames
            ),
        ));
    }
    if let Some(kind) = codestream {
        check_codestream(&obj, kind, size, name)?;
    }
    contained(name, || {
        let pixels = obj
            .decode_pixel_data()
            .map_err(|e| Error::corrupt(name, dicom_reason("DICOM pixel data", &e)))?;
        pixels
            .to_dynamic_image_with_options(0, &ConvertOptions::new())
            .map_err(|e| Error::corrupt(name, dicom_reason("DICOM pixel data", &e)))
    })
}

/// Reads the compressed frame's own header (JPEG SOF, RLE segment table) and refuses the
/// image, before the decoder allocates anything, when it disagrees with the DICOM header that
/// was judged against the limits: the decoder sizes its buffers from the codestream.
fn check_codestream(
    obj: &dicom_object::FileDicomObject<dicom_object::InMemDicomObject>,
    kind: Codestream,
    size: DicomSize,
    name: &Path,
) -> Result<(), Error> {
    use dicom_dictionary_std::tags;
    let Some(fragments) = obj
        .element(tags::PIXEL_DATA)
        .ok()
        .and_then(|e| e.value().fragments())
    else {
        return Err(Error::corrupt(
            name,
            "the transfer syntax is compressed but the pixel data is not encapsulated",
        ));
    };
    // One frame (multi-frame images are refused above): its fragments in order.
    let frame: Vec<u8> = fragments.concat();
    let shape = FrameShape {
        rows: size.rows,
        columns: size.columns,
        samples: size.samples,
        bits_allocated: size.bytes_per_sample * 8,
    };
    check_frame(kind, &frame, shape).map_err(|why| Error::corrupt(name, why))
}

/// A DICOM Part 10 file in memory whose framing was checked: its file meta group, the bytes
/// its header is read from (the file, or the beginning of a deflated data set inflated),
/// whether those are the whole data set, and its encoding.
struct Checked<'a> {
    meta: dicom_object::meta::FileMetaTable,
    head: std::borrow::Cow<'a, [u8]>,
    complete: bool,
    encoding: Encoding,
}

/// Checks a DICOM Part 10 file held in memory before dicom-rs parses any of it: every element
/// header of the file meta group and of the data set (of a deflated one, the header, within
/// its first [`HEADER_INFLATE_BYTES`] inflated) against the bytes there, and the transfer
/// syntax against what this build decodes. dicom-rs reserves an element's declared length
/// before reading it: this is what stands between a 4 KB upload and a 4 GB allocation. Call
/// it before any dicom-rs read of bytes a peer sent.
pub fn check_dicom(bytes: &[u8], name: &Path) -> Result<(), Error> {
    check_structure(bytes, name).map(|_| ())
}

fn check_structure<'a>(bytes: &'a [u8], name: &Path) -> Result<Checked<'a>, Error> {
    if !is_dicom(bytes) {
        return Err(Error::corrupt(
            name,
            "not DICOM Part 10 (no DICM at byte 128)",
        ));
    }
    // The file meta group's own lengths first: its reader, too, reserves what a length says.
    let meta_end = data_set_start(bytes, name)?;
    let explicit_le = Encoding {
        implicit: false,
        big_endian: false,
    };
    check_lengths(&bytes[132..meta_end], explicit_le, false)
        .map_err(|why| Error::corrupt(name, format!("unreadable DICOM file meta header: {why}")))?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(&bytes[128..])
        .map_err(|e| Error::corrupt(name, dicom_reason("unreadable DICOM file meta header", &e)))?;
    check_transfer_syntax(meta.transfer_syntax(), name)?;
    let encoding = Encoding::of(meta.transfer_syntax());
    // The header (every element before the pixel data): of a deflated set, its first
    // HEADER_INFLATE_BYTES inflated, which must hold it.
    let (head, complete): (std::borrow::Cow<[u8]>, bool) =
        if meta.transfer_syntax() == DEFLATED_EXPLICIT_VR_LE {
            let (head, complete) =
                inflate_data_set(bytes, meta.clone(), HEADER_INFLATE_BYTES, name, true)?;
            (head.into(), complete)
        } else {
            (bytes.into(), true)
        };
    let start = data_set_start(&head, name)?;
    check_lengths(&head[start..], encoding, !complete)
        .map_err(|why| Error::corrupt(name, format!("unreadable DICOM: {why}")))?;
    Ok(Checked {
        meta,
        head,
        complete,
        encoding,
    })
}

/// The file with its deflated data set inflated (at most `cap` bytes, else refused as too
/// large) and its transfer syntax set to explicit VR little endian, for dicom-rs to read.
fn inflate_data_set(
    bytes: &[u8],
    mut meta: dicom_object::meta::FileMetaTable,
    cap: u64,
    name: &Path,
    partial: bool,
) -> Result<(Vec<u8>, bool), Error> {
    use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
    use std::io::Read;
    // Preamble, "DICM", the group length element (12 bytes), then the rest of group 2.
    let start = 128 + 4 + 12 + meta.information_group_length as usize;
    let deflated = bytes.get(start..).ok_or_else(|| {
        Error::corrupt(
            name,
            "unreadable DICOM: the file meta group runs past the end",
        )
    })?;
    // Reserved up front, up to 64 MiB: read_to_end would double its buffer past the cap.
    let mut data = Vec::with_capacity((cap + 1).min(64 << 20) as usize);
    flate2::read::DeflateDecoder::new(deflated)
        .take(cap + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::corrupt(name, format!("corrupt deflated DICOM data set: {e}")))?;
    let complete = data.len() as u64 <= cap;
    if !complete && partial {
        data.truncate(cap as usize);
    } else if !complete {
        return Err(Error::too_large(
            name,
            format!(
                "image too large: the deflated DICOM data set inflates past {} MiB, more than its header's image size allows",
                cap >> 20
            ),
        ));
    }
    let explicit = TransferSyntaxRegistry
        .get(EXPLICIT_VR_LE)
        .ok_or_else(|| Error::corrupt(name, "explicit VR little endian is not registered"))?;
    meta.set_transfer_syntax(explicit);
    let mut out = Vec::with_capacity(start + data.len() + 64);
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).map_err(|e| {
        Error::corrupt(
            name,
            dicom_reason("rewriting the DICOM file meta group", &e),
        )
    })?;
    out.extend_from_slice(&data);
    Ok((out, complete))
}

/// Where the data set of a Part 10 file in memory starts: after the preamble, "DICM", the
/// group length element (12 bytes) and the rest of the file meta group it measures.
fn data_set_start(file: &[u8], name: &Path) -> Result<usize, Error> {
    let length = file
        .get(140..144)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| Error::corrupt(name, "unreadable DICOM: no file meta group"))?;
    let start = 144usize.saturating_add(length);
    if start > file.len() {
        return Err(Error::corrupt(
            name,
            "unreadable DICOM: the file meta group runs past the end",
        ));
    }
    Ok(start)
}

/// Refuses, by name, a DICOM whose transfer syntax this build cannot decode (JPEG 2000, JPEG-LS,
/// JPEG XL, HTJ2K: dicom-rs decodes them only with C libraries xray does not link).
fn check_transfer_syntax(uid: &str, name: &Path) -> Result<(), Error> {
    use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
    let advice = "send it uncompressed (for example `gdcmconv --raw` or `dcmdjpeg`)";
    match TransferSyntaxRegistry.get(uid) {
        None => Err(Error::unsupported(
            name,
            format!("DICOM transfer syntax {uid} is unknown to xray; {advice}"),
        )),
        Some(ts) if !ts.can_decode_all() => Err(Error::unsupported(
            name,
            format!(
                "DICOM transfer syntax {} ({uid}) is compressed in a way xray cannot decode; {advice}",
                ts.name()
            ),
        )),
        Some(_) => Ok(()),
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn image_error(name: &Path, e: &image::ImageError) -> Error {
    match e {
        image::ImageError::Limits(_) => Error::too_large(
            name,
            format!(
                "image too large (limit {MAX_IMAGE_SIDE_PX}x{MAX_IMAGE_SIDE_PX} pixels, {} MiB to decode)",
                MAX_DECODE_BYTES >> 20
            ),
        ),
        image::ImageError::Unsupported(u) => {
            Error::unsupported(name, format!("unsupported image: {u}"))
        }
        image::ImageError::Decoding(d) => {
            Error::corrupt(name, format!("corrupt or truncated image: {d}"))
        }
        other => Error::corrupt(name, other.to_string()),
    }
}

/// Converts to `channels` (1 = grey, 3 = RGB; alpha dropped, 16-bit scaled to 8) and resizes
/// to `size`x`size`: the shorter side to `size`, then a centre crop. Returns HWC bytes.
pub fn to_model_pixels(img: DynamicImage, size: u32, channels: u32) -> Vec<u8> {
    let fitted = if img.width() == size && img.height() == size {
        img
    } else {
        img.resize_to_fill(size, size, FilterType::Triangle)
    };
    // into_*: no copy when the image already has the wanted layout.
    match channels {
        1 => fitted.into_luma8().into_raw(),
        _ => fitted.into_rgb8().into_raw(),
    }
}
