//! synth → split → train → eval → predict through the real binary.

use crate::common::{assert_clean_stderr, read_json, trained, xray, RunOk};

#[test]
fn simple_cnn_learns_the_synth_task() {
    let t = trained();
    let card = read_json(&t.run.join("model.json"));
    let val_acc = card["metrics"]["val_acc"].as_f64().unwrap();
    assert!(val_acc >= 0.90, "validation accuracy {val_acc} < 0.90");
    assert_eq!(card["classes"], serde_json::json!(["normal", "opacity"]));
    assert_eq!(card["arch"], "simple_cnn");
    for file in [
        "config.toml",
        "model.safetensors",
        "last.safetensors",
        "optimizer.safetensors",
        "metrics.csv",
        "state.json",
        "curves.png",
    ] {
        assert!(t.run.join(file).is_file(), "{file} missing");
    }
    // metrics.csv: a header and one row per epoch with the documented columns.
    let metrics = std::fs::read_to_string(t.run.join("metrics.csv")).unwrap();
    let mut lines = metrics.lines();
    assert_eq!(
        lines.next().unwrap(),
        "epoch,lr,train_loss,train_acc,val_loss,val_acc,val_auc,seconds"
    );
    assert_eq!(lines.count(), 20);
    // The resolved config has every default filled in and trains as it is.
    let resolved = std::fs::read_to_string(t.run.join("config.toml")).unwrap();
    assert!(resolved.contains("label_smoothing") && resolved.contains("[data.augment]"));
    // `latest` points at the run.
    let latest = t.run.parent().unwrap().join("latest");
    assert_eq!(
        latest.canonicalize().unwrap(),
        t.run.canonicalize().unwrap()
    );
}

