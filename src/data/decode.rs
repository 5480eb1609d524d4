//! Reading an image file into pixels the model can take, with clear reasons when it cannot:
//! [`xray_codec::decode`] (bounded, panic-contained decoding of PNG, JPEG, BMP, TIFF and
//! DICOM) with its errors as xray's [`Error::Image`].

use std::path::Path;

use image::DynamicImage;

use crate::error::Error;

pub use xray_codec::decode::{
    has_image_extension, is_dicom_file, to_model_pixels, IMAGE_EXTENSIONS, MAX_DECODE_BYTES,
    MAX_DICOM_PIXELS, MAX_IMAGE_SIDE_PX,
};

/// Decodes `path` (format from its content, not its name), refusing empty, corrupt, unsupported
/// and oversized files with a reason.
pub fn decode_image(path: &Path) -> Result<DynamicImage, Error> {
    Ok(xray_codec::decode::decode_image(path)?)
}

/// Decodes an image held in memory (an upload), `name` standing for it in messages; refuses
/// images over `max_pixels` from their header, before decoding.
pub fn decode_image_bytes(
    bytes: &[u8],
    name: &Path,
    max_pixels: u64,
) -> Result<DynamicImage, Error> {
    Ok(xray_codec::decode::decode_image_bytes(
        bytes, name, max_pixels,
    )?)
}

/// Decodes `path` and returns its model pixels; see [`to_model_pixels`].
pub fn load_model_pixels(path: &Path, size: u32, channels: u32) -> Result<Vec<u8>, Error> {
    decode_image(path).map(|img| to_model_pixels(img, size, channels))
}
