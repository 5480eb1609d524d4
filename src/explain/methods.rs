//! The attribution methods, on batches of model-ready input tensors.
//!
//! CAM methods read the last convolutional stage through the [`Classifier`] trait's
//! `features`/`head` split: the feature maps are computed without a graph, then detached and
//! marked as requiring a gradient, so only the head is differentiated (tch has no hooks).

use tch::{Device, Kind, Tensor};

use crate::data::augment::Normalize;
use crate::models::{Classifier, GridPlacement};

crate::choice::choice! {
    /// The names of the attribution methods, as `--method` takes them.
    MethodName, "--method" {
        /// Grad-CAM.
        GradCam = "gradcam",
        /// Grad-CAM++.
        GradCamPlusPlus = "gradcam++" | "gradcampp",
        /// Eigen-CAM.
        EigenCam = "eigencam",
        /// Integrated Gradients from a black image.
        Ig = "ig",
        /// Integrated Gradients from the blurred image.
        IgBlur = "ig-blur",
    }
}

/// An attribution method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Grad-CAM (Selvaraju et al. 2017): feature maps weighted by their mean gradient.
    GradCam,
    /// Grad-CAM++ (Chattopadhay et al. 2018): pixel-wise weighting of positive gradients.
    GradCamPlusPlus,
    /// Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the feature maps;
    /// class-agnostic.
    EigenCam,
    /// Integrated Gradients (Sundararajan et al. 2017) from a baseline, in `steps` steps.
    IntegratedGradients {
        /// What the path starts from.
        baseline: Baseline,
        /// Riemann steps along the path.
        steps: usize,
    },
}

/// The Integrated Gradients baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Baseline {
    /// An all-black image.
    Black,
    /// The input blurred (Gaussian, sigma = 1/16 of the side): keeps exposure, removes detail.
    Blurred,
}

impl Method {
    /// The method a `--method` name stands for; Integrated Gradients in `ig_steps` steps.
    pub fn new(name: MethodName, ig_steps: usize) -> Method {
        let ig = |baseline| Method::IntegratedGradients {
            baseline,
            steps: ig_steps.max(1),
        };
        match name {
            MethodName::GradCam => Method::GradCam,
            MethodName::GradCamPlusPlus => Method::GradCamPlusPlus,
            MethodName::EigenCam => Method::EigenCam,
            MethodName::Ig => ig(Baseline::Black),
            MethodName::IgBlur => ig(Baseline::Blurred),
        }
    }

    /// The name used in file names (`<stem>.<name>.png`).
    pub fn name(&self) -> &'static str {
        match self {
            Method::GradCam => "gradcam",
            Method::GradCamPlusPlus => "gradcam++",
            Method::EigenCam => "eigencam",
            Method::IntegratedGradients {
                baseline: Baseline::Black,
                ..
            } => "ig",
            Method::IntegratedGradients {
                baseline: Baseline::Blurred,
                ..
            } => "ig-blur",
        }
    }
}

/// Resamples maps `[n, h, w]` on the last stage's grid to `[n, side, side]` on the input,
/// bilinearly, each input pixel reading the grid at its own centre's position, the cells
/// placed where `grid` says their receptive fields are centred. Plain upsampling would assume
/// the tiled place, half a cell off for torchvision's MobileNetV2 and ResNet: enough to miss a
/// small finding.
pub fn upsample_to_input(maps: &Tensor, side: i64, grid: GridPlacement) -> Tensor {
    let size = maps.size();
    let (n, h, w) = (size[0], size[1], size[2]);
    let device = maps.device();
    let centres = Tensor::arange(side, (Kind::Float, device)) + 0.5;
    // Grid positions in [-1, 1] with align_corners: -1 is cell 0's centre, 1 the last's.
    let norm = |cells: i64| {
        let stride = side as f64 / cells as f64;
        let u = (&centres - grid.offset(stride)) / stride;
        if cells > 1 {
            u * (2.0 / (cells - 1) as f64) - 1.0
        } else {
            u.zeros_like()
        }
    };
    let gy = norm(h).view([side, 1]).expand([side, side], false);
    let gx = norm(w).view([1, side]).expand([side, side], false);
    let sample_at = Tensor::stack(&[gx, gy], 2)
        .unsqueeze(0)
        .expand([n, side, side, 2], false)
        .contiguous();
    // Bilinear (0), border padding (1): outside the outer centres the edge value holds.
    maps.unsqueeze(1)
        .to_kind(Kind::Float)
        .grid_sampler_2d(&sample_at, 0, 1, true)
        .squeeze_dim(1)
}