#[test]
fn eval_writes_report_with_metrics() {
    let t = trained();
    let out = t.run.join("eval-check");
    let assert = xray()
        .arg("eval")
        .arg("--checkpoint")
        .arg(&t.run)
        .args(["--split", "test", "--out"])
        .arg(&out)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    assert!(
        stdout.contains("confusion matrix") && stdout.contains("ROC-AUC"),
        "{stdout}"
    );
    let report = read_json(&out.join("report.json"));
    let acc = report["accuracy"].as_f64().unwrap();
    let auc = report["roc_auc"].as_f64().unwrap();
    assert!(acc >= 0.85 && auc >= 0.9, "test accuracy {acc}, auc {auc}");
    let cm = report["confusion_matrix"].as_array().unwrap();
    let total: u64 = cm
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, report["n"].as_u64().unwrap());
    for key in ["per_class", "macro_avg", "weighted_avg"] {
        assert!(report[key].is_object(), "{key} missing");
    }
    // Uncertainty, calibration and the operating points chosen on validation.
    let ci = report["ci95"]["accuracy"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    assert!(
        lo <= acc && acc <= hi && hi - lo < 0.2,
        "accuracy {acc} CI [{lo}, {hi}]"
    );
    assert!(report["ci95"]["roc_auc"].is_array() && report["ci95"]["sensitivity"].is_array());
    // The guard's flags on this in-distribution set, beside what chance alone gives a set of
    // its size (from the validation set the threshold was set on).
    let ood = &report["ood"];
    let range = ood["expected_flags"].as_array().unwrap();
    let (lo, hi) = (range[0].as_u64().unwrap(), range[1].as_u64().unwrap());
    let n = report["n"].as_u64().unwrap();
    assert!(lo <= hi && hi < n / 2, "{ood}");
    let flagged = ood["flagged"].as_u64().unwrap();
    assert!(
        stdout.contains(&format!("{flagged} of {n} images flagged"))
            && stdout.contains(&format!("chance flags {lo}-{hi}")),
        "{stdout}"
    );
    // A split's images carry their groups: the intervals resample patients, as many as the
    // test rows of split.csv name.
    assert_eq!(report["ci95"]["method"], "group");
    let mut rows = csv::Reader::from_path(t.split.join("split.csv")).unwrap();
    let groups: std::collections::HashSet<String> = rows
        .records()
        .map(|r| r.unwrap())
        .filter(|r| &r[3] == "test")
        .map(|r| r[2].to_string())
        .collect();
    assert_eq!(report["ci95"]["groups"], groups.len());
    assert!(
        report["ece"]["before"].as_f64().is_some() && report["ece"]["after"].as_f64().is_some()
    );
    let at_sens = &report["threshold_at_sensitivity"];
    assert!(at_sens["threshold"].as_f64().is_some() && at_sens["sensitivity"].as_f64().is_some());
    assert!(report["threshold_youden"]["specificity"].as_f64().is_some());
    let card = read_json(&t.run.join("model.json"));
    let threshold = card["threshold"].as_f64().unwrap();
    assert_eq!(report["threshold"].as_f64().unwrap(), threshold);
    assert_eq!(
        card["operating_points"]["at_sensitivity"]["threshold"]
            .as_f64()
            .unwrap(),
        threshold
    );
    assert!(card["temperature"].as_f64().unwrap() > 0.0);

    for picture in [
        "confusion.png",
        "roc.png",
        "pr.png",
        "calibration.png",
        "errors.png",
        "gallery.png",
    ] {
        let img = image::open(out.join(picture)).unwrap_or_else(|e| panic!("{picture}: {e}"));
        assert!(img.width() >= 300 && img.height() >= 150, "{picture}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| accuracy |") && md.contains("(errors.png)"),
        "{md}"
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // Self-contained: every picture inlined, nothing fetched from elsewhere.
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 7);
    assert!(!html.contains("http://") && !html.contains("https://"));

    let preds = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    // The decision follows the stored threshold.
    let mut rows = csv::Reader::from_reader(preds.as_bytes());
    for row in rows.records() {
        let row = row.unwrap();
        let p: f64 = row[4].parse().unwrap();
        assert_eq!(
            &row[2] == "opacity",
            p >= threshold - 1e-6,
            "{row:?} at {threshold}"
        );
    }
    assert!(preds.starts_with("path,label,predicted,p_normal,p_opacity"));
    assert_eq!(preds.lines().count() as u64, total + 1);

    // A class-per-folder DATA_DIR works as well.
    xray()
        .arg("eval")
        .arg("--checkpoint")
        .arg(&t.run)
        .arg("--split")
        .arg(&t.data)
        .arg("--out")
        .arg(t.run.join("eval-folder"))
        .assert()
        .success();
}

#[test]
fn predict_text_json_and_csv() {
    let t = trained();
    let img = t.data.join("opacity/opacity_00003.png");
    let text = xray()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&t.run)
        .arg(&img)
        .stdout_ok();
    let fields: Vec<&str> = text.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 3, "{text}");
    assert_eq!(fields[0], img.display().to_string());
    assert!(["normal", "opacity"].contains(&fields[1]));
    assert!(fields[2].ends_with('%'));

    let out = xray()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&t.run)
        .args(["--format", "json"])
        .arg(t.data.join("normal"))
        .output_ok();

    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 400);
    let normal = lines.iter().filter(|l| l["label"] == "normal").count();
    assert!(
        normal >= 340,
        "only {normal}/400 normal images predicted normal"
    );
    let first = &lines[0];
    let p: f64 = ["normal", "opacity"]
        .iter()
        .map(|c| first["probabilities"][c].as_f64().unwrap())
        .sum();
    assert!((p - 1.0).abs() < 1e-6);
    assert_eq!(first["model"], "smoke");

    let out = xray()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&t.run)
        .args(["--format", "csv"])
        .arg(&img)
        .output()
        .unwrap();
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(
        csv.starts_with(
            "path,label,probability,p_normal,p_opacity,ood_score,out_of_distribution,error\n"
        ),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 2);
}

