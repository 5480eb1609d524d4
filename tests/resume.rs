//! A run killed mid-epoch (SIGKILL) resumes from its last completed epoch and ends where the
//! uninterrupted run ends.

use std::time::{Duration, Instant};

use crate::common::{read_json, repo, smoke_train, split_dataset, synth_dataset, xray};

fn metrics_rows(path: &std::path::Path) -> Vec<Vec<f64>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|r| {
            r.unwrap()
                .iter()
                .take(7)
                .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
                .collect()
        })
        .collect()
}

#[test]
fn killed_run_resumes_and_matches_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_dataset(dir.path(), 150, 64);
    let split = dir.path().join("split");
    split_dataset(&data, &split);
    let settings = ["train.epochs=6", "data.image_size=48"];
    let with_settings = |cmd: &mut assert_cmd::Command| {
        for s in settings {
            cmd.args(["--set", s]);
        }
    };

    let whole = dir.path().join("whole");
    let mut cmd = smoke_train(&split);
    with_settings(&mut cmd);
    cmd.arg("--out").arg(&whole).assert().success();

    // The same run, killed once two epochs are done and the third is under way.
    let killed = dir.path().join("killed");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("xray"))
        .arg("train")
        .arg("--config")
        .arg(repo().join("configs/smoke.toml"))
        .arg("--set")
        .arg(format!("data.split={}", split.display()))
        .args(settings.iter().flat_map(|s| ["--set", s]))
        .arg("--out")
        .arg(&killed)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let done = std::fs::read(killed.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["epochs_done"].as_u64())
            .unwrap_or(0);
        if done >= 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let state = read_json(&killed.join("state.json"));
    assert!(!state["finished"].as_bool().unwrap());
    let done_at_kill = state["epochs_done"].as_u64().unwrap();
    assert!(done_at_kill < 6, "the run finished before it was killed");

    let out = xray()
        .arg("train")
        .arg("--resume")
        .arg(&killed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = metrics_rows(&killed.join("metrics.csv"));
    let reference = metrics_rows(&whole.join("metrics.csv"));
    assert_eq!(resumed.len(), 6);
    for (i, (a, b)) in resumed.iter().zip(&reference).enumerate() {
        assert_eq!(a[0] as usize, i + 1, "epochs continue without a gap");
        for (x, y) in a.iter().zip(b).skip(1) {
            assert!(
                (x - y).abs() <= 1e-4 * y.abs().max(1.0),
                "epoch {}: {a:?} vs {b:?}",
                i + 1
            );
        }
    }
    assert!(read_json(&killed.join("state.json"))["finished"]
        .as_bool()
        .unwrap());
    assert!(killed.join("model.json").is_file());

    // A finished run has nothing to resume: a clear usage error.
    let out = xray()
        .arg("train")
        .arg("--resume")
        .arg(&killed)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already finished"));
}