/// What heatmaps need besides the images: the model, its input normalisation, and how many
/// Integrated Gradients path images to run at once.
pub struct Explainer<'a> {
    /// The network.
    pub model: &'a dyn Classifier,
    /// The input normalisation (for the black baseline).
    pub norm: Normalize,
    /// Integrated Gradients path images per forward pass.
    pub batch_size: usize,
    /// The outputs are independent sigmoids (a multi-label model): a target's score is its own
    /// logit, not its margin over the others (see [`target_score`]).
    pub independent: bool,
}

impl Explainer<'_> {
    /// Heatmaps for a batch `xs` (`[n, c, s, s]`, normalised) and one target class per image:
    /// `[n, s, s]` on the CPU, each scaled to [0, 1] (all zero when the method finds nothing).
    /// `features`, when given, are `model.features(xs)` already computed (the caller needed the
    /// logits anyway), so the CAM methods add only the head's backward pass.
    pub fn heatmaps(
        &self,
        xs: &Tensor,
        features: Option<&Tensor>,
        targets: &[usize],
        method: Method,
    ) -> Tensor {
        let size = xs.size();
        let (h, w) = (size[2], size[3]);
        let model = self.model;
        let raw = match method {
            Method::GradCam | Method::GradCamPlusPlus | Method::EigenCam => {
                let features = match features {
                    Some(f) => f.shallow_clone(),
                    None => tch::no_grad(|| model.features(xs, false)),
                };
                let cam =
                    class_activation_maps(model, &features, targets, method, self.independent);
                upsample_to_input(&cam, h, model.grid())
            }
            Method::IntegratedGradients { baseline, steps } => {
                let maps: Vec<Tensor> = (0..size[0])
                    .map(|i| {
                        let x = xs.get(i);
                        let t = targets[i as usize];
                        let ig = IntegratedGradients {
                            baseline,
                            steps,
                            norm: &self.norm,
                            batch_size: self.batch_size,
                            independent: self.independent,
                        };
                        ig.attribute(model, &x, t)
                    })
                    .collect();
                // Attributions are per pixel and noisy; a light blur makes the peak a region's.
                let maps = Tensor::stack(&maps, 0).unsqueeze(1);
                gaussian_blur(&maps, w as f64 / 64.0).squeeze_dim(1)
            }
        };
        normalise(&raw.to_device(Device::Cpu).to_kind(Kind::Float))
    }
}

/// The score a heatmap explains, summed over the batch: with `independent` (sigmoid outputs,
/// each label decided on its own logit) the target's logit; else its margin
/// ([`target_margin`]).
fn target_score(logits: &Tensor, targets: &[usize], independent: bool) -> Tensor {
    if !independent {
        return target_margin(logits, targets);
    }
    let index = Tensor::from_slice(&targets.iter().map(|&t| t as i64).collect::<Vec<_>>())
        .to_device(logits.device())
        .unsqueeze(1);
    logits.gather(1, &index, false).sum(Kind::Float)
}

/// Each target's logit minus the mean of the other logits, summed over the batch. Softmax
/// logits are defined only up to a term shared by all classes, so a lone logit's gradient
/// carries whatever the classes have in common (lungs, ribs); the margin is what decides the
/// class. For two classes it is `z_t - z_other`.
fn target_margin(logits: &Tensor, targets: &[usize]) -> Tensor {
    let k = logits.size()[1];
    let index = Tensor::from_slice(&targets.iter().map(|&t| t as i64).collect::<Vec<_>>())
        .to_device(logits.device())
        .unsqueeze(1);
    let target = logits.gather(1, &index, false).squeeze_dim(1);
    if k < 2 {
        return target.sum(Kind::Float);
    }
    let others =
        (logits.sum_dim_intlist(&[1i64][..], false, Kind::Float) - &target) / (k - 1) as f64;
    (target - others).sum(Kind::Float)
}

