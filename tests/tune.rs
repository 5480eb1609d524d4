//! `xray tune` on synth data: the grid is the product of the lists, TPE keeps to the ranges and
//! log scales, a killed search carries on without redoing finished trials, and best.toml
//! trains as it is.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{assert_clean_stderr, repo, split_dataset, synth_dataset, xray};

/// A synth split small enough for trials of a second or two.
pub(crate) fn small_split(dir: &Path) -> std::path::PathBuf {
    let data = synth_dataset(dir, 60, 48);
    let split = dir.join("split");
    split_dataset(&data, &split);
    split
}

/// configs/tune_synth.toml on `split` at 48 px, with `extra` config lines appended (a TOML
/// table may be given again only once, so the space is replaced as a whole).
pub(crate) fn config(dir: &Path, split: &Path, tune: &str) -> std::path::PathBuf {
    let base = std::fs::read_to_string(repo().join("configs/tune_synth.toml")).unwrap();
    let head = base.split("[tune]").next().unwrap();
    let text = format!(
        "{}\n{tune}\n",
        head.replace(
            "split = \"datasets/synth-split\"",
            &format!("split = {:?}", split.display().to_string())
        )
        .replace("image_size = 64", "image_size = 48")
    );
    let path = dir.join("tune.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn rows(csv_path: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(csv_path)
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect()
}

fn column(csv_path: &Path, name: &str) -> Vec<String> {
    let mut reader = csv::Reader::from_path(csv_path).unwrap();
    let k = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == name)
        .unwrap();
    reader
        .records()
        .map(|r| r.unwrap()[k].to_string())
        .collect()
}

#[test]
fn grid_runs_exactly_the_product_of_the_lists() {
    let dir = tempfile::tempdir().unwrap();
    let split = small_split(dir.path());
    let cfg = config(
        dir.path(),
        &split,
        "[tune]\nstrategy = \"grid\"\nprune = \"none\"\n[tune.space]\n\"train.lr\" = [0.01, 0.001]\n\"train.optimizer\" = [\"adamw\", \"sgd\", \"rmsprop\"]\n",
    );
    let out = dir.path().join("search");
    let assert = xray()
        .args(["tune", "--config"])
        .arg(&cfg)
        .args(["--set", "train.epochs=1", "--out"])
        .arg(&out)
        .assert()
        .success();
    assert_clean_stderr(&assert.get_output().stderr);
    let csv_path = out.join("trials.csv");
    let pairs: BTreeSet<(String, String)> = column(&csv_path, "train.lr")
        .into_iter()
        .zip(column(&csv_path, "train.optimizer"))
        .collect();
    let want: BTreeSet<(String, String)> = ["0.01", "0.001"]
        .iter()
        .flat_map(|lr| {
            ["adamw", "sgd", "rmsprop"]
                .iter()
                .map(move |o| (lr.to_string(), o.to_string()))
        })
        .collect();
    assert_eq!(rows(&csv_path).len(), 6);
    assert_eq!(pairs, want);
    assert!(column(&csv_path, "status").iter().all(|s| s == "complete"));
    assert_eq!(std::fs::read_dir(out.join("trials")).unwrap().count(), 6);
    assert!(out.join("trials.png").is_file() && out.join("best.toml").is_file());
    // Each trial really trained with its values.
    let trial3 = std::fs::read_to_string(out.join("trials/0003/config.toml")).unwrap();
    let row3 = &rows(&csv_path)[3];
    assert!(
        trial3.contains(&format!("optimizer = \"{}\"", &row3[7])),
        "{trial3}"
    );

    // A time budget spent by the first trial starts no second one.
    let out = dir.path().join("budget");
    let assert = xray()
        .args(["tune", "--config"])
        .arg(&cfg)
        .args(["--set", "train.epochs=1", "--time-budget", "0.001", "--out"])
        .arg(&out)
        .assert()
        .success();
    assert_eq!(rows(&out.join("trials.csv")).len(), 1);
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    assert!(stdout.contains("stopped by the time budget"), "{stdout}");
}

