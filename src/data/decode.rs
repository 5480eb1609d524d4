//! Reading an image file into pixels the model can take, with clear reasons when it cannot.
//!
//! Decoding is bounded (`image::Limits`) so that a decompression bomb or a 100-megapixel scan is
//! refused with a message instead of exhausting memory.

use std::path::Path;

use image::{imageops::FilterType, DynamicImage, ImageReader};

use crate::data::codestream::{check_frame, Codestream, FrameShape};
use crate::data::truncation::truncation;
use crate::error::{Error, ImageFault};

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
    let meta = std::fs::metadata(path).map_err(|e| Error::image(path, io_reason(&e)))?;
    if meta.len() == 0 {
        return Err(Error::image(path, "empty file (0 bytes)"));
    }
    // The format comes from the content: a text file named .png is not a PNG.
    let mut head = [0u8; 132];
    let n = read_head(path, &mut head).map_err(|e| Error::image(path, io_reason(&e)))?;
    if is_dicom(&head[..n]) {
        let bytes = std::fs::read(path).map_err(|e| Error::image(path, io_reason(&e)))?;
        return contained(path, || decode_dicom_bytes(&bytes, path, MAX_DICOM_PIXELS));
    }
    let format = guess_format(path, &head[..n])?;
    // The whole file, once: checked for truncation, then decoded from memory.
    let bytes = std::fs::read(path).map_err(|e| Error::image(path, io_reason(&e)))?;
    if let Some(reason) = truncation(&bytes) {
        return Err(Error::image(path, reason));
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
        return Err(Error::image(name, "empty file (0 bytes)"));
    }
    if is_dicom(bytes) {
        return contained(name, || decode_dicom_bytes(bytes, name, max_pixels));
    }
    let format = guess_format(name, bytes)?;
    if let Some(reason) = truncation(bytes) {
        return Err(Error::image(name, reason));
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
        Err(Error::image_fault(
            name,
            ImageFault::DecoderFault,
            format!("the decoder failed on this image ({message}); the image is refused"),
        ))
    })
}

