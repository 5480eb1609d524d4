//! The README's and the guide's (`docs/*.md`) runnable commands run: every fenced block whose
//! info string is `sh runnable` is run, in order (the README first, then the pages by name), by
//! bash with `-euo pipefail` in one scratch folder where `xray` is the binary under test and
//! `configs/` is the repository's. The README's block makes the synthetic data and the model
//! that the pages' blocks use.

use std::path::{Path, PathBuf};

use super::common::{files_with_extension, repo, xray, RunOk};

/// The runnable blocks of one Markdown file, each with the line it starts on.
fn runnable_blocks(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == "```sh runnable" => current = Some((i + 1, String::new())),
            None => {}
            Some(_) if line.starts_with("```") => blocks.push(current.take().unwrap()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(
        current.is_none(),
        "{}: a block is not closed",
        path.display()
    );
    blocks
}

/// The files whose blocks run, in order.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    pages.extend(files_with_extension(&repo().join("docs"), "md"));
    pages
}

#[test]
fn the_runnable_blocks_of_the_readme_and_the_guide_run() {
    let work = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("configs"), work.path().join("configs")).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("xray");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for page in pages() {
        for (line, block) in runnable_blocks(&page) {
            let out = std::process::Command::new("bash")
                .args(["-euo", "pipefail", "-c", &block])
                .current_dir(work.path())
                .env("PATH", &path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}:{line}: the block failed ({}):\n{block}\n{}",
                page.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 4, "only {ran} runnable block(s) found");
    // What the README's block promises is there.
    let latest = work.path().join("checkpoints/latest");
    assert!(latest.join("eval-test/report.html").is_file());
    assert!(work.path().join("heatmaps/index.html").is_file());
    assert!(work.path().join("all.csv").is_file());
}

#[test]
fn blocks_are_read_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("a.md");
    std::fs::write(
        &md,
        "text\n```sh\nnot run\n```\n```sh runnable\nxray one\nxray two\n```\n",
    )
    .unwrap();
    assert_eq!(
        runnable_blocks(&md),
        vec![(5, "xray one\nxray two\n".to_string())]
    );
}

/// The README's first command, `make demo`, is `xray demo`: its six steps run (here on fewer
/// images and epochs) and leave the outputs its last lines name.
#[test]
fn the_demo_runs_its_six_steps() {
    let work = tempfile::tempdir().unwrap();
    let stdout = xray()
        .arg("demo")
        .arg("--workdir")
        .arg(work.path())
        .args(["--per-class", "40", "--set", "train.epochs=2"])
        .stdout_ok();
    for step in 1..=6 {
        assert!(stdout.contains(&format!("[{step}/6]")), "{stdout}");
    }
    let runs: Vec<PathBuf> = std::fs::read_dir(work.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("demo-")
        })
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].join("eval-test/report.html").is_file());
    assert!(runs[0].join("gradcam/index.html").is_file());
    assert!(work.path().join("datasets/synth-split/split.csv").is_file());
}
