//! Bad input gets one clear line and the right exit code (2 for usage and config), never a
//! panic or a libtorch backtrace.

use crate::common::{
    assert_clean_stderr, files_with_extension, repo, smoke_train, synth_dataset, trained, xray,
};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn unknown_config_key_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[train]\nlearning_rate = 0.1\n").unwrap();
    let out = xray()
        .arg("train")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(err.contains("learning_rate"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_clean_stderr(&out.stderr);

    // The same through --set.
    let out = xray()
        .arg("train")
        .arg("--config")
        .arg(repo().join("configs/smoke.toml"))
        .args(["--set", "model.depth=3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("depth"), "{}", stderr_of(&out));
}

#[test]
fn missing_dataset_folder_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = xray()
        .arg("split")
        .arg(dir.path().join("nowhere"))
        .arg("--out")
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("nowhere"), "{}", stderr_of(&out));
    assert_clean_stderr(&out.stderr);

    // train with a split folder that does not exist.
    let out = smoke_train(&dir.path().join("missing-split"))
        .arg("--out")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("missing-split"),
        "{}",
        stderr_of(&out)
    );
    assert_clean_stderr(&out.stderr);
}

#[test]
fn empty_class_folder_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_dataset(dir.path(), 3, 32);
    std::fs::create_dir(data.join("empty_class")).unwrap();
    let out = xray()
        .arg("split")
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.contains("empty_class") && err.contains("no images"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn checkpoint_without_model_json_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    image::GrayImage::new(8, 8).save(&img).unwrap();
    for cmd in ["predict", "eval"] {
        let mut c = xray();
        c.arg(cmd).arg("--checkpoint").arg(dir.path());
        if cmd == "predict" {
            c.arg(&img);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = stderr_of(&out);
        assert!(err.contains("model.json"), "{cmd}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_clean_stderr(&out.stderr);
    }
}

#[test]
fn bad_values_exit_2() {
    let t = trained();
    for (set, word) in [
        ("train.optimizer=lion", "train.optimizer"),
        ("model.arch=vgg99", "model.arch"),
        ("data.channels=2", "data.channels"),
    ] {
        let out = smoke_train(&t.split).args(["--set", set]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{set}");
        assert!(stderr_of(&out).contains(word), "{set}: {}", stderr_of(&out));
    }
    // A missing input to predict is usage too.
    let out = xray()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&t.run)
        .arg("/no/such/image.png")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn diverging_learning_rate_stops_cleanly() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("nan");
    let out = smoke_train(&t.split)
        .args([
            "--set",
            "train.lr=1e30",
            "--set",
            "train.epochs=2",
            "--set",
            "train.warmup_epochs=0",
        ])
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("diverged"), "{err}");
    assert_clean_stderr(&out.stderr);
}

/// A JPEG cut to a third of its bytes and a PNG without its IEND chunk are refused by predict
/// with the reason `truncated`, one line each naming the file; the good images beside them are
/// still answered.
#[test]
fn predict_refuses_truncated_images() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    crate::formats::write_fixtures(dir.path());
    let out = xray()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&t.run)
        .arg(dir.path())
        .output()
        .unwrap();
    let err = stderr_of(&out);
    for name in ["cut_to_a_third.jpg", "no_iend.png"] {
        let line = err
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} not reported: {err}"));
        assert!(line.contains("truncated"), "{line}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("full.jpg"));
    assert_clean_stderr(&out.stderr);
}

/// Every shipped config parses, with every key known and every value valid.
#[test]
fn shipped_configs_are_valid() {
    let mut n = 0;
    for path in files_with_extension(&repo().join("configs"), "toml") {
        xray::config::Config::load(&path, &[])
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        n += 1;
    }
    assert!(n >= 6, "only {n} configs");
}
