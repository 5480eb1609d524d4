//! Network architectures behind one trait that exposes the feature maps and the head
//! separately: Grad-CAM needs the last convolutional stage, and tch has no forward hooks.
//!
//! Feature extractors are sequences of stages, so that training can freeze a prefix (and
//! compute its activations once) and fine-tune the rest. Parameter names follow torchvision's,
//! so ImageNet weights converted from torchvision load as they are.

pub mod cnn;
pub mod conv_bn;
pub mod densenet;
pub mod efficientnet;
pub mod fetch;
pub mod import;
pub mod mobilenet;
pub mod pretrained;
pub mod resnet;
pub mod sepres;
pub mod shape;

use anyhow::Result;
use tch::{nn, Tensor};

use crate::choice::choice;
use crate::torch_ext;

choice! {
    /// The network architectures.
    Arch, "model.arch" {
        /// Three conv blocks 32→64→128 with batch norm, dropout and global average pooling.
        SimpleCnn = "simple_cnn",
        /// Separable-convolution blocks with residual links.
        SepresCnn = "sepres_cnn",
        /// MobileNetV2 (torchvision's names).
        MobileNetV2 = "mobilenet_v2",
        /// EfficientNet-Lite0 (efficientnet-pytorch's names).
        EfficientNetLite0 = "efficientnet_lite0",
        /// ResNet18 (torchvision's names).
        ResNet18 = "resnet18",
        /// DenseNet-121 (torchvision's names), CheXNet's and torchxrayvision's network.
        DenseNet121 = "densenet121",
    }
}

/// An image classifier: a sequence of feature stages, then a head.
pub trait Classifier: Send {
    /// Number of feature stages.
    fn num_stages(&self) -> usize;
    /// Runs stages `from..to` on `xs` (the input of stage `from`).
    fn run_stages(&self, xs: &Tensor, from: usize, to: usize, train: bool) -> Tensor;
    /// Prefixes of the variable names that belong to stage `i` (e.g. `features.3.`).
    fn stage_prefixes(&self, i: usize) -> Vec<String>;
    /// Prefix of the classifier's variable names, re-made for each task.
    fn head_prefix(&self) -> &'static str;
    /// Logits from the last stage's feature maps, `[n, classes]`.
    fn head(&self, features: &Tensor, train: bool) -> Tensor;
    /// The last convolutional stage's feature maps, `[n, c, h, w]`.
    fn features(&self, xs: &Tensor, train: bool) -> Tensor {
        self.run_stages(xs, 0, self.num_stages(), train)
    }
    /// Logits from images.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.head(&self.features(xs, train), train)
    }
    /// How the last stage's grid sits on the input (for drawing heatmaps in the right place).
    fn grid(&self) -> GridPlacement {
        GridPlacement::Tiled
    }
}

/// Where the receptive-field centres of the last stage's cells lie on the input, a cell being
/// `stride` input pixels wide (pixel `i` spans `[i, i + 1)`). Each stride-2 layer moves the
/// centres by `stride_in * ((kernel - 1) / 2 - left_padding)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GridPlacement {
    /// 2x2 pooling tiles the input: cell `i` is centred at `stride * i + stride / 2`.
    Tiled,
    /// 3x3/7x7 stride-2 layers with symmetric padding (torchvision's MobileNetV2 and ResNet):
    /// cell `i` is centred at `stride * i + 0.5`, half a cell before the tiled place.
    Symmetric,
    /// TensorFlow "same" padding, the extra pixel right and bottom (EfficientNet): cell `i`
    /// is centred at `stride * i + stride - 0.5`, half a cell after the tiled place.
    TfSame,
    /// DenseNet: a symmetric stem to stride 4 (centres at `4 * i + 0.5`), then three 2x2
    /// average poolings, each moving the centres by half its input's stride (2, 4 and 8 px):
    /// cell `i` is centred at `stride * i + stride / 2 - 1.5`.
    DenseNet,
}

impl GridPlacement {
    /// The input position of cell 0's centre for cells `stride` pixels apart.
    pub fn offset(&self, stride: f64) -> f64 {
        match self {
            GridPlacement::Tiled => stride / 2.0,
            GridPlacement::Symmetric => 0.5,
            GridPlacement::TfSame => stride - 0.5,
            GridPlacement::DenseNet => stride / 2.0 - 1.5,
        }
    }
}

/// What a network is built from.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Architecture.
    pub arch: Arch,
    /// Input channels (1 or 3).
    pub in_channels: i64,
    /// Output classes.
    pub num_classes: i64,
    /// Dropout before the classifier.
    pub dropout: f64,
    /// The shape of simple_cnn and sepres_cnn (unset keys: the architecture's defaults).
    pub shape: shape::CnnShape,
    /// Side of the square input (checked against the blocks' halvings).
    pub image_size: u32,
    /// Built for inference only: the weights are loaded once and never trained, so evaluation
    /// passes fold each batch norm into the convolution before it (see `conv_bn`).
    pub inference: bool,
}

impl ModelSpec {
    /// `arch` in its default shape, for a 224 px input.
    pub fn new(arch: Arch, in_channels: i64, num_classes: i64, dropout: f64) -> ModelSpec {
        ModelSpec {
            arch,
            in_channels,
            num_classes,
            dropout,
            shape: shape::CnnShape::default(),
            image_size: 224,
            inference: false,
        }
    }
}

