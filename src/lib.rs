//! xray: turn a folder of medical images into a trained, evaluated, explainable classifier.
//!
//! The library does the work and knows nothing of the command line except in [`cli`] and
//! [`commands`], which only wire arguments to it.
//!
//! The modules stand in floors, bottom to top; each uses only modules on floors below its own
//! (the test `layers` in `tests/` reads this table and checks every `crate::` path against it):
//!
//! | floor | modules | what they hold |
//! |---|---|---|
//! | 0 | [`error`], [`fsutil`], [`progress`], [`alloc`], [`choice`], [`metrics`] | errors, atomic files, progress bars, the allocator, closed sets of names, classification metrics |
//! | 1 | [`torch_ext`] | what libtorch has and tch does not expose; the CUDA driver |
//! | 2 | [`models`] | the networks and their architectures |
//! | 3 | [`config`] | the training config and its choices |
//! | 4 | [`data`] | scan, split, decode, augment, load, synth |
//! | 5 | [`ood`] | the out-of-distribution guard |
//! | 6 | [`compute`], [`run`] | device, precision and scoring a network; the run folder |
//! | 7 | [`infer`] | the `Predictor`: a trained run loaded for inference |
//! | 8 | [`evaluate`], [`export`], [`predict`] | evaluation and comparison of runs, TorchScript export, prediction files |
//! | 9 | [`report`] | tables, plots and HTML pages |
//! | 10 | [`explain`], [`train`] | heatmaps; training |
//! | 11 | [`dicom`], [`tune`] | results as DICOM objects and their delivery; hyperparameter search |
//! | 12 | [`serve`] | the HTTP server and the DICOM node |
//! | 13 | [`commands`] | one module per subcommand |
//! | 14 | [`cli`] | the command line |
//!
//! Below floor 0, outside this crate: `crates/xray-codec` (no libtorch), the decoding of what
//! the disk and the network hand xray (images, DICOM, compressed frames, DIMSE messages),
//! which `fuzz/` fuzzes; [`data::decode`] and [`error`] take it in.

pub mod alloc;
pub mod choice;
pub mod cli;
pub mod commands;
pub mod compute;
pub mod config;
pub mod data;
pub mod dicom;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod export;
pub mod fsutil;
pub mod infer;
pub mod metrics;
pub mod models;
pub mod ood;
pub mod predict;
pub mod progress;
pub mod report;
pub mod run;
pub mod serve;
pub mod torch_ext;
pub mod train;
pub mod tune;

pub use error::Error;