/// Grad-CAM, Grad-CAM++ or Eigen-CAM at the feature maps' resolution, `[n, h, w]`.
fn class_activation_maps(
    model: &dyn Classifier,
    features: &Tensor,
    targets: &[usize],
    method: Method,
    independent: bool,
) -> Tensor {
    if method == Method::EigenCam {
        return eigen_cam(features);
    }
    let a = features.detach().set_requires_grad(true);
    let score = target_score(&model.head(&a, false), targets, independent);
    let grads = Tensor::run_backward(&[score], &[&a], false, false)
        .pop()
        .expect("one gradient");
    let a = a.detach();
    let weights = if method == Method::GradCam {
        grads.mean_dim(&[2i64, 3][..], true, Kind::Float)
    } else {
        // Grad-CAM++ with the exponential of the score, as pytorch-grad-cam computes it.
        let g2 = grads.pow_tensor_scalar(2);
        let g3 = &g2 * &grads;
        let sum_a = a.sum_dim_intlist(&[2i64, 3][..], true, Kind::Float);
        let alpha = &g2 / (&g2 * 2.0 + &sum_a * &g3 + 1e-7);
        let alpha = alpha.where_self(&grads.ne(0.0), &alpha.zeros_like());
        (alpha * grads.relu()).sum_dim_intlist(&[2i64, 3][..], true, Kind::Float)
    };
    (weights * a)
        .sum_dim_intlist(&[1i64][..], false, Kind::Float)
        .relu()
}

/// The projection of each position's feature vector on the first principal component of the
/// positions, signed so that it agrees with the mean activation, negative parts dropped.
fn eigen_cam(features: &Tensor) -> Tensor {
    let size = features.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let maps: Vec<Tensor> = (0..n)
        .map(|i| {
            let a = features
                .get(i)
                .to_kind(Kind::Float)
                .reshape([c, h * w])
                .tr(); // [hw, c]
            let centred = &a - a.mean_dim(&[0i64][..], true, Kind::Float);
            // torch.svd: centred = U diag(S) V^T; V's first column is the first component.
            let (_, _, v) = centred.svd(true, true);
            let projection = centred.matmul(&v.select(1, 0)); // [hw]
            let mean_map = a.mean_dim(&[1i64][..], false, Kind::Float);
            let agreement = (&projection * (&mean_map - mean_map.mean(Kind::Float)))
                .sum(Kind::Float)
                .double_value(&[]);
            let signed = if agreement < 0.0 {
                -projection
            } else {
                projection
            };
            signed.relu().reshape([h, w])
        })
        .collect();
    Tensor::stack(&maps, 0)
}

/// Integrated Gradients settings for one image.
struct IntegratedGradients<'a> {
    baseline: Baseline,
    steps: usize,
    norm: &'a Normalize,
    batch_size: usize,
    independent: bool,
}

impl IntegratedGradients<'_> {
    /// Attributions of the target's score for one image `x` (`[c, s, s]`), summed over
    /// channels as absolute values: `[s, s]`.
    fn attribute(&self, model: &dyn Classifier, x: &Tensor, target: usize) -> Tensor {
        let x = x.unsqueeze(0);
        let base = match self.baseline {
            Baseline::Black => black_like(&x, self.norm),
            Baseline::Blurred => gaussian_blur(&x, x.size()[2] as f64 / 16.0),
        };
        let diff = &x - &base;
        let mut grad_sum = x.zeros_like();
        let steps = self.steps;
        // Midpoint Riemann sum: alpha = (k + 0.5) / steps.
        let alphas: Vec<f32> = (0..steps)
            .map(|k| (k as f32 + 0.5) / steps as f32)
            .collect();
        for chunk in alphas.chunks(self.batch_size.max(1)) {
            let a = Tensor::from_slice(chunk)
                .to_device(x.device())
                .view([-1, 1, 1, 1]);
            let path = (&base + &a * &diff).detach().set_requires_grad(true);
            let logits = model.forward_t(&path, false);
            let score = target_score(&logits, &vec![target; chunk.len()], self.independent);
            let grads = Tensor::run_backward(&[score], &[&path], false, false)
                .pop()
                .expect("one gradient");
            grad_sum += grads.sum_dim_intlist(&[0i64][..], true, Kind::Float);
        }
        let attribution = diff * grad_sum / steps as f64;
        attribution
            .abs()
            .sum_dim_intlist(&[1i64][..], false, Kind::Float)
            .squeeze_dim(0)
    }
}

