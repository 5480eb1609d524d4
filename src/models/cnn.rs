//! Small CNNs trained from scratch.

use tch::{nn, Tensor};

use super::{pooled_linear_head, Classifier};

/// Convolution, batch norm and ReLU, then 2x2 max pooling.
#[derive(Debug)]
struct ConvBlock {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBlock {
    fn new(p: &nn::Path, c_in: i64, c_out: i64) -> Self {
        let cfg = nn::ConvConfig {
            padding: 1,
            bias: false,
            ..Default::default()
        };
        ConvBlock {
            conv: nn::conv2d(p / "conv", c_in, c_out, 3, cfg),
            bn: nn::batch_norm2d(p / "bn", c_out, Default::default()),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool, pool: bool) -> Tensor {
        let ys = xs.apply(&self.conv).apply_t(&self.bn, train).relu();
        if pool {
            ys.max_pool2d_default(2)
        } else {
            ys
        }
    }
}

/// `simple_cnn`: three conv blocks (32, 64, 128 channels) with batch norm, then global average
/// pooling, dropout and a linear classifier. The features are the third block's activations
/// before its pooling, so Grad-CAM sees the finest last-stage map.
#[derive(Debug)]
pub struct SimpleCnn {
    blocks: Vec<ConvBlock>,
    dropout: f64,
    classifier: nn::Linear,
}

impl SimpleCnn {
    /// Builds the network under `p` (parameters `features.N.*` and `classifier.*`).
    pub fn new(p: &nn::Path, in_channels: i64, num_classes: i64, dropout: f64) -> Self {
        let f = p / "features";
        let widths = [in_channels, 32, 64, 128];
        let blocks = (0..3)
            .map(|i| ConvBlock::new(&(&f / i), widths[i], widths[i + 1]))
            .collect();
        SimpleCnn {
            blocks,
            dropout,
            classifier: nn::linear(p / "classifier", 128, num_classes, Default::default()),
        }
    }
}

impl Classifier for SimpleCnn {
    fn num_stages(&self) -> usize {
        self.blocks.len()
    }

    fn run_stages(&self, xs: &Tensor, from: usize, to: usize, train: bool) -> Tensor {
        let last = self.blocks.len() - 1;
        (from..to).fold(xs.shallow_clone(), |ys, i| {
            self.blocks[i].forward_t(&ys, train, i < last)
        })
    }

    fn stage_prefixes(&self, i: usize) -> Vec<String> {
        vec![format!("features.{i}.")]
    }

    fn head_prefix(&self) -> &'static str {
        "classifier."
    }

    fn head(&self, features: &Tensor, train: bool) -> Tensor {
        pooled_linear_head(features, self.dropout, &self.classifier, train)
    }
}
