//! Small CNNs trained from scratch.

use tch::{nn, nn::ModuleT, Tensor};

use super::StagedClassifier;

/// Convolution, batch norm and ReLU, then (except in the last block) 2x2 max pooling.
#[derive(Debug)]
struct ConvBlock {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    pool: bool,
}

impl ConvBlock {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, pool: bool) -> Self {
        let cfg = nn::ConvConfig {
            padding: 1,
            bias: false,
            ..Default::default()
        };
        ConvBlock {
            conv: nn::conv2d(p / "conv", c_in, c_out, 3, cfg),
            bn: nn::batch_norm2d(p / "bn", c_out, Default::default()),
            pool,
        }
    }
}

impl ModuleT for ConvBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv).apply_t(&self.bn, train).relu();
        if self.pool {
            ys.max_pool2d_default(2)
        } else {
            ys
        }
    }
}

/// `simple_cnn`: three conv blocks (32, 64, 128 channels) with batch norm, then global average
/// pooling, dropout and a linear classifier (parameters `features.N.*`, `classifier.*`). The
/// features are the third block's activations before any pooling, so Grad-CAM sees the finest
/// last-stage map.
pub fn simple_cnn(
    p: &nn::Path,
    in_channels: i64,
    num_classes: i64,
    dropout: f64,
) -> StagedClassifier {
    let f = p / "features";
    let widths = [in_channels, 32, 64, 128];
    let stages = (0..3)
        .map(|i| {
            let block = ConvBlock::new(&(&f / i), widths[i], widths[i + 1], i < 2);
            (
                Box::new(block) as Box<dyn ModuleT>,
                vec![format!("features.{i}.")],
            )
        })
        .collect();
    let classifier = nn::linear(p / "classifier", 128, num_classes, Default::default());
    StagedClassifier::new(stages, "classifier.", dropout, classifier)
}
