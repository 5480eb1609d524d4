//! xray: turn a folder of medical images into a trained, evaluated, explainable classifier.
//!
//! The library does the work and knows nothing of the command line except in [`cli`] and
//! [`commands`], which only wire arguments to it. Pipeline stages each have a module:
//! [`data`] (scan, split, decode, augment, load, synth), [`models`], [`train`], [`metrics`],
//! [`evaluate`], [`explain`], [`infer`] and [`tune`] (hyperparameter search over training runs).

pub mod alloc;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod config;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod export;
pub mod fsutil;
pub mod infer;
pub mod metrics;
pub mod models;
pub mod ood;
pub mod precision;
pub mod predict;
pub mod progress;
pub mod report;
pub mod run;
pub mod serve;
pub mod torch_ext;
pub mod train;
pub mod tune;

pub use error::Error;
