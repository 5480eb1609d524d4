//! ResNet18 (He et al. 2015) in torchvision's parameter names (`conv1`, `bn1`, `layer1.0.conv1`,
//! ..., `fc`).

use tch::{nn, nn::ModuleT, Tensor};

use super::StagedClassifier;

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, padding: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// Two 3x3 convolutions with a shortcut (`layerN.M.*`).
#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            (
                conv(&d / 0, c_in, c_out, 1, 0, stride),
                nn::batch_norm2d(&d / 1, c_out, Default::default()),
            )
        });
        BasicBlock {
            conv1: conv(p / "conv1", c_in, c_out, 3, 1, stride),
            bn1: nn::batch_norm2d(p / "bn1", c_out, Default::default()),
            conv2: conv(p / "conv2", c_out, c_out, 3, 1, 1),
            bn2: nn::batch_norm2d(p / "bn2", c_out, Default::default()),
            downsample,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = super::relu_inplace(xs.apply(&self.conv1).apply_t(&self.bn1, train))
            .apply(&self.conv2)
            .apply_t(&self.bn2, train);
        let shortcut = match &self.downsample {
            Some((c, bn)) => xs.apply(c).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        super::relu_inplace(shortcut + ys)
    }
}

/// The stem: 7x7 stride-2 convolution, batch norm, ReLU, 3x3 stride-2 max pooling.
#[derive(Debug)]
struct Stem {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
}

impl ModuleT for Stem {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        super::relu_inplace(xs.apply(&self.conv1).apply_t(&self.bn1, train)).max_pool2d(
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
) -> StagedClassifier {
    let stem = Stem {
        conv1: conv(p / "conv1", in_channels, 64, 7, 3, 2),
        bn1: nn::batch_norm2d(p / "bn1", 64, Default::default()),
    };
    let mut stages: Vec<(Box<dyn ModuleT>, Vec<String>)> =
        vec![(Box::new(stem), vec!["conv1.".into(), "bn1.".into()])];
    let mut c_in = 64;
    for (i, c_out) in [64, 128, 256, 512].into_iter().enumerate() {
        let name = format!("layer{}", i + 1);
        let l = p / name.as_str();
        let stride = if i == 0 { 1 } else { 2 };
        let layer = nn::seq_t()
            .add(BasicBlock::new(&(&l / 0), c_in, c_out, stride))
            .add(BasicBlock::new(&(&l / 1), c_out, c_out, 1));
        stages.push((Box::new(layer), vec![format!("{name}.")]));
        c_in = c_out;
    }
    let fc = nn::linear(p / "fc", 512, num_classes, Default::default());
    StagedClassifier::new(stages, "fc.", dropout, fc).with_grid(super::GridPlacement::Symmetric)
}
