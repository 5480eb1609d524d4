//! A run killed mid-epoch (SIGKILL), or between an epoch's files and its commit, resumes from
//! its last committed epoch and ends where the uninterrupted run ends.

use std::time::{Duration, Instant};

use crate::common::{read_json, repo, smoke_train, synth_split, xray, RunOk};

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
    let (_, split) = synth_split(dir.path(), 150, 64);
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

    // The two windows a kill can hit at an epoch's end, made certain: the last committed
    // epoch's files not yet renamed from their staged names, and the next epoch's files and
    // metrics row written but never committed by state.json (they hold other weights here:
    // the whole run's last, so using them would change every later epoch).
    let e = done_at_kill;
    let staged = killed.join(format!("last.next-{e}.safetensors"));
    if !staged.exists() {
        std::fs::rename(killed.join("last.safetensors"), &staged).unwrap();
    }
    for name in ["last", "optimizer"] {
        std::fs::copy(
            whole.join(format!("{name}.safetensors")),
            killed.join(format!("{name}.next-{}.safetensors", e + 1)),
        )
        .unwrap();
    }
    let whole_csv = std::fs::read_to_string(whole.join("metrics.csv")).unwrap();
    let mut csv = std::fs::read_to_string(killed.join("metrics.csv")).unwrap();
    if csv.lines().count() == e as usize + 1 {
        csv.push_str(whole_csv.lines().nth(e as usize + 1).unwrap());
        csv.push('\n');
        std::fs::write(killed.join("metrics.csv"), csv).unwrap();
    }

    xray().arg("train").arg("--resume").arg(&killed).output_ok();

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
    let left: Vec<_> = std::fs::read_dir(&killed)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".next-"))
        .collect();
    assert!(left.is_empty(), "staged files left: {left:?}");

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
