//! Small CNNs trained from scratch.

use tch::{nn, nn::ModuleT, Tensor};

use super::conv_bn::{ConvBn, Norm};
use super::shape::Resolved;
use super::StagedClassifier;

/// Convolution, batch norm and ReLU, then (except in the last block) 2x2 max pooling, then
/// dropout when the block has any.
#[derive(Debug)]
struct ConvBlock {
    conv: ConvBn,
    pool: bool,
    dropout: f64,
}

impl ConvBlock {
    fn new(
        p: &nn::Path,
        [c_in, c_out, kernel]: [i64; 3],
        pool: bool,
        dropout: f64,
        norm: Norm,
    ) -> Self {
        let cfg = nn::ConvConfig {
            padding: kernel / 2,
            bias: false,
            ..Default::default()
        };
        ConvBlock {
            conv: ConvBn::new(p / "conv", p / "bn", c_in, c_out, kernel, cfg, norm),
            pool,
            dropout,
        }
    }
}

impl ModuleT for ConvBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply_t(&self.conv, train).relu();
        let ys = if self.pool {
            ys.max_pool2d_default(2)
        } else {
            ys
        };
        if self.dropout > 0.0 {
            ys.dropout(self.dropout, train)
        } else {
            ys
        }
    }
}

/// `simple_cnn`: conv blocks with batch norm (by default three: 32, 64, 128 channels, 3x3),
/// then global average pooling, an optional dense ReLU layer, dropout and a linear classifier
/// (parameters `features.N.*`, `classifier.*`). The features are the last block's activations
/// before any pooling, so Grad-CAM sees the finest last-stage map.
pub fn simple_cnn(
    p: &nn::Path,
    in_channels: i64,
    num_classes: i64,
    dropout: f64,
    shape: &Resolved,
    norm: Norm,
) -> StagedClassifier {
    let f = p / "features";
    let n = shape.widths.len();
    let mut c_in = in_channels;
    let stages = (0..n)
        .map(|i| {
            let c_out = shape.widths[i];
            let block = ConvBlock::new(
                &(&f / i),
                [c_in, c_out, shape.kernel_size],
                i + 1 < n,
                shape.block_dropout[i],
                norm,
            );
            c_in = c_out;
            (
                Box::new(block) as Box<dyn ModuleT>,
                vec![format!("features.{i}.")],
            )
        })
        .collect();
    StagedClassifier::with_head(p, stages, dropout, c_in, shape.dense_units, num_classes)
}