/// The all-black image like `x` (`[1, c, h, w]`): per channel, `(0 - mean) / std`.
fn black_like(x: &Tensor, norm: &Normalize) -> Tensor {
    let c = x.size()[1] as usize;
    let black: Vec<f32> = (0..c).map(|i| -norm.mean[i] / norm.std[i]).collect();
    Tensor::from_slice(&black)
        .to_device(x.device())
        .view([1, c as i64, 1, 1])
        .expand_as(x)
        .contiguous()
}

/// Gaussian blur of `[n, c, h, w]` with standard deviation `sigma` pixels (reflect padding).
pub fn gaussian_blur(x: &Tensor, sigma: f64) -> Tensor {
    if sigma < 0.3 {
        return x.shallow_clone();
    }
    let c = x.size()[1];
    let radius = (3.0 * sigma).ceil() as i64;
    let radius = radius.min(x.size()[2] - 1).min(x.size()[3] - 1).max(1);
    let taps: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i as f64).powi(2) / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let total: f32 = taps.iter().sum();
    let k = Tensor::from_slice(&taps.iter().map(|v| v / total).collect::<Vec<_>>())
        .to_device(x.device())
        .to_kind(x.kind());
    let len = 2 * radius + 1;
    let kx = k.view([1, 1, 1, len]).repeat([c, 1, 1, 1]);
    let ky = k.view([1, 1, len, 1]).repeat([c, 1, 1, 1]);
    let padded = x.reflection_pad2d([radius, radius, radius, radius]);
    let no_bias: Option<Tensor> = None;
    padded
        .conv2d(&kx, no_bias.as_ref(), [1, 1], [0, 0], [1, 1], c)
        .conv2d(&ky, no_bias.as_ref(), [1, 1], [0, 0], [1, 1], c)
}

/// Scales each map of `[n, h, w]` to [0, 1] by its maximum (negative values were already
/// dropped); an all-zero map stays zero.
fn normalise(maps: &Tensor) -> Tensor {
    let maps = maps.clamp_min(0.0);
    let max = maps.amax(&[1i64, 2][..], true);
    let safe = max.clamp_min(1e-12);
    maps / safe
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hot cell lands where its receptive field is centred: for torchvision's padding half a
    /// cell up-left of the tiled place.
    #[test]
    fn upsampling_places_cells_at_their_receptive_field() {
        let mut map = vec![0f32; 49];
        map[3 * 7 + 3] = 1.0;
        let maps = Tensor::from_slice(&map).view([1, 7, 7]);
        let peak = |grid| {
            let up = upsample_to_input(&maps, 224, grid).flatten(0, -1);
            let i = up.argmax(0, false).int64_value(&[]);
            (i / 224, i % 224)
        };
        // Cell 3's centre: 3 * 32 + 16 = 112 tiled (pixel 111 or 112), 96.5 symmetric.
        let (y, x) = peak(GridPlacement::Tiled);
        assert!(
            (111..=112).contains(&y) && (111..=112).contains(&x),
            "{y},{x}"
        );
        assert_eq!(peak(GridPlacement::Symmetric), (96, 96));
        assert_eq!(peak(GridPlacement::TfSame), (127, 127));
        // DenseNet: 3 * 32 + 16 - 1.5 = 110.5.
        assert_eq!(peak(GridPlacement::DenseNet), (110, 110));
    }
}
