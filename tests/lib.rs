//! All integration tests, in one binary to keep link time down (libtorch is large).

mod bad_input;
mod browser;
mod cluster;
mod common;
mod dicom;
mod export;
mod formats;
mod gradcam;
mod guide;
mod hardened;
mod hostile;
mod import_weights;
mod layers;
mod many_classes;
mod metrics;
mod models;
mod ood;
mod pipeline;
mod precision;
mod resume;
mod serve;
mod split;
mod studies;
mod tune;
mod webdriver;
mod weights_fetch;
