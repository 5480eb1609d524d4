//! Classification metrics, computed from labels and class probabilities.

pub mod calibration;
pub mod classification;
pub mod multilabel;
pub mod operating;

pub use classification::*;