#[test]
fn killed_tpe_search_carries_on_and_its_best_config_trains() {
    let dir = tempfile::tempdir().unwrap();
    let split = small_split(dir.path());
    let cfg = config(
        dir.path(),
        &split,
        "[tune]\nstrategy = \"tpe\"\nstartup_trials = 2\nprune_after_trials = 2\nprune_after_epochs = 1\n[tune.space]\n\"train.lr\" = { low = 1e-4, high = 0.1, log = true }\n\"model.dropout\" = { low = 0.0, high = 0.5 }\n\"train.batch_size\" = { low = 8, high = 64, log = true }\n\"train.optimizer\" = [\"adamw\", \"sgd\"]\n",
    );
    let out = dir.path().join("search");
    let args = |cmd: &mut std::process::Command| {
        cmd.args(["tune", "--config"])
            .arg(&cfg)
            .args(["--set", "train.epochs=3", "--trials", "6", "--out"])
            .arg(&out);
    };

    // Kill the search (SIGKILL) once two trials are recorded.
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("xray"));
    args(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let csv_path = out.join("trials.csv");
    let start = Instant::now();
    while !csv_path.is_file() || rows(&csv_path).len() < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the search ended before it was killed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no trial finished in 5 min"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before = rows(&csv_path).len();
    let stamp = |id: usize| {
        std::fs::metadata(out.join(format!("trials/{id:04}/metrics.csv")))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before: Vec<_> = (0..done_before).map(stamp).collect();

    let mut again = xray();
    again
        .args(["tune", "--config"])
        .arg(&cfg)
        .args(["--set", "train.epochs=3", "--trials", "6", "--out"])
        .arg(&out);
    let assert = again.assert().success();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        stderr.contains(&format!("{done_before} finished trial(s) found")),
        "{stderr}"
    );
    let after: Vec<_> = (0..done_before).map(stamp).collect();
    assert_eq!(before, after, "finished trials were not trained again");
    let ids: Vec<usize> = column(&csv_path, "trial")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids, (0..6).collect::<Vec<_>>());
    // The finished trials the second run found are the ones reported as run earlier.
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    assert!(
        stdout.contains(&format!("({} run now)", 6 - done_before)),
        "{stdout}"
    );

    // Every value within its range; the batch size an integer.
    for (key, lo, hi) in [
        ("train.lr", 1e-4, 0.1),
        ("model.dropout", 0.0, 0.5),
        ("train.batch_size", 8.0, 64.0),
    ] {
        for v in column(&csv_path, key) {
            let x: f64 = v.parse().unwrap();
            assert!((lo..=hi).contains(&x), "{key} = {v}");
        }
    }
    assert!(column(&csv_path, "train.batch_size")
        .iter()
        .all(|v| !v.contains('.')));

    // best.toml names the best complete trial and trains as it is.
    let values = column(&csv_path, "val_auc");
    let status = column(&csv_path, "status");
    let best = (0..6)
        .filter(|&i| status[i] == "complete")
        .max_by(|&a, &b| {
            values[a]
                .parse::<f64>()
                .unwrap()
                .total_cmp(&values[b].parse().unwrap())
        })
        .unwrap();
    let best_toml = std::fs::read_to_string(out.join("best.toml")).unwrap();
    assert!(best_toml.contains(&format!("trial {best},")), "{best_toml}");
    assert!(
        !best_toml.contains("[tune"),
        "best.toml is a training config"
    );
    let lr = &column(&csv_path, "train.lr")[best];
    assert!(
        best_toml.contains(&format!("lr = {lr}")),
        "{lr} in {best_toml}"
    );
    let run = dir.path().join("best-run");
    xray()
        .args(["train", "--config"])
        .arg(out.join("best.toml"))
        .arg("--out")
        .arg(&run)
        .assert()
        .success();
    assert!(run.join("model.safetensors").is_file());
}

#[test]
fn bad_search_spaces_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let split = dir.path().join("split");
    std::fs::create_dir_all(&split).unwrap();
    for (space, needle) in [
        ("\"train.lrr\" = [0.1, 0.01]", "lrr"),
        ("\"train.optimizer\" = [\"adamw\", \"lion\"]", "lion"),
        (
            "\"train.lr\" = { low = 0.0, high = 0.1, log = true }",
            "train.lr",
        ),
    ] {
        let cfg = config(
            dir.path(),
            &split,
            &format!("[tune]\n[tune.space]\n{space}\n"),
        );
        let assert = xray()
            .args(["tune", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(dir.path().join("never"))
            .assert()
            .code(2);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
        assert!(stderr.contains(needle), "{space}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let cfg = config(
        dir.path(),
        &split,
        "[tune]\nstrategy = \"grid\"\n[tune.space]\n\"train.lr\" = { low = 0.001, high = 0.1 }\n",
    );
    let assert = xray().args(["tune", "--config"]).arg(&cfg).assert().code(2);
    assert!(String::from_utf8_lossy(&assert.get_output().stderr).contains("needs lists"));
}

/// A PostgreSQL URL's password, in the user part or as a `password=` parameter, appears
/// nowhere in what `tune` prints when the server cannot be reached.
#[test]
fn storage_passwords_never_reach_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let split = small_split(dir.path());
    let cfg = config(
        dir.path(),
        &split,
        "[tune]\nstrategy = \"grid\"\n[tune.space]\n\"train.lr\" = [0.01]\n",
    );
    // Port 1 on the loopback: nothing listens there.
    for url in [
        "postgres://xray:s3cret-pw@127.0.0.1:1/tune",
        "postgres://xray@127.0.0.1:1/tune?password=s3cret-pw&connect_timeout=5",
        "postgresql://xray:s3cret-pw@127.0.0.1:1/tune?sslmode=disable&password=s3cret-pw",
    ] {
        let assert = xray()
            .args(["tune", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(dir.path().join("never"))
            .args(["--storage", url])
            .timeout(Duration::from_secs(60))
            .assert()
            .code(2);
        let out = assert.get_output();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("cannot connect"), "{url}: {text}");
        assert!(!text.contains("s3cret"), "{url}: {text}");
        assert!(text.contains("***"), "{url}: {text}");
    }
}
