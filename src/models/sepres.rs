//! `sepres_cnn`: a small network of depthwise-separable convolution blocks with residual
//! links, trained from scratch (the Xception-style CNN of many Kaggle notebooks).

use tch::{nn, nn::ModuleT, Tensor};

use super::conv_bn::{ConvBn, Norm};
use super::shape::Resolved;
use super::StagedClassifier;

/// Depthwise k x k then pointwise 1x1 convolution, batch norm.
#[derive(Debug)]
struct SeparableConv {
    depthwise: nn::Conv2D,
    pointwise: ConvBn,
}

impl SeparableConv {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, kernel: i64, norm: Norm) -> Self {
        let dw = nn::ConvConfig {
            padding: kernel / 2,
            groups: c_in,
            bias: false,
            ..Default::default()
        };
        SeparableConv {
            depthwise: nn::conv2d(p / "dw", c_in, c_in, kernel, dw),
            pointwise: ConvBn::new(p / "pw", p / "bn", c_in, c_out, 1, nn::no_bias(), norm),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.depthwise).apply_t(&self.pointwise, train)
    }
}

/// Two separable convolutions and 2x2 max pooling, plus a strided 1x1 shortcut; then dropout
/// when the block has any.
#[derive(Debug)]
struct ResidualBlock {
    sep1: SeparableConv,
    sep2: SeparableConv,
    shortcut: ConvBn,
    dropout: f64,
}

impl ModuleT for ResidualBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = self
            .sep2
            .forward_t(&self.sep1.forward_t(xs, train).relu(), train)
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let skip = xs.apply_t(&self.shortcut, train);
        let ys = (ys + skip).relu();
        if self.dropout > 0.0 {
            ys.dropout(self.dropout, train)
        } else {
            ys
        }
    }
}

/// The stem: 3x3 stride-2 convolution, batch norm, ReLU.
#[derive(Debug)]
struct Stem {
    conv: ConvBn,
}

impl ModuleT for Stem {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply_t(&self.conv, train).relu()
    }
}

/// `sepres_cnn`: stem (32 channels, stride 2), residual separable blocks (by default four:
/// 64, 128, 256, 256 channels, 3x3, each halving the size), then pooling, an optional dense
/// ReLU layer, dropout and a linear classifier. L2 regularisation comes from
/// `train.weight_decay`.
pub fn sepres_cnn(
    p: &nn::Path,
    in_channels: i64,
    num_classes: i64,
    dropout: f64,
    shape: &Resolved,
    norm: Norm,
) -> StagedClassifier {
    let stem_cfg = nn::ConvConfig {
        stride: 2,
        padding: 1,
        bias: false,
        ..Default::default()
    };
    let s = p / "stem";
    let stem = Stem {
        conv: ConvBn::new(&s / "conv", &s / "bn", in_channels, 32, 3, stem_cfg, norm),
    };
    let mut stages: Vec<(Box<dyn ModuleT>, Vec<String>)> =
        vec![(Box::new(stem), vec!["stem.".into()])];
    let mut c_in = 32;
    for (i, &c_out) in shape.widths.iter().enumerate() {
        let b = p / "blocks" / i;
        let shortcut_cfg = nn::ConvConfig {
            stride: 2,
            bias: false,
            ..Default::default()
        };
        let block = ResidualBlock {
            sep1: SeparableConv::new(&(&b / "sep1"), c_in, c_out, shape.kernel_size, norm),
            sep2: SeparableConv::new(&(&b / "sep2"), c_out, c_out, shape.kernel_size, norm),
            shortcut: ConvBn::new(
                &b / "shortcut",
                &b / "shortcut_bn",
                c_in,
                c_out,
                1,
                shortcut_cfg,
                norm,
            ),
            dropout: shape.block_dropout[i],
        };
        stages.push((Box::new(block), vec![format!("blocks.{i}.")]));
        c_in = c_out;
    }
    StagedClassifier::with_head(p, stages, dropout, c_in, shape.dense_units, num_classes)
        .with_grid(super::GridPlacement::Symmetric)
}
