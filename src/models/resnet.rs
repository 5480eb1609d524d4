//! ResNet18 (He et al. 2015) in torchvision's parameter names (`conv1`, `bn1`, `layer1.0.conv1`,
//! ..., `fc`).

use tch::{nn, nn::ModuleT, Tensor};

use super::conv_bn::{ConvBn, Norm};
use super::StagedClassifier;

/// A bias-free k x k convolution (named `conv`) and its batch norm (named `bn`).
fn conv_bn(
    conv: nn::Path,
    bn: nn::Path,
    [c_in, c_out, k]: [i64; 3],
    stride: i64,
    norm: Norm,
) -> ConvBn {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ..Default::default()
    };
    ConvBn::new(conv, bn, c_in, c_out, k, cfg, norm)
}

/// Two 3x3 convolutions with a shortcut (`layerN.M.*`).
#[derive(Debug)]
struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    downsample: Option<ConvBn>,
}

impl BasicBlock {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, stride: i64, norm: Norm) -> Self {
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            conv_bn(&d / 0, &d / 1, [c_in, c_out, 1], stride, norm)
        });
        BasicBlock {
            conv1: conv_bn(p / "conv1", p / "bn1", [c_in, c_out, 3], stride, norm),
            conv2: conv_bn(p / "conv2", p / "bn2", [c_out, c_out, 3], 1, norm),
            downsample,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = super::relu_inplace(xs.apply_t(&self.conv1, train)).apply_t(&self.conv2, train);
        let shortcut = match &self.downsample {
            Some(d) => xs.apply_t(d, train),
            None => xs.shallow_clone(),
        };
        super::relu_inplace(shortcut + ys)
    }
}

/// The stem: 7x7 stride-2 convolution, batch norm, ReLU, 3x3 stride-2 max pooling.
#[derive(Debug)]
struct Stem {
    conv1: ConvBn,
}

impl ModuleT for Stem {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        super::relu_inplace(xs.apply_t(&self.conv1, train)).max_pool2d(
            [3, 3],
            [2, 2],
            [1, 1],
            [1, 1],
            false,
        )
    }
}

/// `resnet18`: 5 stages (stem, layer1..layer4 of two basic blocks each), then pooling, dropout
/// and the `fc` classifier.
pub fn resnet18(
    p: &nn::Path,
    in_channels: i64,
    num_classes: i64,
    dropout: f64,
    norm: Norm,
) -> StagedClassifier {
    let stem = Stem {
        conv1: conv_bn(p / "conv1", p / "bn1", [in_channels, 64, 7], 2, norm),
    };
    let mut stages: Vec<(Box<dyn ModuleT>, Vec<String>)> =
        vec![(Box::new(stem), vec!["conv1.".into(), "bn1.".into()])];
    let mut c_in = 64;
    for (i, c_out) in [64, 128, 256, 512].into_iter().enumerate() {
        let name = format!("layer{}", i + 1);
        let l = p / name.as_str();
        let stride = if i == 0 { 1 } else { 2 };
        let layer = nn::seq_t()
            .add(BasicBlock::new(&(&l / 0), c_in, c_out, stride, norm))
            .add(BasicBlock::new(&(&l / 1), c_out, c_out, 1, norm));
        stages.push((Box::new(layer), vec![format!("{name}.")]));
        c_in = c_out;
    }
    let fc = nn::linear(p / "fc", 512, num_classes, Default::default());
    StagedClassifier::new(stages, "fc.", dropout, fc).with_grid(super::GridPlacement::Symmetric)
}
