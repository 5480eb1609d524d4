//! Shared fixtures: the xray binary, a synth dataset and one trained model per test run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::Command;

/// The xray binary under test.
pub fn xray() -> Command {
    Command::cargo_bin("xray").expect("the xray binary is built")
}

/// Repository root (for configs/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/<rel>`, which an ignored-by-default test needs: a missing file is a failure that
/// names it, never a silent pass. Tests that read `../shared` (the Kermany images, the ImageNet
/// weights; only some machines have it) are `#[ignore = "needs ../shared ..."]`, so the test
/// output says why they did not run; `make test` adds `--include-ignored` where `../shared` is
/// present.
pub fn shared(rel: &str) -> PathBuf {
    let p = repo().join("../shared").join(rel);
    assert!(
        p.exists(),
        "{} is absent: this test needs ../shared (run without --include-ignored to skip it)",
        p.display()
    );
    p
}

/// Writes a synth dataset into `dir/data` (`--per-class N --size PX`) and returns its path.
pub fn synth_dataset(dir: &Path, per_class: usize, size: u32) -> PathBuf {
    let data = dir.join("data");
    xray()
        .args([
            "synth",
            "--per-class",
            &per_class.to_string(),
            "--size",
            &size.to_string(),
            "--out",
        ])
        .arg(&data)
        .assert()
        .success();
    data
}

/// `xray split DATA --out OUT` (default options), asserted to succeed.
pub fn split_dataset(data: &Path, out: &Path) {
    xray()
        .arg("split")
        .arg(data)
        .arg("--out")
        .arg(out)
        .assert()
        .success();
}

/// `per_class` synth images per class at `size` px in DIR/synth, split into DIR/split; returns
/// both folders.
pub fn synth_split(dir: &Path, per_class: usize, size: u32) -> (PathBuf, PathBuf) {
    let data = synth_dataset(dir, per_class, size);
    let split = dir.join("split");
    split_dataset(&data, &split);
    (data, split)
}

/// `xray train --config configs/smoke.toml --set data.split=SPLIT`, ready for more arguments.
pub fn smoke_train(split: &Path) -> Command {
    let mut cmd = xray();
    cmd.arg("train")
        .arg("--config")
        .arg(repo().join("configs/smoke.toml"))
        .arg("--set")
        .arg(format!("data.split={}", split.display()));
    cmd
}

/// A synth dataset, its split and a simple_cnn trained on it with configs/smoke.toml, made once
/// and shared by every test of the run.
pub struct Trained {
    /// Keeps the folder alive for the whole test run.
    pub _dir: tempfile::TempDir,
    /// The synth dataset.
    pub data: PathBuf,
    /// The split folder.
    pub split: PathBuf,
    /// The run folder.
    pub run: PathBuf,
}

impl Trained {
    /// The first four images of each class (`normal_00000.png`, `opacity_00000.png`, ...),
    /// decoded at `predictor`'s input size and channels: what it predicts from.
    pub fn first_pixels(&self, predictor: &xray::infer::Predictor) -> Vec<std::sync::Arc<Vec<u8>>> {
        (0..4)
            .flat_map(|i| {
                ["normal", "opacity"].map(|c| self.data.join(c).join(format!("{c}_{i:05}.png")))
            })
            .map(|p| {
                let (size, channels) = (predictor.card.image_size, predictor.card.channels);
                let pixels = xray::data::decode::load_model_pixels(&p, size, channels).unwrap();
                std::sync::Arc::new(pixels)
            })
            .collect()
    }
}

/// The files of `dir` (not below it) whose name ends in `.ext`, sorted.
pub fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// The shared trained model (trained on first use).
pub fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| train_on_synth(400, 1))
}

/// Writes `per_class` synth images per class (seed `seed`), splits them and trains
/// configs/smoke.toml on them, all in a new temporary folder.
pub fn train_on_synth(per_class: usize, seed: u64) -> Trained {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("synth");
    let split = dir.path().join("split");
    let run = dir.path().join("runs/smoke");
    xray()
        .args(["synth", "--out"])
        .arg(&data)
        .args([
            "--per-class",
            &per_class.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .assert()
        .success();
    split_dataset(&data, &split);
    smoke_train(&split)
        .arg("--out")
        .arg(&run)
        .assert()
        .success();
    Trained {
        _dir: dir,
        data,
        split,
        run,
    }
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts that stderr is the clean, short kind: no panic, no libtorch backtrace.
pub fn assert_clean_stderr(stderr: &[u8]) {
    let text = String::from_utf8_lossy(stderr);
    for bad in [
        "panicked",
        "Exception raised from",
        "stack backtrace",
        "RUST_BACKTRACE",
    ] {
        assert!(!text.contains(bad), "stderr contains {bad:?}:\n{text}");
    }
}

/// Running a command that must succeed: its output, after asserting exit 0 with its stderr
/// shown otherwise. For `xray()` and any `std::process::Command` (initdb, pg_ctl, python).
pub trait RunOk {
    /// Runs the command to its end; panics with the exit status and stderr unless it exits 0.
    fn output_ok(&mut self) -> std::process::Output;

    /// [`RunOk::output_ok`]'s stdout as text.
    fn stdout_ok(&mut self) -> String {
        String::from_utf8(self.output_ok().stdout).expect("stdout is UTF-8")
    }
}

/// Asserts that a finished command exited 0, showing its stderr otherwise.
pub fn assert_ok(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl RunOk for Command {
    fn output_ok(&mut self) -> std::process::Output {
        assert_ok(self.output().expect("the command starts"))
    }
}

impl RunOk for std::process::Command {
    fn output_ok(&mut self) -> std::process::Output {
        assert_ok(self.output().expect("the command starts"))
    }
}

/// A free loopback port (bound and released: another process may take it before the caller
/// does, rarely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
