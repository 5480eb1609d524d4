//! The reference studies' configs (configs/studies/): each says which study it reproduces and
//! what differs, trains for one epoch on a small synth split, and the two `[tune]` sections run
//! two trials each; the architecture keys rebuild the same network for predict and Grad-CAM;
//! `compare` puts two runs side by side and refuses runs of other classes; eval's gallery.

use std::path::{Path, PathBuf};

use crate::common::{
    files_with_extension, read_json, repo, split_dataset, synth_dataset, trained, xray,
};

fn study_configs() -> Vec<PathBuf> {
    files_with_extension(&repo().join("configs/studies"), "toml")
}

/// The overrides that make a study config train in seconds on `split`: 64 px, one epoch, no
/// ImageNet file (loading those is tested elsewhere).
fn small(split: &Path) -> Vec<String> {
    vec![
        format!("data.split={}", split.display()),
        "data.image_size=64".into(),
        "train.epochs=1".into(),
        "train.freeze_epochs=0".into(),
        "model.pretrained=none".into(),
    ]
}

#[test]
fn every_study_config_trains_and_its_search_runs() {
    let configs = study_configs();
    assert!(configs.len() >= 5, "{configs:?}");
    let dir = tempfile::tempdir().unwrap();
    let data = synth_dataset(dir.path(), 30, 64);
    let split = dir.path().join("split");
    split_dataset(&data, &split);
    let mut searched = 0;
    for config in &configs {
        let text = std::fs::read_to_string(config).unwrap();
        let name = config.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(text.starts_with("# Study: "), "{name}: no study header");
        assert!(
            text.contains("What differs"),
            "{name}: says nothing of what differs"
        );
        let run = dir.path().join("runs").join(&name);
        let mut cmd = xray();
        cmd.arg("train").arg("--config").arg(config);
        for set in small(&split) {
            cmd.arg("--set").arg(set);
        }
        cmd.arg("--out").arg(&run).assert().success();
        let card = read_json(&run.join("model.json"));
        let table: toml::Table = text.parse().unwrap();
        let model = table["model"].as_table().unwrap();
        if model.contains_key("blocks") {
            assert_eq!(
                card["shape"]["blocks"].as_i64(),
                model["blocks"].as_integer(),
                "{name}: {card}"
            );
        }
        if table.get("tune").is_some() {
            searched += 1;
            let out = dir.path().join("tune").join(&name);
            let mut cmd = xray();
            cmd.arg("tune")
                .arg("--config")
                .arg(config)
                .args(["--trials", "2", "--out"])
                .arg(&out);
            for set in small(&split) {
                cmd.arg("--set").arg(set);
            }
            cmd.assert().success();
            let trials = std::fs::read_to_string(out.join("trials.csv")).unwrap();
            assert_eq!(trials.lines().count(), 3, "{name}: {trials}");
        }
    }
    assert_eq!(searched, 2, "the COVID grid and the DermNet search");

    // A shaped network (4 blocks, dense layer, block dropout) rebuilds from model.json for
    // predict and Grad-CAM.
    let run = dir.path().join("runs/brain_mri_explain");
    let image = data.join("opacity/opacity_00001.png");
    xray()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&run)
        .arg(&image)
        .assert()
        .success();
    let heat = dir.path().join("heat");
    xray()
        .arg("gradcam")
        .arg("--checkpoint")
        .arg(&run)
        .arg("--out")
        .arg(&heat)
        .arg(&image)
        .assert()
        .success();
    assert!(std::fs::read_dir(&heat).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".png")));
}

#[test]
fn a_bad_architecture_key_is_a_usage_error() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    for (sets, words) in [
        (vec!["model.kernel_size=4"], "model.kernel_size must be odd"),
        (
            vec!["model.blocks=3", "model.filters=[8, 16]"],
            "model.filters lists 2 widths for 3 blocks",
        ),
        (vec!["model.blocks=9"], "model.blocks must be from 1 to 8"),
        (
            vec!["model.arch=\"mobilenet_v2\"", "model.dense_units=64"],
            "model.dense_units shapes simple_cnn and sepres_cnn only",
        ),
    ] {
        let mut cmd = crate::common::smoke_train(&t.split);
        for set in &sets {
            cmd.arg("--set").arg(set);
        }
        let out = cmd
            .arg("--out")
            .arg(dir.path().join("run"))
            .assert()
            .code(2);
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        let set = sets.join(" ");
        assert!(stderr.contains(words), "{set}: {stderr}");
    }
}

#[test]
fn compare_two_runs_and_refuse_other_classes() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    // A second model of the same task: the shared one's split, another shape.
    let other = dir.path().join("wide");
    crate::common::smoke_train(&t.split)
        .args([
            "--set",
            "model.filters=48",
            "--set",
            "model.dense_units=32",
            "--out",
        ])
        .arg(&other)
        .assert()
        .success();
    let out = dir.path().join("compare");
    let assert = xray()
        .arg("compare")
        .arg(&t.run)
        .arg(&other)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let printed = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(
        printed.contains("accuracy [95% CI]") && printed.contains("wide"),
        "{printed}"
    );
    for f in ["compare.md", "compare.html", "roc.png", "curves.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| ")).count(),
        3,
        "{md}"
    );
    let html = std::fs::read_to_string(out.join("compare.html")).unwrap();
    assert_eq!(html.matches("data:image/png;base64,").count(), 2);

    // Other classes: refused, exit 2, the reason named.
    let odd = dir.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    let mut card = read_json(&t.run.join("model.json"));
    card["classes"] = serde_json::json!(["cat", "dog"]);
    std::fs::write(odd.join("model.json"), card.to_string()).unwrap();
    let refused = xray().arg("compare").arg(&t.run).arg(&odd).assert().code(2);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(
        stderr.contains("only models of the same classes"),
        "{stderr}"
    );
}

#[test]
fn eval_writes_a_labelled_gallery_of_right_and_wrong_answers() {
    let t = trained();
    let out = tempfile::tempdir().unwrap();
    xray()
        .arg("eval")
        .arg("--checkpoint")
        .arg(&t.run)
        .arg("--out")
        .arg(out.path())
        .assert()
        .success();
    let gallery = image::open(out.path().join("gallery.png"))
        .expect("gallery.png")
        .to_rgb8();
    // Two rows of six 150 px tiles: about 6 x 160 wide, taller than two tiles.
    assert!(
        gallery.width() >= 900 && gallery.height() >= 300,
        "{:?}",
        gallery.dimensions()
    );
    // Right answers are framed green: the shared model is right on most test images.
    let green = gallery.pixels().filter(|p| p.0 == [20, 150, 60]).count();
    assert!(green > 500, "{green} green frame pixels");
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.contains("Right and wrong answers per class"));
}
