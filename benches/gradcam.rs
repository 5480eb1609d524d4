//! The cost of a heatmap against a plain forward pass: one 224 px RGB image, ResNet18 (and
//! MobileNetV2) on the CPU, batch 1. Grad-CAM computes the feature maps once without a graph
//! and differentiates only the head, so it should cost little more than the forward pass.
//!
//!   cargo bench --bench gradcam [-- ROUNDS]
//!
//! Prints the median of ROUNDS timings (default 30) of each, and the ratios to the forward pass.
//! A heatmap's time includes its own feature pass (in `xray gradcam` that pass also gives the
//! probabilities, so the tool's whole cost per image is the heatmap's).

use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};
use xray::data::augment::Normalize;
use xray::explain::{Baseline, Explainer, Method};
use xray::models::{build, ModelSpec};

fn median_ms(rounds: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let norm = Normalize {
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
    };
    println!(
        "CPU, {} intra-op threads, one 224x224 RGB image, median of {rounds}",
        tch::get_num_threads()
    );
    println!(
        "{:<14} {:<12} {:>9} {:>8}",
        "model", "method", "ms", "ratio"
    );
    for arch in ["resnet18", "mobilenet_v2"] {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = ModelSpec::new(arch.parse().expect("known architecture"), 3, 2, 0.0);
        let model = build(&vs.root(), &spec).expect("known architecture");
        let x = Tensor::randn([1, 3, 224, 224], (Kind::Float, Device::Cpu));
        let explainer = Explainer {
            model: model.as_ref(),
            norm: norm.clone(),
            batch_size: 32,
            independent: false,
        };
        let forward = median_ms(rounds, || {
            let _ = tch::no_grad(|| model.forward_t(&x, false));
        });
        println!("{arch:<14} {:<12} {forward:>9.2} {:>8.2}", "forward", 1.0);
        let methods = [
            Method::GradCam,
            Method::GradCamPlusPlus,
            Method::EigenCam,
            Method::IntegratedGradients {
                baseline: Baseline::Black,
                steps: 32,
            },
        ];
        for m in methods {
            // Integrated Gradients runs 32 forward and backward passes: fewer rounds.
            let r = if matches!(m, Method::IntegratedGradients { .. }) {
                (rounds / 10).max(3)
            } else {
                rounds
            };
            let ms = median_ms(r, || {
                let _ = explainer.heatmaps(&x, None, &[1], m);
            });
            println!(
                "{arch:<14} {:<12} {ms:>9.2} {:>8.2}",
                m.name(),
                ms / forward
            );
        }
    }
}
