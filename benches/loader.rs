//! Input-pipeline throughput: decode + augment + normalise Kermany JPEGs at 224 px into
//! batches of 32, with no model, as torchvision's DataLoader does in
//! scripts/bench/loader_torchvision.py. Run through scripts/bench/loader.sh, which runs both
//! on the same files and prints the ratio.
//!
//!   cargo bench --bench loader -- FILE_LIST [ROUNDS]
//!
//! FILE_LIST holds one image path per line. Prints one `xray_loader_img_per_s=N` line per round.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use xray::config::AugmentConfig;
use xray::data::augment::Normalize;
use xray::data::loader::{stream_batches, ImageSet, InputSpec};

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let list = args.next().expect("usage: loader FILE_LIST [ROUNDS]");
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(3);
    let paths: Vec<PathBuf> = std::fs::read_to_string(&list)
        .expect("readable file list")
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect();
    let spec = InputSpec {
        size: 224,
        channels: 3,
        norm: Normalize {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        },
    };
    // The transforms of the torchvision script: RandomResizedCrop(224, scale=(0.8, 1)),
    // RandomHorizontalFlip, RandomRotation(10), ColorJitter(0.2, 0.2), Normalize.
    let augment = AugmentConfig {
        hflip: 0.5,
        rotation_degrees: 10.0,
        brightness: 0.2,
        contrast: 0.2,
        crop_scale: [0.8, 1.0],
        ..AugmentConfig::default()
    };
    for round in 0..rounds {
        // No cache: every image is decoded each time, as the DataLoader does.
        let samples: Vec<(PathBuf, usize)> = paths.iter().cloned().map(|p| (p, 0)).collect();
        let set = Arc::new(ImageSet::new(samples, spec.clone(), false));
        let order: Vec<usize> = (0..set.len()).collect();
        let started = Instant::now();
        let mut n = 0;
        for batch in stream_batches(set, order, 32, Some(augment.clone()), round as u64, 4) {
            n += batch.expect("decodable images").labels.len();
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        println!("xray_loader_img_per_s={rate:.1}");
    }
}
