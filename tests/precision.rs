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