fn too_many_pixels(name: &Path, w: u32, h: u32, max_pixels: u64) -> Error {
    Error::image_too_large(
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
        Error::image_unsupported(
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
            samples: int(tags::SAMPLES_PER_PIXEL).unwrap_or(1).max(1),
            bytes_per_sample: int(tags::BITS_ALLOCATED).unwrap_or(8).max(1).div_ceil(8),
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
        Err(Error::image_too_large(
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
    let meta = dicom_object::meta::FileMetaTable::from_reader(&bytes[128..])
        .map_err(|e| Error::image(name, dicom_reason("unreadable DICOM file meta header", &e)))?;
    check_transfer_syntax(meta.transfer_syntax(), name)?;
    let codestream = Codestream::of_transfer_syntax(meta.transfer_syntax());
    let open = || OpenFileOptions::new().read_preamble(ReadPreamble::Never);
    // Every element before the pixel data (a deflated set is inflated only that far).
    let header = open()
        .read_until(tags::PIXEL_DATA)
        .from_reader(&bytes[128..])
        .map_err(|e| Error::image(name, dicom_reason("unreadable DICOM", &e)))?;
    let size = DicomSize::of(&header);
    if let Some(size) = size {
        size.check(name, max_pixels)?;
    }
    drop(header);
    let inflated;
    let whole: &[u8] = if meta.transfer_syntax() == DEFLATED_EXPLICIT_VR_LE {
        let cap = size.map_or(0, |s| s.bytes()) + INFLATE_SLACK_BYTES;
        inflated = inflate_data_set(bytes, meta, cap, name)?;
        &inflated
    } else {
        bytes
    };
    let obj = open()
        .from_reader(&whole[128..])
        .map_err(|e| Error::image(name, dicom_reason("unreadable DICOM", &e)))?;
    if obj.element(tags::PIXEL_DATA).is_err() {
        return Err(Error::image_fault(
            name,
            ImageFault::Unprocessable,
            "DICOM without pixel data (no PixelData element)",
        ));
    }
    let Some(size) = DicomSize::of(&obj) else {
        return Err(Error::image(
            name,
            "DICOM without image size (Rows/Columns)",
        ));
    };
    // The full read must agree with the header that was judged.
    size.check(name, max_pixels)?;
    if size.frames > 1 {
        return Err(Error::image_fault(
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
            .map_err(|e| Error::image(name, dicom_reason("DICOM pixel data", &e)))?;
        pixels
            .to_dynamic_image_with_options(0, &ConvertOptions::new())
            .map_err(|e| Error::image(name, dicom_reason("DICOM pixel data", &e)))
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
        return Err(Error::image(
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
    check_frame(kind, &frame, shape).map_err(|why| Error::image(name, why))
}

/// The file with its deflated data set inflated (at most `cap` bytes, else refused as too
/// large) and its transfer syntax set to explicit VR little endian, for dicom-rs to read.
fn inflate_data_set(
    bytes: &[u8],
    mut meta: dicom_object::meta::FileMetaTable,
    cap: u64,
    name: &Path,
) -> Result<Vec<u8>, Error> {
    use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
    use std::io::Read;
    // Preamble, "DICM", the group length element (12 bytes), then the rest of group 2.
    let start = 128 + 4 + 12 + meta.information_group_length as usize;
    let deflated = bytes.get(start..).ok_or_else(|| {
        Error::image(
            name,
            "unreadable DICOM: the file meta group runs past the end",
        )
    })?;
    let mut data = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(cap + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::image(name, format!("corrupt deflated DICOM data set: {e}")))?;
    if data.len() as u64 > cap {
        return Err(Error::image_too_large(
            name,
            format!(
                "image too large: the deflated DICOM data set inflates past {} MiB, more than its header's image size allows",
                cap >> 20
            ),
        ));
    }
    let explicit = TransferSyntaxRegistry
        .get(EXPLICIT_VR_LE)
        .ok_or_else(|| Error::image(name, "explicit VR little endian is not registered"))?;
    meta.set_transfer_syntax(explicit);
    let mut out = Vec::with_capacity(start + data.len() + 64);
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).map_err(|e| {
        Error::image(
            name,
            dicom_reason("rewriting the DICOM file meta group", &e),
        )
    })?;
    out.extend_from_slice(&data);
    Ok(out)
}

/// Refuses, by name, a DICOM whose transfer syntax this build cannot decode (JPEG 2000, JPEG-LS,
/// JPEG XL, HTJ2K: dicom-rs decodes them only with C libraries xray does not link).
fn check_transfer_syntax(uid: &str, name: &Path) -> Result<(), Error> {
    use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
    let advice = "send it uncompressed (for example `gdcmconv --raw` or `dcmdjpeg`)";
    match TransferSyntaxRegistry.get(uid) {
        None => Err(Error::image_unsupported(
            name,
            format!("DICOM transfer syntax {uid} is unknown to xray; {advice}"),
        )),
        Some(ts) if !ts.can_decode_all() => Err(Error::image_unsupported(
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
        image::ImageError::Limits(_) => Error::image_too_large(
            name,
            format!(
                "image too large (limit {MAX_IMAGE_SIDE_PX}x{MAX_IMAGE_SIDE_PX} pixels, {} MiB to decode)",
                MAX_DECODE_BYTES >> 20
            ),
        ),
        image::ImageError::Unsupported(u) => {
            Error::image_unsupported(name, format!("unsupported image: {u}"))
        }
        image::ImageError::Decoding(d) => {
            Error::image(name, format!("corrupt or truncated image: {d}"))
        }
        other => Error::image(name, other.to_string()),
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

/// Decodes `path` and returns its model pixels; see [`to_model_pixels`].
pub fn load_model_pixels(path: &Path, size: u32, channels: u32) -> Result<Vec<u8>, Error> {
    decode_image(path).map(|img| to_model_pixels(img, size, channels))
}
