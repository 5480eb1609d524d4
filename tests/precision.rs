//! `train.precision`, `--precision` and `data.on_device`: bfloat16 training and prediction
//! work and agree with float32; the device pipeline trains as the CPU loader does; bad values
//! are refused in one line.

use std::path::Path;

use crate::common::{
    assert_clean_stderr, read_json, smoke_train, synth_split, trained, xray, RunOk,
};

/// Per-epoch (train loss, val_auc) of a run's metrics.csv.
fn curve(run: &Path) -> Vec<(f64, f64)> {
    let mut reader = csv::Reader::from_path(run.join("metrics.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (loss, auc) = (col("train_loss"), col("val_auc"));
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[loss].parse().unwrap(), r[auc].parse().unwrap())
        })
        .collect()
}

/// Trains configs/smoke.toml for 4 epochs at 48 px with extra settings; returns the run.
fn train(split: &Path, out: &Path, settings: &[&str]) -> std::process::Output {
    let mut cmd = smoke_train(split);
    for s in ["train.epochs=4", "data.image_size=48"]
        .iter()
        .chain(settings)
    {
        cmd.args(["--set", s]);
    }
    let output = cmd.arg("--out").arg(out).output_ok();
    output
}

/// The device pipeline draws the CPU loader's transforms image for image, so the same run
/// through either follows the same curve (float rounding apart).
#[test]
fn on_device_pipeline_trains_like_the_cpu_loader() {
    let dir = tempfile::tempdir().unwrap();
    let (_, split) = synth_split(dir.path(), 60, 64);
    let (cpu, dev) = (dir.path().join("cpu"), dir.path().join("dev"));
    train(&split, &cpu, &["data.on_device=false"]);
    let out = train(&split, &dev, &["data.on_device=true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("data.on_device: on"), "{stderr}");
    let (a, b) = (curve(&cpu), curve(&dev));
    assert_eq!(a.len(), 4);
    for (epoch, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x.0 - y.0).abs() < 5e-3 && (x.1 - y.1).abs() < 0.03,
            "epoch {}: cpu loader {x:?}, device pipeline {y:?}",
            epoch + 1
        );
    }
}

/// bf16 training runs (whatever this CPU's instructions), records its precision, keeps float32
/// weights that prediction in float32 reads, and learns as float32 does on the same data.
#[test]
fn bf16_training_runs_and_learns_like_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let (data, split) = synth_split(dir.path(), 60, 64);
    let (fp32, bf16) = (dir.path().join("fp32"), dir.path().join("bf16"));
    train(&split, &fp32, &["train.precision=fp32"]);
    let out = train(&split, &bf16, &["train.precision=bf16"]);
    assert_clean_stderr(&out.stderr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("precision bf16, channels-last"), "{stderr}");
    assert_eq!(
        read_json(&bf16.join("model.json"))["train_precision"],
        "bf16"
    );
    assert_eq!(
        read_json(&fp32.join("model.json"))["train_precision"],
        "fp32"
    );
    let (a, b) = (curve(&fp32), curve(&bf16));
    for (epoch, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x.0 - y.0).abs() < 0.05,
            "epoch {}: train loss fp32 {} bf16 {}",
            epoch + 1,
            x.0,
            y.0
        );
    }
    // The saved weights are ordinary contiguous float32: predict reads them in either precision.
    for precision in ["fp32", "bf16"] {
        xray()
            .args(["predict", "--precision", precision, "--checkpoint"])
            .arg(&bf16)
            .arg(data.join("normal/normal_00001.png"))
            .assert()
            .success();
    }
}

/// Prediction in bfloat16 gives float32's labels and probabilities within bfloat16's rounding,
/// for a model trained in float32. (The shared model is trained in `auto`, which is bf16 on a
/// CPU with AVX512-BF16 or AMX; such a model's fp32 and bf16 predictions differ by more: up to
/// 0.15 in probability, 8 of 400 labels, measured on a Sapphire Rapids CPU.)
#[test]
fn bf16_prediction_agrees_with_fp32() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("fp32-run");
    smoke_train(&t.split)
        .args(["--set", "train.precision=fp32", "--out"])
        .arg(&model)
        .assert()
        .success();
    let run = |precision: &str| -> Vec<serde_json::Value> {
        let out = xray()
            .args(["predict", "--format", "json", "--precision", precision])
            .arg("--checkpoint")
            .arg(&model)
            .arg(t.data.join("opacity"))
            .output_ok();

        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (fp32, bf16, auto) = (run("fp32"), run("bf16"), run("auto"));
    assert_eq!(fp32.len(), 400);
    let prob = |v: &serde_json::Value| v["probabilities"]["opacity"].as_f64().unwrap();
    let mut same = 0;
    let mut worst = 0f64;
    for (a, b) in fp32.iter().zip(&bf16) {
        assert_eq!(a["path"], b["path"]);
        same += usize::from(a["label"] == b["label"]);
        worst = worst.max((prob(a) - prob(b)).abs());
    }
    assert!(same >= 396, "{same}/400 labels agree");
    assert!(worst < 0.05, "probabilities differ by up to {worst}");
    // auto is one of the two, whichever this CPU runs faster.
    assert!(auto == fp32 || auto == bf16);
}

