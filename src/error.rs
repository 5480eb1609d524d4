//! The library's error kinds that decide the process exit code.
//!
//! Most failures travel as `anyhow::Error` with context; the ones that are the user's to fix
//! (a bad config key, a missing folder) are raised as [`Error::Usage`] so that the command line
//! can exit with code 2 and print a single line.

use std::path::Path;

/// Errors with a meaning for the caller, beyond "something failed".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad usage or a bad config: the user must change the command or the file (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// An input image could not be read or decoded.
    #[error("{path}: {reason}")]
    Image {
        /// The file that failed.
        path: String,
        /// What kind of failure: what HTTP and DICOM answer with is chosen from this, never
        /// from the words of `reason`.
        kind: ImageFault,
        /// Why, in words.
        reason: String,
    },
}

pub use xray_codec::{ImageError, ImageFault};

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        Error::Image {
            path: e.path,
            kind: e.kind,
            reason: e.reason,
        }
    }
}

impl Error {
    /// A usage or config error (exit code 2).
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    /// An image that could not be read (damaged, truncated, unreadable), naming the file.
    pub fn image(path: &Path, reason: impl Into<String>) -> Self {
        Error::image_fault(path, ImageFault::Corrupt, reason)
    }

    /// An image refused for a `kind` of reason, naming the file.
    pub fn image_fault(path: &Path, kind: ImageFault, reason: impl Into<String>) -> Self {
        ImageError::new(path, kind, reason).into()
    }
}

/// Exit code for an error chain: 2 when any cause is a usage/config error, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let usage = err
        .chain()
        .any(|e| matches!(e.downcast_ref::<Error>(), Some(Error::Usage(_))));
    if usage {
        2
    } else {
        1
    }
}

/// Turns a libtorch error into one readable line: libtorch appends a C++ backtrace
/// ("Exception raised from ...") that means nothing to a user.
pub fn torch_message(err: &tch::TchError) -> String {
    let text = err.to_string();
    let first = text
        .split("Exception raised from")
        .next()
        .unwrap_or(&text)
        .trim();
    first.lines().next().unwrap_or(first).trim().to_string()
}

/// `Result` conversion for libtorch calls: the error keeps one line, without the backtrace.
pub trait TorchResultExt<T> {
    /// Maps a `TchError` to an `anyhow::Error` holding its first line only.
    fn torch(self) -> anyhow::Result<T>;
}

impl<T> TorchResultExt<T> for Result<T, tch::TchError> {
    fn torch(self) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!(torch_message(&e)))
    }
}