#[test]
fn predict_reports_unreadable_images_and_goes_on() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.png");
    let text = dir.path().join("notes.png");
    let truncated = dir.path().join("truncated.png");
    std::fs::write(&empty, b"").unwrap();
    std::fs::write(&text, b"not an image at all").unwrap();
    let bytes = std::fs::read(t.data.join("normal/normal_00001.png")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let good = t.data.join("normal/normal_00001.png");
    let out = xray()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&t.run)
        .args([&empty, &text, &truncated, &good])
        .output_ok();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // One line per bad file (besides the line on the precision `auto` chose, where it timed).
    let lines = stderr.lines().filter(|l| !l.starts_with("precision "));
    assert_eq!(lines.count(), 3, "{stderr}");
    for (path, why) in [
        (&empty, "empty"),
        (&text, "not a recognised image"),
        (&truncated, "truncated"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&path.display().to_string()))
            .unwrap_or_else(|| panic!("{} not reported:\n{stderr}", path.display()));
        assert!(line.contains(why), "{line}");
    }
    assert_clean_stderr(&out.stderr);

    // None readable: exit 1.
    let out = xray()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&t.run)
        .args([&empty, &text])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_clean_stderr(&out.stderr);
}

#[test]
fn predict_with_tta_gives_probabilities() {
    let t = trained();
    let img = t.data.join("opacity/opacity_00005.png");
    let run = |tta: bool| {
        let mut cmd = xray();
        cmd.arg("predict")
            .arg("--checkpoint")
            .arg(&t.run)
            .arg(&img)
            .args(["--format", "json"]);
        if tta {
            cmd.arg("--tta");
        }
        let out = cmd.assert().success().get_output().stdout.clone();
        serde_json::from_slice::<serde_json::Value>(&out).unwrap()
    };
    for j in [run(false), run(true)] {
        let probs: Vec<f64> = j["probabilities"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{j}");
        assert!(j["label"] == "opacity" || j["label"] == "normal", "{j}");
    }
}

/// TTA's probabilities are the mean of the four views' softmax (each view checked in
/// `compute::scoring`'s tests), and differ from the plain image's: TTA does something.
#[test]
fn tta_averages_the_four_views() {
    use xray::compute::scoring::tta_views;
    let t = trained();
    let predictor = xray::infer::Predictor::load(&t.run, tch::Device::Cpu).unwrap();
    let pixels = t.first_pixels(&predictor);
    let plain = predictor
        .probabilities_of_pixels(&pixels, 8, false)
        .unwrap()
        .probs;
    let tta = predictor
        .probabilities_of_pixels(&pixels, 8, true)
        .unwrap()
        .probs;

    let refs: Vec<&[u8]> = pixels.iter().map(|p| p.as_slice()).collect();
    let xs = predictor.input_tensor(&refs);
    let temperature = predictor.card.temperature.max(1e-6);
    let views: Vec<tch::Tensor> = tta_views(&xs)
        .iter()
        .map(|v| {
            let logits = tch::no_grad(|| predictor.model().forward_t(v, false));
            (logits.to_kind(tch::Kind::Double) / temperature).softmax(-1, tch::Kind::Double)
        })
        .collect();
    let mean = tch::Tensor::stack(&views, 0).mean_dim(&[0i64][..], false, tch::Kind::Double);
    let (mut worst, mut moved) = (0f64, 0f64);
    for (i, (a, b)) in tta.iter().zip(&plain).enumerate() {
        for (k, (&p, &q)) in a.iter().zip(b).enumerate() {
            worst = worst.max((p - mean.double_value(&[i as i64, k as i64])).abs());
            moved = moved.max((p - q).abs());
        }
    }
    assert!(worst < 1e-9, "TTA is not the mean of the views: {worst}");
    assert!(
        moved > 1e-4,
        "TTA left every probability as it was (largest change {moved})"
    );
}
