//! Classification metrics, computed from labels and class probabilities.

pub mod classification;

pub use classification::*;
