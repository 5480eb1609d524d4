//! A convolution followed by batch norm, the unit the architectures here are built of, and its
//! inference form.
//!
//! In a model built for inference ([`super::ModelSpec::inference`]: weights loaded once, never
//! trained), an evaluation pass runs one convolution with the norm folded into it: weights
//! `w·γ/√(σ²+ε)` and bias `β + (b − μ)·γ/√(σ²+ε)`, computed at the first such pass and kept.
//! That removes a pass over every activation and lets oneDNN convolve channels-last without
//! reordering: MobileNetV2 inference on the CPU ran about twice as fast (BENCHMARKS.md). The
//! folded convolution equals convolution-then-norm up to float rounding (tested). Training
//! passes, passes under autocast, and every pass of a model not built for inference run the
//! two layers as they are: in bfloat16 the folded bias, rounded to bfloat16 with the rest,
//! cost accuracy (a simple_cnn's probabilities moved up to 0.14 from float32's, against 0.02
//! unfolded).

use std::sync::OnceLock;

use tch::{nn, nn::ModuleT, Tensor};

/// Convolution then batch norm, foldable into one convolution for inference.
#[derive(Debug)]
pub struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    stride: i64,
    padding: i64,
    dilation: i64,
    groups: i64,
    eps: f64,
    /// The folded weights and bias; `None` when the model is not built for inference.
    folded: Option<OnceLock<(Tensor, Tensor)>>,
}

/// How a model's norms are built: their epsilon, and whether they fold for inference.
#[derive(Debug, Clone, Copy)]
pub struct Norm {
    /// Batch norm's epsilon.
    pub eps: f64,
    /// The model is built for inference ([`super::ModelSpec::inference`]).
    pub fold: bool,
}

impl Norm {
    /// Epsilon 1e-5 (torchvision's), folding when `fold`.
    pub fn new(fold: bool) -> Norm {
        Norm { eps: 1e-5, fold }
    }
}

impl ConvBn {
    /// A `kernel`x`kernel` convolution `c_in` → `c_out` named under `conv` (configured by `cfg`)
    /// and a batch norm named under `bn`.
    pub fn new(
        conv: nn::Path,
        bn: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        cfg: nn::ConvConfig,
        norm: Norm,
    ) -> ConvBn {
        let (stride, padding, dilation, groups) =
            (cfg.stride, cfg.padding, cfg.dilation, cfg.groups);
        let bn_cfg = nn::BatchNormConfig {
            eps: norm.eps,
            ..Default::default()
        };
        ConvBn {
            conv: nn::conv2d(conv, c_in, c_out, kernel, cfg),
            bn: nn::batch_norm2d(bn, c_out, bn_cfg),
            stride,
            padding,
            dilation,
            groups,
            eps: norm.eps,
            folded: norm.fold.then(OnceLock::new),
        }
    }

    /// The folded weights and bias of the current parameters.
    fn fold(&self) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let bn = &self.bn;
            let inv_std = (&bn.running_var + self.eps).rsqrt();
            let scale = match &bn.ws {
                Some(gamma) => gamma * &inv_std,
                None => inv_std,
            };
            let weight = &self.conv.ws * scale.view([-1, 1, 1, 1]);
            let shifted = match &self.conv.bs {
                Some(b) => b - &bn.running_mean,
                None => -&bn.running_mean,
            };
            let bias = match &bn.bs {
                Some(beta) => beta + shifted * scale,
                None => shifted * scale,
            };
            (weight, bias)
        })
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match (&self.folded, train) {
            (Some(cell), false) if !crate::torch_ext::autocast_enabled(xs.device()) => {
                let (weight, bias) = cell.get_or_init(|| self.fold());
                xs.conv2d(
                    weight,
                    Some(bias),
                    [self.stride, self.stride],
                    [self.padding, self.padding],
                    [self.dilation, self.dilation],
                    self.groups,
                )
            }
            _ => xs.apply(&self.conv).apply_t(&self.bn, train),
        }
    }
}