/// The out-of-distribution guard gives every image the same verdict in bfloat16 as in float32
/// (a score near the threshold is checked again from float32 features): the shared model's
/// synth images, and noise images that it flags.
#[test]
fn the_guard_gives_the_same_verdicts_in_both_precisions() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd");
    crate::ood::noise_images(&odd, 20);
    let verdicts = |precision: &str| -> Vec<(String, String)> {
        let text = xray()
            .args(["predict", "--format", "csv", "--precision", precision])
            .arg("--checkpoint")
            .arg(&t.run)
            .arg(&t.data)
            .arg(&odd)
            .stdout_ok();
        let mut rows = csv::Reader::from_reader(text.as_bytes());
        let header = rows.headers().unwrap().clone();
        let col = header
            .iter()
            .position(|h| h == "out_of_distribution")
            .unwrap();
        rows.records()
            .map(|r| {
                let r = r.unwrap();
                (r[0].to_string(), r[col].to_string())
            })
            .collect()
    };
    let (fp32, bf16) = (verdicts("fp32"), verdicts("bf16"));
    assert_eq!(fp32.len(), bf16.len());
    let flagged = fp32.iter().filter(|(_, v)| v == "true").count();
    assert!(
        flagged >= 10,
        "only {flagged} image(s) flagged: the guard is not being tested"
    );
    let differ: Vec<&String> = fp32
        .iter()
        .zip(&bf16)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| &a.0)
        .collect();
    assert!(differ.is_empty(), "verdicts differ in bf16: {differ:?}");
}

#[test]
fn bad_precision_and_on_device_values_are_refused() {
    let t = trained();
    for (setting, expect) in [
        ("train.precision=fp16", "is not one of: auto, fp32, bf16"),
        ("data.on_device=yes", "on_device"),
    ] {
        let out = smoke_train(&t.split)
            .args(["--set", setting])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{setting}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{setting}: {stderr}");
        assert_clean_stderr(&out.stderr);
    }
    let out = xray()
        .args(["predict", "--precision", "half", "x.png"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Sets every step time in the `auto` cache file to `fp32_s` and `bf16_s`.
fn rewrite_cache(file: &Path, fp32_s: f64, bf16_s: f64) {
    let mut cache: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    for times in cache.values_mut() {
        *times = serde_json::json!({ "fp32_s": fp32_s, "bf16_s": bf16_s });
    }
    std::fs::write(file, serde_json::to_vec(&cache).unwrap()).unwrap();
}

/// `auto` chooses by timing, not by the CPU's instructions: on a CPU with bfloat16
/// instructions a run times its training step in both precisions, keeps bf16 only at 1.15x or
/// more, says so, records both times in model.json and caches them; the cached times then
/// decide (here rewritten both ways). On a CPU without them nothing is timed.
#[test]
fn auto_chooses_the_precision_by_measured_step_time() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache_file = cache.join("precision.json");
    let run = |name: &str| {
        let out = dir.path().join(name);
        let output = smoke_train(&t.split)
            .env("XRAY_CACHE_DIR", &cache)
            .args([
                "--set",
                "train.epochs=1",
                "--set",
                "data.image_size=48",
                "--out",
            ])
            .arg(&out)
            .output_ok();
        let stderr = String::from_utf8(output.stderr).unwrap();
        (read_json(&out.join("model.json")), stderr)
    };
    let (card, stderr) = run("measured");
    if !stderr.contains("took") {
        assert!(
            stderr.contains("auto: this CPU has no bfloat16 instructions"),
            "{stderr}"
        );
        assert!(card["precision_auto"].is_null());
        assert_eq!(card["train_precision"], "fp32");
        assert!(!cache_file.exists());
        return;
    }
    let auto = &card["precision_auto"];
    let (fp32_s, bf16_s) = (
        auto["fp32_s"].as_f64().unwrap(),
        auto["bf16_s"].as_f64().unwrap(),
    );
    assert!(fp32_s > 0.0 && bf16_s > 0.0, "{auto}");
    let expect = if fp32_s / bf16_s >= 1.15 {
        "bf16"
    } else {
        "fp32"
    };
    assert_eq!(auto["chosen"], expect, "{auto}");
    assert_eq!(card["train_precision"], expect);
    assert_eq!(auto["cached"], false);
    assert!(
        stderr.contains("simple_cnn training step of 32 images at 48 px took")
            && stderr.contains("(measured now)"),
        "{stderr}"
    );
    assert!(cache_file.is_file());

    rewrite_cache(&cache_file, 2.0, 1.0);
    let (card, stderr) = run("faster");
    assert_eq!(card["train_precision"], "bf16");
    assert_eq!(card["precision_auto"]["cached"], true);
    assert!(
        stderr.contains("measured on this machine before"),
        "{stderr}"
    );
    rewrite_cache(&cache_file, 1.0, 1.05);
    let (card, _) = run("slower");
    assert_eq!(card["train_precision"], "fp32");
    assert_eq!(card["precision_auto"]["chosen"], "fp32");

    // Prediction: auto gives exactly the rows of the precision the times choose.
    let predict = |precision: &str| {
        let out = xray()
            .env("XRAY_CACHE_DIR", &cache)
            .args(["predict", "--format", "csv", "--precision", precision])
            .arg("--checkpoint")
            .arg(dir.path().join("slower"))
            .arg(t.data.join("opacity"))
            .output_ok();
        (out.stdout, String::from_utf8(out.stderr).unwrap())
    };
    let (fp32, bf16) = (predict("fp32").0, predict("bf16").0);
    let (_, stderr) = predict("auto");
    assert!(
        stderr.contains("forward pass of 8 images at 48 px took"),
        "{stderr}"
    );
    rewrite_cache(&cache_file, 2.0, 1.0);
    assert_eq!(predict("auto").0, bf16);
    rewrite_cache(&cache_file, 1.0, 2.0);
    let (rows, stderr) = predict("auto");
    assert_eq!(rows, fp32);
    assert!(stderr.contains("precision fp32 (auto:"), "{stderr}");
}
