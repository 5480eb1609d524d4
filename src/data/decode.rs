//! Reading an image file into pixels the model can take, with clear reasons when it cannot.
//!
//! Decoding is bounded (`image::Limits`) so that a decompression bomb or a 100-megapixel scan is
//! refused with a message instead of exhausting memory.

use std::path::Path;

use image::{imageops::FilterType, DynamicImage, ImageReader};

use crate::data::truncation::truncation;
use crate::error::Error;

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
        return decode_dicom(path);
    }
    let format = guess_format(path, &head[..n])?;
    // The whole file, once: checked for truncation, then decoded from memory.
    let bytes = std::fs::read(path).map_err(|e| Error::image(path, io_reason(&e)))?;
    if let Some(reason) = truncation(&bytes) {
        return Err(Error::image(path, reason));
    }
    let mut reader = ImageReader::with_format(std::io::Cursor::new(&bytes), format);
    reader.limits(limits());
    reader
        .decode()
        .map_err(|e| Error::image(path, image_reason(&e)))
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
        // dicom-rs reads files; an upload goes through a private temporary one.
        let tmp = std::env::temp_dir().join(format!(
            "xray-upload-{}-{:x}.dcm",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&tmp, bytes).map_err(|e| Error::image(name, io_reason(&e)))?;
        let decoded = decode_dicom(&tmp);
        let _ = std::fs::remove_file(&tmp);
        // The reason only: the temporary file's name means nothing to the sender.
        let img = decoded.map_err(|e| match e {
            Error::Image { reason, .. } => Error::image(name, reason),
            other => Error::image(name, other.to_string()),
        })?;
        return check_pixels(img, name, max_pixels);
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
        .map_err(|e| Error::image(name, image_reason(&e)))?;
    if w as u64 * h as u64 > max_pixels {
        return Err(too_many_pixels(name, w, h, max_pixels));
    }
    reader()
        .decode()
        .map_err(|e| Error::image(name, image_reason(&e)))
}

fn too_many_pixels(name: &Path, w: u32, h: u32, max_pixels: u64) -> Error {
    Error::image(
        name,
        format!(
            "image too large ({w}x{h} = {:.1} megapixels; limit {:.1})",
            (w as u64 * h as u64) as f64 / 1e6,
            max_pixels as f64 / 1e6
        ),
    )
}

fn check_pixels(img: DynamicImage, name: &Path, max_pixels: u64) -> Result<DynamicImage, Error> {
    let (w, h) = (img.width(), img.height());
    if w as u64 * h as u64 > max_pixels {
        return Err(too_many_pixels(name, w, h, max_pixels));
    }
    Ok(img)
}

/// DICOM Part 10: a 128-byte preamble, then "DICM".
fn is_dicom(head: &[u8]) -> bool {
    head.len() >= 132 && &head[128..132] == b"DICM"
}

fn guess_format(name: &Path, head: &[u8]) -> Result<image::ImageFormat, Error> {
    image::guess_format(head).map_err(|_| {
        Error::image(
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

/// Decodes a DICOM file (dicom-rs): rescale slope/intercept, the file's VOI window (or min-max
/// normalisation), MONOCHROME1 inverted so that bone is bright, 8 to 16 bits kept.
fn decode_dicom(path: &Path) -> Result<DynamicImage, Error> {
    use dicom_dictionary_std::tags;
    use dicom_pixeldata::{ConvertOptions, PixelDecoder};
    let reason = |what: &str, e: &dyn std::fmt::Display| {
        let text = e.to_string();
        format!("{what}: {}", text.lines().next().unwrap_or(&text))
    };
    check_transfer_syntax(path)?;
    let obj = dicom_object::open_file(path)
        .map_err(|e| Error::image(path, reason("unreadable DICOM", &e)))?;
    if obj.element(tags::PIXEL_DATA).is_err() {
        return Err(Error::image(
            path,
            "DICOM without pixel data (no PixelData element)",
        ));
    }
    let frames = obj
        .element(tags::NUMBER_OF_FRAMES)
        .ok()
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1);
    if frames > 1 {
        return Err(Error::image(
            path,
            format!("multi-frame DICOM ({frames} frames): xray reads single images; send one frame per file"),
        ));
    }
    let dim = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
            .ok_or_else(|| Error::image(path, "DICOM without image size (Rows/Columns)"))
    };
    let (rows, cols) = (dim(tags::ROWS)?, dim(tags::COLUMNS)?);
    if rows > MAX_IMAGE_SIDE_PX || cols > MAX_IMAGE_SIDE_PX {
        return Err(Error::image(
            path,
            format!("image too large ({cols}x{rows}; limit {MAX_IMAGE_SIDE_PX}x{MAX_IMAGE_SIDE_PX} pixels)"),
        ));
    }
    let pixels = obj
        .decode_pixel_data()
        .map_err(|e| Error::image(path, reason("DICOM pixel data", &e)))?;
    pixels
        .to_dynamic_image_with_options(0, &ConvertOptions::new())
        .map_err(|e| Error::image(path, reason("DICOM pixel data", &e)))
}

/// Refuses, by name, a DICOM whose transfer syntax this build cannot decode (JPEG 2000, JPEG-LS,
/// JPEG XL, HTJ2K: dicom-rs decodes them only with C libraries xray does not link).
fn check_transfer_syntax(path: &Path) -> Result<(), Error> {
    use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| Error::image(path, io_reason(&e)))?;
    file.seek(SeekFrom::Start(128))
        .map_err(|e| Error::image(path, io_reason(&e)))?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(file.by_ref())
        .map_err(|e| Error::image(path, format!("unreadable DICOM file meta header: {e}")))?;
    let uid = meta.transfer_syntax();
    let advice = "send it uncompressed (for example `gdcmconv --raw` or `dcmdjpeg`)";
    match TransferSyntaxRegistry.get(uid) {
        None => Err(Error::image(
            path,
            format!("DICOM transfer syntax {uid} is unknown to xray; {advice}"),
        )),
        Some(ts) if !ts.can_decode_all() => Err(Error::image(
            path,
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

fn image_reason(e: &image::ImageError) -> String {
    match e {
        image::ImageError::Limits(_) => format!(
            "image too large (limit {MAX_IMAGE_SIDE_PX}x{MAX_IMAGE_SIDE_PX} pixels, {} MiB to decode)",
            MAX_DECODE_BYTES >> 20
        ),
        image::ImageError::Unsupported(u) => format!("unsupported image: {u}"),
        image::ImageError::Decoding(d) => format!("corrupt or truncated image: {d}"),
        other => other.to_string(),
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
