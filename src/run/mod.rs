//! The run folder: what training writes and what inference, eval, gradcam, serve and tune read.
//! It stands on `config`, `models` and `ood` (whose records `model.json` holds) and below every
//! stage that trains or reads a run.
//!
//! | file | type here |
//! |---|---|
//! | `model.json` | [`ModelCard`] |
//! | `state.json` | [`RunState`] |
//! | `metrics.csv` | rows of [`EpochMetrics`] |
//! | `model.safetensors`, `last.safetensors` | [`save_weights`], staged by [`pending_path`] |
//! | `checkpoints/latest` | [`update_latest`] |
//!
//! Every write is atomic, through [`crate::fsutil::write_with`].

mod card;
mod history;
mod state;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::nn::VarStore;

use crate::error::TorchResultExt;
use crate::fsutil::{temp_sibling, write_with};

pub use card::{ModelCard, ValidationOperatingPoints};
pub use history::{read_metrics_csv, write_metrics_csv, EpochMetrics};
pub use state::RunState;

/// Where a new run folder goes: `out`, else `checkpoints/<name>-<timestamp>`.
pub fn new_run_dir(name: &str, out: Option<&Path>) -> PathBuf {
    match out {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("checkpoints").join(format!(
            "{name}-{}",
            chrono::Local::now().format("%Y%m%d-%H%M%S")
        )),
    }
}

/// A run's name as predict's JSON and the upload page show it: the folder name, with
/// `checkpoints/latest` resolved to the run it points at.
pub fn run_name(run_dir: &Path) -> String {
    run_dir
        .canonicalize()
        .unwrap_or_else(|_| run_dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Where epoch `epoch`'s `name` (`last.safetensors`, `optimizer.safetensors`,
/// `model.safetensors`) is written until state.json commits that epoch: the epoch's files and
/// its state cannot be replaced together atomically, so they are staged under these names,
/// state.json is written, and [`settle_pending`] renames them. A run killed between two of those
/// writes resumes from one consistent epoch.
pub fn pending_path(run_dir: &Path, name: &str, epoch: usize) -> PathBuf {
    let stem = name.strip_suffix(".safetensors").unwrap_or(name);
    run_dir.join(format!("{stem}.next-{epoch}.safetensors"))
}

/// Renames the staged files of epoch `committed` (the epoch state.json records) over their
/// final names and deletes those of any other epoch (not committed, or left over).
pub fn settle_pending(run_dir: &Path, committed: usize) -> Result<()> {
    let entries = std::fs::read_dir(run_dir)
        .with_context(|| format!("cannot read run folder {}", run_dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((stem, rest)) = name.split_once(".next-") else {
            continue;
        };
        let Some(Ok(epoch)) = rest
            .strip_suffix(".safetensors")
            .map(|e| e.parse::<usize>())
        else {
            continue;
        };
        if epoch == committed {
            let target = run_dir.join(format!("{stem}.safetensors"));
            std::fs::rename(&path, &target)
                .with_context(|| format!("cannot write {}", target.display()))?;
        } else {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Saves the variables of `vs` to `path` (safetensors) atomically.
pub fn save_weights(vs: &VarStore, path: &Path) -> Result<()> {
    // Channels-last weights (bf16 runs) are written in the standard layout: safetensors holds
    // contiguous tensors only.
    let mut named: Vec<(String, tch::Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    write_with(path, |tmp| {
        tch::Tensor::write_safetensors(&named, tmp)
            .torch()
            .with_context(|| format!("cannot save weights to {}", tmp.display()))
    })
}

/// Points `<parent of run_dir>/latest` at `run_dir` (a relative symlink, replaced atomically).
pub fn update_latest(run_dir: &Path) -> Result<PathBuf> {
    let parent = run_dir.parent().unwrap_or(Path::new("."));
    let name = run_dir.file_name().context("run folder has no name")?;
    let latest = parent.join("latest");
    let tmp = temp_sibling(&latest);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    std::fs::rename(&tmp, &latest)
        .with_context(|| format!("cannot update {}", latest.display()))?;
    Ok(latest)
}
