//! MobileNetV2 (Sandler et al. 2018) in torchvision's layout and parameter names
//! (`features.0.0.weight` ... `features.18.1.*`, `classifier.1.*`).

use tch::{nn, nn::ModuleT, Tensor};

use super::conv_bn::{ConvBn, Norm};
use super::StagedClassifier;

/// Conv2d + BatchNorm2d + ReLU6, named `p.0` and `p.1` as torchvision's `Conv2dNormActivation`.
fn conv_bn_relu6(
    p: &nn::Path,
    [c_in, c_out]: [i64; 2],
    k: i64,
    stride: i64,
    groups: i64,
    norm: Norm,
) -> nn::SequentialT {
    let cfg = nn::ConvConfig {
        stride,
        padding: (k - 1) / 2,
        groups,
        bias: false,
        ..Default::default()
    };
    nn::seq_t()
        .add(ConvBn::new(p / 0, p / 1, c_in, c_out, k, cfg, norm))
        .add_fn(|xs| super::relu6_inplace(xs.shallow_clone()))
}

/// An inverted residual block (`features.N.conv.*`).
#[derive(Debug)]
struct InvertedResidual {
    conv: nn::SequentialT,
    residual: bool,
}

impl InvertedResidual {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, stride: i64, expand: i64, norm: Norm) -> Self {
        let p = p / "conv";
        let hidden = expand * c_in;
        let mut conv = nn::seq_t();
        let mut id = 0;
        if expand != 1 {
            conv = conv.add(conv_bn_relu6(&(&p / id), [c_in, hidden], 1, 1, 1, norm));
            id += 1;
        }
        conv = conv
            .add(conv_bn_relu6(
                &(&p / id),
                [hidden, hidden],
                3,
                stride,
                hidden,
                norm,
            ))
            .add(ConvBn::new(
                &p / (id + 1),
                &p / (id + 2),
                hidden,
                c_out,
                1,
                nn::no_bias(),
                norm,
            ));
        InvertedResidual {
            conv,
            residual: stride == 1 && c_in == c_out,
        }
    }
}

impl ModuleT for InvertedResidual {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply_t(&self.conv, train);
        if self.residual {
            xs + ys
        } else {
            ys
        }
    }
}

/// (expansion, output channels, repeats, first stride) per group of blocks.
const SETTINGS: [(i64, i64, i64, i64); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// `mobilenet_v2`: 19 feature stages (stem, 17 inverted residual blocks, the 1x1 conv to 1280
/// channels), then pooling, dropout and a linear classifier.
pub fn mobilenet_v2(
    p: &nn::Path,
    in_channels: i64,
    num_classes: i64,
    dropout: f64,
    norm: Norm,
) -> StagedClassifier {
    let f = p / "features";
    let mut stages: Vec<Box<dyn ModuleT>> = Vec::new();
    stages.push(Box::new(conv_bn_relu6(
        &(&f / 0),
        [in_channels, 32],
        3,
        2,
        1,
        norm,
    )));
    let mut c_in = 32;
    for &(expand, c_out, repeats, stride) in &SETTINGS {
        for i in 0..repeats {
            let s = if i == 0 { stride } else { 1 };
            let id = stages.len();
            stages.push(Box::new(InvertedResidual::new(
                &(&f / id),
                c_in,
                c_out,
                s,
                expand,
                norm,
            )));
            c_in = c_out;
        }
    }
    let id = stages.len();
    stages.push(Box::new(conv_bn_relu6(
        &(&f / id),
        [c_in, 1280],
        1,
        1,
        1,
        norm,
    )));
    let stages = stages
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, vec![format!("features.{i}.")]))
        .collect();
    let classifier = nn::linear(p / "classifier" / 1, 1280, num_classes, Default::default());
    StagedClassifier::new(stages, "classifier.", dropout, classifier)
        .with_grid(super::GridPlacement::Symmetric)
}
