//! `xray gradcam`: overlays and 16-bit heatmaps per image, a gallery, clear errors, and the
//! heatmap check against synth's opacity boxes for a simple_cnn and a MobileNetV2.

use std::path::Path;

use crate::common::{assert_clean_stderr, read_json, repo, train_on_synth, trained, xray};

/// Runs `xray gradcam --check` with a fixed seed and returns check.json's rows by method.
fn check(run: &Path, data: &Path, out: &Path, methods: &str) -> serde_json::Value {
    let assert = xray()
        .arg("gradcam")
        .arg("--checkpoint")
        .arg(run)
        .arg("--check")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([
            "--limit",
            "120",
            "--seed",
            "0",
            "--ig-steps",
            "16",
            "--method",
            methods,
        ])
        .assert()
        .success();
    // The table goes to the test log: the other methods' scores are printed, not asserted.
    eprintln!("{}", String::from_utf8_lossy(&assert.get_output().stdout));
    read_json(&out.join("check.json"))
}

fn method<'a>(rows: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {rows}"))
}

/// Grad-CAM points into the opacity box on at least 80% of the positive test images, and a
/// model with re-initialised weights gives maps with rank correlation below 0.5.
fn assert_gradcam_passes(rows: &serde_json::Value, methods: &str) {
    for name in methods.split(',') {
        let row = method(rows, name);
        assert!(row["images"].as_u64().unwrap() >= 30, "{row}");
        assert!(row["pointing_game"].as_f64().is_some(), "{row}");
    }
    let g = method(rows, "gradcam");
    let pointing = g["pointing_game"].as_f64().unwrap();
    assert!(pointing >= 0.80, "Grad-CAM pointing game {pointing}");
    let rho = g["randomised_spearman"].as_f64().unwrap();
    assert!(rho < 0.5, "Grad-CAM vs randomised model: Spearman {rho}");
}

/// simple_cnn (configs/smoke.toml, 64 px) on 800 synth images per class. With the shared
/// fixture's 400 per class the model is weaker and its maps peak at the opacity's lower edge
/// (pointing game 0.72 on seed 1); with 800 it scored 0.93 on 120 images.
#[test]
fn gradcam_check_simple_cnn() {
    let t = train_on_synth(800, 1);
    let methods = "gradcam,gradcam++,eigencam,ig,ig-blur";
    let rows = check(&t.run, &t.data, &t.run.join("check"), methods);
    assert_gradcam_passes(&rows, methods);
}

#[test]
#[ignore = "needs ../shared (Kermany images, ImageNet weights); make test runs it where ../shared is present"]
fn gradcam_check_mobilenet_v2() {
    let weights = crate::common::shared("weights/mobilenet_v2_imagenet.safetensors");
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("mobilenet");
    xray()
        .current_dir(repo())
        .args(["train", "--config", "configs/synth_mobilenet.toml", "--set"])
        .arg(format!("data.split={}", t.split.display()))
        .arg("--set")
        .arg(format!("model.pretrained={}", weights.display()))
        .arg("--out")
        .arg(&run)
        .assert()
        .success();
    // Integrated Gradients at 448 px costs minutes on a CPU: the CAM methods only here.
    let methods = "gradcam,gradcam++,eigencam";
    let rows = check(&run, &t.data, &dir.path().join("check"), methods);
    assert_gradcam_passes(&rows, methods);
}

#[test]
fn gradcam_writes_overlays_heatmaps_and_a_gallery() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    for name in ["opacity_00000.png", "opacity_00001.png"] {
        std::fs::copy(t.data.join("opacity").join(name), inputs.join(name)).unwrap();
    }
    std::fs::copy(
        t.data.join("normal/normal_00000.png"),
        inputs.join("normal_00000.png"),
    )
    .unwrap();
    std::fs::write(inputs.join("broken.png"), b"not a png").unwrap();
    let out = dir.path().join("out");
    let gradcam = |input: &Path| {
        let mut cmd = xray();
        cmd.arg("gradcam")
            .arg("--checkpoint")
            .arg(&t.run)
            .arg(input)
            .arg("--out")
            .arg(&out);
        cmd
    };
    let assert = gradcam(&inputs)
        .args(["--method", "gradcam,ig", "--ig-steps", "8"])
        .assert()
        .success();
    let stderr = assert.get_output().stderr.clone();
    let text = String::from_utf8_lossy(&stderr);
    assert!(text.contains("broken.png"), "{text}");
    assert_clean_stderr(&stderr);
    for stem in ["opacity_00000", "opacity_00001", "normal_00000"] {
        for m in ["gradcam", "ig"] {
            let overlay = image::open(out.join(format!("{stem}.{m}.png"))).unwrap();
            // The image (128 px) under a title band.
            assert!(overlay.width() == 128 && overlay.height() > 128);
            let heat = image::open(out.join(format!("{stem}.{m}.heat.png"))).unwrap();
            assert_eq!((heat.width(), heat.height()), (128, 128));
            let heat = heat.as_luma16().expect("16-bit grey heatmap");
            assert_eq!(heat.pixels().map(|p| p.0[0]).max(), Some(65535));
        }
    }
    let gallery = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(gallery.matches("<img ").count(), 6);

    // A named target, and usage errors with exit code 2.
    gradcam(&inputs.join("normal_00000.png"))
        .args(["--target", "opacity"])
        .assert()
        .success()
        .stdout(predicates::str::contains("\topacity\t"));
    for bad in [["--target", "nodule"], ["--method", "lime"]] {
        let assert = gradcam(&inputs).args(bad).assert().code(2);
        let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
        assert!(err.contains(bad[1]) && err.lines().count() == 1, "{err}");
    }
}
