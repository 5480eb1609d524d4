//! Everything between a folder of images and a batch tensor: scanning, splitting, decoding,
//! augmentation, the parallel loader, and the synthetic dataset.

pub mod archive;
pub mod augment;
pub mod decode;
pub mod loader;
pub mod multilabel;
pub mod near_dup;
pub mod on_device;
pub mod scan;
pub mod split;
pub mod splits;
pub mod synth;

pub use xray_codec::{codestream, truncation};
