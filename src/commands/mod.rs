//! One module per subcommand: parse arguments, call the library, print.

pub mod compare;
pub mod demo;
pub mod dicom_send;
pub mod eval;
pub mod export;
pub mod gradcam;
pub mod import_weights;
pub mod merge;
pub mod predict;
pub mod serve;
pub mod split;
pub mod synth;
pub mod train;
pub mod tune;
pub mod weights;
