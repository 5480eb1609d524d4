//! Finding the images of a class-per-folder dataset: `DATA_DIR/<class>/**/<image>`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::data::decode::has_image_extension;
use crate::error::Error;

/// One image found in a dataset folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedImage {
    /// Path relative to the dataset folder.
    pub rel_path: PathBuf,
    /// Index into [`ScannedDataset::classes`].
    pub label: usize,
}

/// The classes (sorted folder names) and every image file under them, in a stable order.
#[derive(Debug, Clone)]
pub struct ScannedDataset {
    /// Absolute dataset folder.
    pub root: PathBuf,
    /// Class names, sorted.
    pub classes: Vec<String>,
    /// Images, sorted by class then path.
    pub images: Vec<ScannedImage>,
}

/// Scans `root`; a missing folder, fewer than two classes or an empty class is a usage error.
pub fn scan_dataset(root: &Path) -> Result<ScannedDataset> {
    if !root.is_dir() {
        return Err(Error::usage(format!(
            "dataset folder {} does not exist or is not a folder",
            root.display()
        ))
        .into());
    }
    let root = root
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", root.display()))?;
    let mut classes: Vec<String> = std::fs::read_dir(&root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| !name.starts_with('.'))
        .collect();
    classes.sort();
    if classes.len() < 2 {
        return Err(Error::usage(format!(
            "{} must hold one sub-folder per class (found {})",
            root.display(),
            classes.len()
        ))
        .into());
    }
    let mut images = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let mut files = Vec::new();
        walk_files(&root.join(class), &mut files)?;
        files.sort();
        let before = images.len();
        for file in files {
            if has_image_extension(&file) {
                let rel_path = file
                    .strip_prefix(&root)
                    .expect("walked files lie under the root")
                    .to_path_buf();
                images.push(ScannedImage { rel_path, label });
            }
        }
        if images.len() == before {
            return Err(Error::usage(format!(
                "class folder {} holds no images",
                root.join(class).display()
            ))
            .into());
        }
    }
    Ok(ScannedDataset {
        root,
        classes,
        images,
    })
}

/// Every file under `dir`, recursively (hidden entries skipped).
pub fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}
