//! What a refused image is answered with, on each side, from its [`ImageFault`]: the one
//! place that maps error kinds to HTTP statuses and DICOM C-STORE statuses.

use axum::http::StatusCode;

use crate::dicom::status;
use crate::error::{Error, ImageFault};

/// An image refusal taken apart: its kind and its reason without the file name.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The kind, which chooses the statuses.
    pub kind: ImageFault,
    /// Why, without the name (for logs and the audit).
    pub reason: String,
}

impl Refused {
    /// From any error of the decoding path: an image error keeps its kind, anything else is
    /// taken as unreadable.
    pub fn of(e: &Error) -> Refused {
        match e {
            Error::Image { kind, reason, .. } => Refused {
                kind: *kind,
                reason: reason.clone(),
            },
            other => Refused {
                kind: ImageFault::Corrupt,
                reason: other.to_string(),
            },
        }
    }

    /// The HTTP status: 413 too large, 415 unsupported, 422 anything else wrong with the file.
    pub fn http_status(&self) -> StatusCode {
        http_status(self.kind)
    }

    /// The C-STORE status: out of resources for too large, cannot understand otherwise.
    pub fn dicom_status(&self) -> u16 {
        dicom_status(self.kind)
    }
}

/// The HTTP status of an image refused for `kind`.
pub fn http_status(kind: ImageFault) -> StatusCode {
    match kind {
        ImageFault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ImageFault::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ImageFault::Corrupt | ImageFault::Unprocessable | ImageFault::DecoderFault => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    }
}

/// The DICOM C-STORE status of an image refused for `kind` (PS3.4 B.2.3).
pub fn dicom_status(kind: ImageFault) -> u16 {
    match kind {
        ImageFault::TooLarge => status::OUT_OF_RESOURCES,
        ImageFault::Unsupported
        | ImageFault::Corrupt
        | ImageFault::Unprocessable
        | ImageFault::DecoderFault => status::CANNOT_UNDERSTAND,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_kind_not_the_words() {
        let e = Error::image_fault(
            std::path::Path::new("a"),
            ImageFault::TooLarge,
            "cannot decode this",
        );
        let r = Refused::of(&e);
        assert_eq!(r.http_status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.dicom_status(), 0xA700);
        let e = Error::image(std::path::Path::new("a"), "image too large, says the text");
        let r = Refused::of(&e);
        assert_eq!(r.http_status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.dicom_status(), 0xC000);
        assert_eq!(
            http_status(ImageFault::Unsupported),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(dicom_status(ImageFault::DecoderFault), 0xC000);
    }
}
