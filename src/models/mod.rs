//! Network architectures behind one trait that exposes the feature maps and the head
//! separately: Grad-CAM needs the last convolutional stage, and tch has no forward hooks.

pub mod cnn;

use anyhow::Result;
use tch::{nn, Tensor};

use crate::error::Error;

/// Architecture names accepted by `model.arch`.
pub const ARCHITECTURES: &[&str] = &["simple_cnn"];

/// An image classifier split at its last convolutional stage.
pub trait Classifier: Send {
    /// The last convolutional stage's feature maps, `[n, c, h, w]`.
    fn features(&self, xs: &Tensor, train: bool) -> Tensor;
    /// Logits from the feature maps, `[n, classes]`.
    fn head(&self, features: &Tensor, train: bool) -> Tensor;
    /// Logits from images.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.head(&self.features(xs, train), train)
    }
}

/// What a network is built from.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Architecture name, one of [`ARCHITECTURES`].
    pub arch: String,
    /// Input channels (1 or 3).
    pub in_channels: i64,
    /// Output classes.
    pub num_classes: i64,
    /// Dropout before the classifier.
    pub dropout: f64,
}

/// Builds the network named in `spec` under `root`.
pub fn build(root: &nn::Path, spec: &ModelSpec) -> Result<Box<dyn Classifier>> {
    match spec.arch.as_str() {
        "simple_cnn" => Ok(Box::new(cnn::SimpleCnn::new(
            root,
            spec.in_channels,
            spec.num_classes,
            spec.dropout,
        ))),
        other => Err(Error::usage(format!(
            "unknown model.arch \"{other}\" (one of: {})",
            ARCHITECTURES.join(", ")
        ))
        .into()),
    }
}