/// Builds the network named in `spec` under `root`.
/// ReLU in place, as torchvision's `ReLU(inplace=True)`: it follows a batch norm, whose
/// backward pass does not need the output it overwrites, so training stores one activation
/// less per layer.
pub(crate) fn relu_inplace(mut xs: Tensor) -> Tensor {
    let _ = xs.relu_();
    xs
}

/// ReLU6 in place, as torchvision's `ReLU6(inplace=True)`: `hardtanh_(0, 6)`, whose backward
/// reads the output (see [`relu_inplace`]; `clamp_` would keep a copy of its input and run a
/// slow backward, see [`torch_ext::hardtanh_`]).
pub(crate) fn relu6_inplace(xs: Tensor) -> Tensor {
    torch_ext::hardtanh_(&xs, 0.0, 6.0).expect("hardtanh_ on a float tensor");
    xs
}

pub fn build(root: &nn::Path, spec: &ModelSpec) -> Result<Box<dyn Classifier>> {
    let (c, k, d) = (spec.in_channels, spec.num_classes, spec.dropout);
    let shape = spec.shape.resolve(spec.arch, spec.image_size)?;
    let norm = conv_bn::Norm::new(spec.inference);
    Ok(match spec.arch {
        Arch::SimpleCnn => Box::new(cnn::simple_cnn(root, c, k, d, &shape, norm)),
        Arch::SepresCnn => Box::new(sepres::sepres_cnn(root, c, k, d, &shape, norm)),
        Arch::MobileNetV2 => Box::new(mobilenet::mobilenet_v2(root, c, k, d, norm)),
        Arch::EfficientNetLite0 => Box::new(efficientnet::efficientnet_lite0(root, c, k, d, norm)),
        Arch::ResNet18 => Box::new(resnet::resnet18(root, c, k, d, norm)),
        Arch::DenseNet121 => Box::new(densenet::densenet121(root, c, k, d)),
    })
}

/// A network made of feature stages and a head of global average pooling, dropout and one
/// linear layer: the shape every architecture here shares.
#[derive(Debug)]
pub struct StagedClassifier {
    stages: Vec<Box<dyn nn::ModuleT>>,
    stage_prefixes: Vec<Vec<String>>,
    head_prefix: &'static str,
    dropout: f64,
    /// A dense ReLU layer between the pooled features and the classifier, when asked for.
    hidden: Option<nn::Linear>,
    classifier: nn::Linear,
    grid: GridPlacement,
}

impl StagedClassifier {
    /// Assembles stages (each with the variable-name prefixes it owns) and the classifier.
    pub fn new(
        stages: Vec<(Box<dyn nn::ModuleT>, Vec<String>)>,
        head_prefix: &'static str,
        dropout: f64,
        classifier: nn::Linear,
    ) -> Self {
        let (stages, stage_prefixes) = stages.into_iter().unzip();
        StagedClassifier {
            stages,
            stage_prefixes,
            head_prefix,
            dropout,
            hidden: None,
            classifier,
            grid: GridPlacement::Tiled,
        }
    }

    /// Stages with the from-scratch head under `p`: pooling, then, with `dense_units` > 0, a
    /// dense ReLU layer (`classifier.hidden.*`), then dropout and the classifier
    /// (`classifier.*`) over `features` channels.
    pub fn with_head(
        p: &nn::Path,
        stages: Vec<(Box<dyn nn::ModuleT>, Vec<String>)>,
        dropout: f64,
        features: i64,
        dense_units: i64,
        num_classes: i64,
    ) -> Self {
        let head = p / "classifier";
        let hidden = (dense_units > 0)
            .then(|| nn::linear(&head / "hidden", features, dense_units, Default::default()));
        let width = if dense_units > 0 {
            dense_units
        } else {
            features
        };
        let classifier = nn::linear(&head, width, num_classes, Default::default());
        let mut staged = StagedClassifier::new(stages, "classifier.", dropout, classifier);
        staged.hidden = hidden;
        staged
    }

    /// Sets where the last stage's grid sits on the input (default: tiled).
    pub fn with_grid(mut self, grid: GridPlacement) -> Self {
        self.grid = grid;
        self
    }
}

impl Classifier for StagedClassifier {
    fn num_stages(&self) -> usize {
        self.stages.len()
    }

    fn run_stages(&self, xs: &Tensor, from: usize, to: usize, train: bool) -> Tensor {
        (from..to).fold(xs.shallow_clone(), |ys, i| {
            self.stages[i].forward_t(&ys, train)
        })
    }

    fn stage_prefixes(&self, i: usize) -> Vec<String> {
        self.stage_prefixes[i].clone()
    }

    fn head_prefix(&self) -> &'static str {
        self.head_prefix
    }

    fn grid(&self) -> GridPlacement {
        self.grid
    }

    fn head(&self, features: &Tensor, train: bool) -> Tensor {
        let pooled = features.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let pooled = match &self.hidden {
            Some(dense) => pooled.apply(dense).relu(),
            None => pooled,
        };
        pooled.dropout(self.dropout, train).apply(&self.classifier)
    }
}
