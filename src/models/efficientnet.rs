//! EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excitation) in the
//! parameter names of the `efficientnet-pytorch` package (`_conv_stem`, `_blocks.N.*`,
//! `_conv_head`, `_fc`), with TensorFlow "same" padding and batch-norm eps 1e-3, so the
//! ImageNet weights in ../shared/weights load as they are.

use tch::{nn, nn::ModuleT, Tensor};

use super::conv_bn::{ConvBn, Norm};
use super::StagedClassifier;

/// A bias-free convolution with TensorFlow's "same" padding (the output is ceil(input/stride),
/// padding asymmetrically, the extra pixel right and bottom, where needed), then batch norm
/// with eps 1e-3.
#[derive(Debug)]
struct SameConvBn {
    conv: ConvBn,
    kernel: i64,
    stride: i64,
}

impl SameConvBn {
    /// The convolution named `conv`, the norm named `bn`; `[c_in, c_out, kernel]`.
    fn new(
        conv: nn::Path,
        bn: nn::Path,
        [c_in, c_out, kernel]: [i64; 3],
        stride: i64,
        groups: i64,
        norm: Norm,
    ) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            groups,
            bias: false,
            ..Default::default()
        };
        let norm = Norm { eps: 1e-3, ..norm };
        SameConvBn {
            conv: ConvBn::new(conv, bn, c_in, c_out, kernel, cfg, norm),
            kernel,
            stride,
        }
    }
}

impl ModuleT for SameConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let pad = |size: i64| {
            let out = (size + self.stride - 1) / self.stride;
            let total = ((out - 1) * self.stride + self.kernel - size).max(0);
            (total / 2, total - total / 2)
        };
        let size = xs.size();
        let (top, bottom) = pad(size[2]);
        let (left, right) = pad(size[3]);
        if top + bottom + left + right == 0 {
            xs.apply_t(&self.conv, train)
        } else {
            xs.constant_pad_nd([left, right, top, bottom])
                .apply_t(&self.conv, train)
        }
    }
}

/// Convolution, batch norm, ReLU6 (the stem and the head convolution).
#[derive(Debug)]
struct ConvBnRelu6 {
    conv: SameConvBn,
}

impl ModuleT for ConvBnRelu6 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        super::relu6_inplace(xs.apply_t(&self.conv, train))
    }
}

/// A mobile inverted bottleneck block without squeeze-excitation (`_blocks.N.*`).
#[derive(Debug)]
struct MbConv {
    expand: Option<SameConvBn>,
    depthwise: SameConvBn,
    project: SameConvBn,
    residual: bool,
}

impl MbConv {
    fn new(
        p: &nn::Path,
        [c_in, c_out, kernel]: [i64; 3],
        stride: i64,
        expand: i64,
        norm: Norm,
    ) -> Self {
        let hidden = c_in * expand;
        MbConv {
            expand: (expand != 1).then(|| {
                SameConvBn::new(
                    p / "_expand_conv",
                    p / "_bn0",
                    [c_in, hidden, 1],
                    1,
                    1,
                    norm,
                )
            }),
            depthwise: SameConvBn::new(
                p / "_depthwise_conv",
                p / "_bn1",
                [hidden, hidden, kernel],
                stride,
                hidden,
                norm,
            ),
            project: SameConvBn::new(
                p / "_project_conv",
                p / "_bn2",
                [hidden, c_out, 1],
                1,
                1,
                norm,
            ),
            residual: stride == 1 && c_in == c_out,
        }
    }
}

impl ModuleT for MbConv {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = match &self.expand {
            Some(expand) => super::relu6_inplace(xs.apply_t(expand, train)),
            None => xs.shallow_clone(),
        };
        let h = super::relu6_inplace(h.apply_t(&self.depthwise, train));
        let h = h.apply_t(&self.project, train);
        if self.residual {
            h + xs
        } else {
            h
        }
    }
}

/// (repeats, kernel, stride, expansion, input channels, output channels) per group of blocks.
const BLOCKS: [(i64, i64, i64, i64, i64, i64); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// `efficientnet_lite0`: 18 stages (stem, 16 MBConv blocks, the 1x1 head convolution to 1280
/// channels), then pooling, dropout and `_fc`. Inputs are normalised with mean 127/255 and
/// std 128/255 for the ImageNet weights.
pub fn efficientnet_lite0(
    p: &nn::Path,
    in_channels: i64,
    num_classes: i64,
    dropout: f64,
    norm: Norm,
) -> StagedClassifier {
    let stem = ConvBnRelu6 {
        conv: SameConvBn::new(
            p / "_conv_stem",
            p / "_bn0",
            [in_channels, 32, 3],
            2,
            1,
            norm,
        ),
    };
    let mut stages: Vec<(Box<dyn ModuleT>, Vec<String>)> =
        vec![(Box::new(stem), vec!["_conv_stem.".into(), "_bn0.".into()])];
    let mut index = 0;
    for &(repeats, kernel, stride, expand, c_in, c_out) in &BLOCKS {
        for r in 0..repeats {
            let (s, i) = if r == 0 { (stride, c_in) } else { (1, c_out) };
            let block = MbConv::new(
                &(p / "_blocks" / index),
                [i, c_out, kernel],
                s,
                expand,
                norm,
            );
            stages.push((Box::new(block), vec![format!("_blocks.{index}.")]));
            index += 1;
        }
    }
    let head = ConvBnRelu6 {
        conv: SameConvBn::new(p / "_conv_head", p / "_bn1", [320, 1280, 1], 1, 1, norm),
    };
    stages.push((Box::new(head), vec!["_conv_head.".into(), "_bn1.".into()]));
    let fc = nn::linear(p / "_fc", 1280, num_classes, Default::default());
    StagedClassifier::new(stages, "_fc.", dropout, fc).with_grid(super::GridPlacement::TfSame)
}
