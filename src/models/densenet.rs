//! DenseNet-121 (Huang et al. 2017), the network of CheXNet and torchxrayvision, in
//! torchvision's parameter names (`features.conv0`, `features.denseblock1.denselayer1.norm1`,
//! ..., `features.norm5`, `classifier`).
//!
//! Each dense layer is batch norm, ReLU, a 1x1 convolution to `4 * 32` channels, batch norm,
//! ReLU and a 3x3 convolution to 32 new channels, concatenated to its input; a transition
//! halves the channels (norm, ReLU, 1x1 convolution) and the grid (2x2 average pooling). The
//! norm comes before its convolution, with a ReLU between, so nothing folds for inference.

use tch::{nn, nn::ModuleT, Tensor};

use super::StagedClassifier;

/// Growth rate: channels each dense layer adds.
const GROWTH: i64 = 32;
/// Bottleneck width, as a multiple of the growth rate.
const BN_SIZE: i64 = 4;
/// Dense layers per block.
const BLOCKS: [i64; 4] = [6, 12, 24, 16];
/// Channels of the stem.
const STEM: i64 = 64;

/// A bias-free convolution.
fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// Batch norm with torchvision's epsilon.
fn norm(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, Default::default())
}

/// One dense layer (`denselayerN.*`): its input with 32 new channels after it.
#[derive(Debug)]
struct DenseLayer {
    norm1: nn::BatchNorm,
    conv1: nn::Conv2D,
    norm2: nn::BatchNorm,
    conv2: nn::Conv2D,
}

impl ModuleT for DenseLayer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply_t(&self.norm1, train).relu().apply(&self.conv1);
        let ys = ys.apply_t(&self.norm2, train).relu().apply(&self.conv2);
        Tensor::cat(&[xs, &ys], 1)
    }
}

/// The stem (`conv0`, `norm0`): 7x7 stride-2 convolution, norm, ReLU, 3x3 stride-2 max pooling.
#[derive(Debug)]
struct Stem {
    conv0: nn::Conv2D,
    norm0: nn::BatchNorm,
}

impl ModuleT for Stem {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        super::relu_inplace(xs.apply(&self.conv0).apply_t(&self.norm0, train)).max_pool2d(
            [3, 3],
            [2, 2],
            [1, 1],
            [1, 1],
            false,
        )
    }
}

/// A transition (`transitionN.*`): norm, ReLU, 1x1 convolution to half the channels, 2x2
/// average pooling.
#[derive(Debug)]
struct Transition {
    norm: nn::BatchNorm,
    conv: nn::Conv2D,
}

impl ModuleT for Transition {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply_t(&self.norm, train)
            .relu()
            .apply(&self.conv)
            .avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
    }
}

/// The final norm (`norm5`) and its ReLU, whose maps the head pools and Grad-CAM explains.
#[derive(Debug)]
struct Final {
    norm5: nn::BatchNorm,
}

impl ModuleT for Final {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        super::relu_inplace(xs.apply_t(&self.norm5, train))
    }
}

/// `densenet121`: 5 stages (the stem; dense blocks 1-3 each with its transition; dense block 4
/// with the final norm and ReLU), then pooling, dropout and the `classifier`.
pub fn densenet121(
    p: &nn::Path,
    in_channels: i64,
    num_classes: i64,
    dropout: f64,
) -> StagedClassifier {
    let f = p / "features";
    let stem = Stem {
        conv0: conv(&f / "conv0", in_channels, STEM, 7, 2),
        norm0: norm(&f / "norm0", STEM),
    };
    let mut stages: Vec<(Box<dyn ModuleT>, Vec<String>)> = vec![(
        Box::new(stem),
        vec!["features.conv0.".into(), "features.norm0.".into()],
    )];
    let mut c = STEM;
    for (b, &layers) in BLOCKS.iter().enumerate() {
        let name = format!("denseblock{}", b + 1);
        let block_path = &f / name.as_str();
        let mut stage = nn::seq_t();
        for l in 0..layers {
            let lp = &block_path / format!("denselayer{}", l + 1);
            let c_in = c + l * GROWTH;
            stage = stage.add(DenseLayer {
                norm1: norm(&lp / "norm1", c_in),
                conv1: conv(&lp / "conv1", c_in, BN_SIZE * GROWTH, 1, 1),
                norm2: norm(&lp / "norm2", BN_SIZE * GROWTH),
                conv2: conv(&lp / "conv2", BN_SIZE * GROWTH, GROWTH, 3, 1),
            });
        }
        c += layers * GROWTH;
        let mut prefixes = vec![format!("features.{name}.")];
        if b + 1 < BLOCKS.len() {
            let name = format!("transition{}", b + 1);
            let tp = &f / name.as_str();
            stage = stage.add(Transition {
                norm: norm(&tp / "norm", c),
                conv: conv(&tp / "conv", c, c / 2, 1, 1),
            });
            prefixes.push(format!("features.{name}."));
            c /= 2;
        } else {
            stage = stage.add(Final {
                norm5: norm(&f / "norm5", c),
            });
            prefixes.push("features.norm5.".into());
        }
        stages.push((Box::new(stage), prefixes));
    }
    let classifier = nn::linear(p / "classifier", c, num_classes, Default::default());
    StagedClassifier::new(stages, "classifier.", dropout, classifier)
        .with_grid(super::GridPlacement::DenseNet)
}
