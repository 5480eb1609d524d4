//! What xray reads from the disk and the network before anything of a model is involved:
//! image files and uploads ([`decode`]), the size a compressed DICOM frame says of itself
//! ([`codestream`]), whether a JPEG or PNG ends early ([`truncation`]), and DIMSE messages
//! assembled from P-DATA ([`dimse`]).
//!
//! Everything here takes bytes a stranger may have chosen, and answers with a value or an
//! [`ImageError`] of a known [`ImageFault`]: never a panic (decoders run inside
//! [`decode::contained`]), never an allocation the input's own header did not justify. The
//! fuzz targets of `fuzz/` hold it to that.

pub mod codestream;
pub mod decode;
pub mod dimse;
pub mod elements;
pub mod truncation;

use std::path::Path;

/// Why an image was refused, as a closed set: each network answer (HTTP status, DICOM
/// C-STORE status) is mapped from it in one place (xray's `serve::refusal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFault {
    /// Larger than a limit (pixels, bytes, sides), judged before decoding.
    TooLarge,
    /// A format or DICOM encoding xray does not decode.
    Unsupported,
    /// Damaged, truncated, empty or self-contradictory (a codestream whose own size disagrees
    /// with its DICOM header), or not readable at all.
    Corrupt,
    /// Readable, but not one image xray can answer (several frames, no pixel data).
    Unprocessable,
    /// The decoder itself failed (a panic caught at the decoding boundary): the image is
    /// refused, the process goes on.
    DecoderFault,
}

/// An image that could not be read or decoded: which, what kind of failure, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ImageError {
    /// The file (or upload) that failed.
    pub path: String,
    /// What kind of failure.
    pub kind: ImageFault,
    /// Why, in words.
    pub reason: String,
}

impl ImageError {
    /// A refusal of `kind`, naming the file.
    pub fn new(path: &Path, kind: ImageFault, reason: impl Into<String>) -> Self {
        ImageError {
            path: path.display().to_string(),
            kind,
            reason: reason.into(),
        }
    }

    /// Damaged, truncated or unreadable.
    pub fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        Self::new(path, ImageFault::Corrupt, reason)
    }

    /// Over a size limit.
    pub fn too_large(path: &Path, reason: impl Into<String>) -> Self {
        Self::new(path, ImageFault::TooLarge, reason)
    }

    /// In a format or encoding xray does not decode.
    pub fn unsupported(path: &Path, reason: impl Into<String>) -> Self {
        Self::new(path, ImageFault::Unsupported, reason)
    }
}
