//! Finding the images of a dataset as it is downloaded.
//!
//! Two layouts are read: one folder per class (`DATA_DIR/<class>/**/<image>`), and the
//! dataset's own split above the classes (`DATA_DIR/{train,val,test}/<class>/**`, any of the
//! split names below, any case). Everywhere, archive junk (`__MACOSX`, `.DS_Store`,
//! `Thumbs.db`, hidden entries), segmentation masks (`mask`/`masks` folders), non-image files
//! and `--exclude` globs are skipped and counted; a nested copy of the split folders
//! (`chest_xray/chest_xray/...`) is skipped; folder links are followed, a link back into the
//! tree once reported and not followed. A layout that cannot be read one way is a usage error
//! that says what was found.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::decode::has_image_extension;
use crate::data::splits::Split;
use crate::error::Error;

/// One image found in a dataset folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedImage {
    /// Path relative to the dataset folder.
    pub rel_path: PathBuf,
    /// Index into [`ScannedDataset::classes`].
    pub label: usize,
    /// The dataset's own split the image sits in, when the dataset has split folders.
    pub source_split: Option<Split>,
    /// The group (patient) a labels file gave it; otherwise it comes from the file name.
    pub group: Option<String>,
}

/// The classes (sorted folder names) and every image file under them, in a stable order.
#[derive(Debug, Clone)]
pub struct ScannedDataset {
    /// Absolute dataset folder (below any single wrapping folder).
    pub root: PathBuf,
    /// Class names, sorted.
    pub classes: Vec<String>,
    /// Images, sorted by class then path.
    pub images: Vec<ScannedImage>,
    /// What was found and skipped.
    pub layout: Layout,
}

crate::choice::choice! {
    /// How a dataset gives its labels (`split_report.json`'s `layout.kind`).
    LayoutKind, "layout.kind", default = ClassFolders {
        /// One folder per class (the default: reports older than `layout` knew no other).
        ClassFolders = "class_folders",
        /// Split folders (train/val/test) each holding one folder per class.
        SplitFolders = "split_folders",
        /// A labels CSV (`--labels`): single- or multi-label.
        LabelsCsv = "labels_csv",
    }
}

/// How the dataset was laid out, and what the scan left out (`split_report.json`'s `layout`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Layout {
    /// How the labels were given.
    pub kind: LayoutKind,
    /// The split folders found (as named on disk), for [`LayoutKind::SplitFolders`].
    pub split_folders: Vec<String>,
    /// Wrapping folders descended into (a single folder holding the dataset).
    pub descended: Vec<String>,
    /// Files and folders left out, by reason: junk, mask, non_image, excluded, nested_copy,
    /// link_loop, external_link.
    pub skipped: BTreeMap<String, usize>,
    /// Folders left out whole (nested copies, link loops), relative to the dataset folder.
    pub skipped_folders: Vec<String>,
}

/// What a scan leaves out beyond the built-in rules.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Glob patterns (`--exclude`) matched against paths relative to the dataset folder; a
    /// matching folder is left out whole.
    pub exclude: Vec<String>,
    /// A CSV file (`path,label[,group]`, with that header; paths relative to the dataset
    /// folder) that gives the labels, and the groups, instead of the folders.
    pub labels: Option<PathBuf>,
    /// Follow links that lead out of the dataset folder (by default they are reported once
    /// and left out: a link to `/` would pull the system's images in).
    pub follow_external_links: bool,
}

/// The split a folder level's name stands for.
pub fn split_of_folder(name: &str) -> Option<Split> {
    Split::of_folder(name)
}

/// Archive and desktop junk, never data.
fn is_junk(name: &str) -> bool {
    name.starts_with('.')
        || name.starts_with("._")
        || matches!(
            name.to_ascii_lowercase().as_str(),
            "__macosx" | "thumbs.db" | "desktop.ini"
        )
}

fn is_mask_folder(name: &str) -> bool {
    matches!(name.to_ascii_lowercase().as_str(), "mask" | "masks")
}

/// Scans `root` as a class-per-folder dataset or one with split folders; see the module doc.
pub fn scan_dataset(root: &Path) -> Result<ScannedDataset> {
    scan_dataset_with(root, &ScanOptions::default())
}

/// [`scan_dataset`] with `--exclude` patterns.
pub fn scan_dataset_with(root: &Path, opts: &ScanOptions) -> Result<ScannedDataset> {
    // Long on purpose: the walk and its per-file verdicts (skipped, unreadable, labelled) kept
    // together with the counts they report.
    if !root.is_dir() {
        return Err(Error::usage(format!(
            "dataset folder {} does not exist or is not a folder",
            root.display()
        ))
        .into());
    }
    let top = root
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", root.display()))?;
    if let Some(labels) = &opts.labels {
        return scan_labels_csv(&top, labels, opts.follow_external_links);
    }
    let mut walker = Walker::new(&top, opts)?;
    let root = walker.descend_wrappers(&top)?;
    walker.root = root.clone();
    let folders = walker.subfolders(&root)?;
    let (splits, others): (Vec<String>, Vec<String>) = folders
        .into_iter()
        .partition(|name| split_of_folder(name).is_some());
    let mut images = Vec::new();
    let classes = if splits.is_empty() {
        walker.layout.kind = LayoutKind::ClassFolders;
        let classes = check_classes(&root, others)?;
        for (label, class) in classes.iter().enumerate() {
            walker.images_under(&root.join(class), label, None, &mut images)?;
        }
        classes
    } else {
        walker.layout.kind = LayoutKind::SplitFolders;
        walker.skip_nested_copies(&root, others, &splits)?;
        let mut per_split = Vec::new();
        let mut all: BTreeSet<String> = BTreeSet::new();
        for split in &splits {
            let classes = walker.subfolders(&root.join(split))?;
            if let Some(inner) = classes.iter().find(|c| split_of_folder(c).is_some()) {
                return Err(layout_error(
                    &root,
                    &format!("split folder {split}/ holds another split folder {inner}/"),
                ));
            }
            if classes.is_empty() {
                return Err(layout_error(&root, &format!(
                    "split folder {split}/ holds no class folders (images must sit in {split}/<class>/)"
                )));
            }
            all.extend(classes.iter().cloned());
            per_split.push((split.clone(), classes));
        }
        let classes = check_classes(&root, all.into_iter().collect())?;
        for (split, present) in &per_split {
            for class in present {
                let label = classes
                    .iter()
                    .position(|c| c == class)
                    .expect("a class of the union");
                let dir = root.join(split).join(class);
                walker.images_under(&dir, label, split_of_folder(split), &mut images)?;
            }
        }
        walker.layout.split_folders = splits;
        classes
    };
    images.sort_by(|a: &ScannedImage, b| (a.label, &a.rel_path).cmp(&(b.label, &b.rel_path)));
    for (label, class) in classes.iter().enumerate() {
        if !images.iter().any(|i| i.label == label) {
            return Err(Error::usage(format!(
                "class folder {class} of {} holds no images",
                root.display()
            ))
            .into());
        }
    }
    Ok(ScannedDataset {
        root,
        classes,
        images,
        layout: walker.layout,
    })
}

/// The images a labels CSV lists (`path,label[,group]`), classes sorted from its labels.
fn scan_labels_csv(
    root: &Path,
    csv_path: &Path,
    follow_external_links: bool,
) -> Result<ScannedDataset> {
    let bad = |why: String| -> anyhow::Error {
        Error::usage(format!("--labels {}: {why}", csv_path.display())).into()
    };
    let mut reader = csv::Reader::from_path(csv_path).map_err(|e| bad(e.to_string()))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(path_col), Some(label_col)) = (column("path"), column("label")) else {
        return Err(bad(format!(
            "needs a header with path and label (and optionally group), found: {}",
            header.join(",")
        )));
    };
    let group_col = column("group");
    let mut rows = Vec::new();
    for (line, row) in reader.records().enumerate() {
        let row = row.map_err(|e| bad(format!("line {}: {e}", line + 2)))?;
        let cell = |i: usize| row.get(i).unwrap_or("").trim().to_string();
        let (path, label) = (cell(path_col), cell(label_col));
        if path.is_empty() || label.is_empty() {
            return Err(bad(format!("line {}: empty path or label", line + 2)));
        }
        if let Some(why) = leaves_root(root, Path::new(&path), follow_external_links) {
            return Err(bad(format!(
                "line {}: {path} {why}; paths must stay inside {}",
                line + 2,
                root.display()
            )));
        }
        rows.push((path, label, group_col.map(cell).filter(|g| !g.is_empty())));
    }
    let classes = check_classes(root, rows.iter().map(|r| r.1.clone()).collect())?;
    let mut images: Vec<ScannedImage> = rows
        .into_iter()
        .map(|(path, label, group)| ScannedImage {
            rel_path: PathBuf::from(path),
            label: classes
                .iter()
                .position(|c| *c == label)
                .expect("a listed class"),
            source_split: None,
            group,
        })
        .collect();
    images.sort_by(|a, b| (a.label, &a.rel_path).cmp(&(b.label, &b.rel_path)));
    images.dedup_by(|a, b| a.rel_path == b.rel_path);
    Ok(ScannedDataset {
        root: root.to_path_buf(),
        classes,
        images,
        layout: Layout {
            kind: LayoutKind::LabelsCsv,
            ..Layout::default()
        },
    })
}

/// Why `rel` (a path the labels CSV gives, relative to `root`) leads out of `root`, if it does:
/// absolute, through `..`, or (unless `follow_links`) through a link that resolves outside.
pub(crate) fn leaves_root(root: &Path, rel: &Path, follow_links: bool) -> Option<&'static str> {
    use std::path::Component;
    if rel.is_absolute() || rel.has_root() {
        return Some("is absolute");
    }
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Some("goes up through ..");
    }
    if !follow_links {
        if let Ok(real) = root.join(rel).canonicalize() {
            if !real.starts_with(root) {
                return Some("is a link that leads outside the dataset folder");
            }
        }
    }
    None
}

fn layout_error(root: &Path, what: &str) -> anyhow::Error {
    Error::usage(format!(
        "{}: {what}; expected one folder per class, or split folders (train/val/test) each \
         holding one folder per class",
        root.display()
    ))
    .into()
}

/// At least two classes, sorted.
fn check_classes(root: &Path, mut classes: Vec<String>) -> Result<Vec<String>> {
    classes.sort();
    classes.dedup();
    if classes.len() < 2 {
        return Err(Error::usage(format!(
            "{} must hold one sub-folder per class, at least two (found {}{})",
            root.display(),
            classes.len(),
            if classes.is_empty() {
                String::new()
            } else {
                format!(": {}", classes.join(", "))
            }
        ))
        .into());
    }
    Ok(classes)
}

/// The folder walk: the skip rules, the exclude globs, loop detection and the counts.
struct Walker {
    root: PathBuf,
    exclude: globset::GlobSet,
    layout: Layout,
    /// Canonical folders on the current path from the root, to detect link loops.
    visiting: HashSet<PathBuf>,
    /// The dataset folder as given, resolved: links that lead outside it are not followed...
    boundary: PathBuf,
    /// ...unless this is set.
    follow_external_links: bool,
}

impl Walker {
    fn new(root: &Path, opts: &ScanOptions) -> Result<Walker> {
        let mut set = globset::GlobSetBuilder::new();
        for pattern in &opts.exclude {
            let glob = globset::Glob::new(pattern)
                .map_err(|e| Error::usage(format!("--exclude {pattern}: {e}")))?;
            set.add(glob);
        }
        Ok(Walker {
            root: root.to_path_buf(),
            exclude: set
                .build()
                .map_err(|e| Error::usage(format!("--exclude: {e}")))?,
            layout: Layout::default(),
            visiting: HashSet::new(),
            boundary: root.to_path_buf(),
            follow_external_links: opts.follow_external_links,
        })
    }

    /// Whether `path` is a link that leads out of the dataset folder (and such links are not
    /// followed): then it is counted, reported once and left out.
    fn external_link(&mut self, path: &Path) -> bool {
        if self.follow_external_links
            || !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        {
            return false;
        }
        let Ok(target) = path.canonicalize() else {
            return false;
        };
        if target.starts_with(&self.boundary) {
            return false;
        }
        self.skip("external_link");
        let rel = self.rel(path);
        eprintln!(
            "warning: {rel} links outside the dataset folder (to {}); not followed \
             (--follow-external-links follows such links)",
            target.display()
        );
        self.layout.skipped_folders.push(rel);
        true
    }

    fn skip(&mut self, reason: &str) {
        *self.layout.skipped.entry(reason.to_string()).or_default() += 1;
    }

    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    /// Whether the entry at `path` (named `name`) is left out, counting why.
    fn left_out(&mut self, path: &Path, name: &str, is_dir: bool) -> bool {
        if self.external_link(path) {
            return true;
        }
        if is_junk(name) {
            self.skip("junk");
        } else if is_dir && is_mask_folder(name) {
            self.skip("mask");
        } else if !self.exclude.is_empty() && self.exclude.is_match(self.rel(path)) {
            self.skip("excluded");
        } else {
            return false;
        }
        true
    }

    /// The names of the folders in `dir` that are not left out, sorted.
    fn subfolders(&mut self, dir: &Path) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in read_dir(dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if path.is_dir() && !self.left_out(&path, &name, true) {
                names.push(name);
            } else if path.is_file() && !self.left_out(&path, &name, false) {
                // Files beside the class folders (metadata sheets, readmes) are not images of a
                // class.
                self.skip(if has_image_extension(&path) {
                    "outside_class"
                } else {
                    "non_image"
                });
            }
        }
        names.sort();
        Ok(names)
    }

    /// Goes down through single folders that hold nothing else (an archive's wrapper folder).
    fn descend_wrappers(&mut self, top: &Path) -> Result<PathBuf> {
        let mut root = top.to_path_buf();
        loop {
            let entries: Vec<_> = read_dir(&root)?
                .into_iter()
                .filter(|e| !is_junk(&e.file_name().to_string_lossy()))
                .collect();
            match entries.as_slice() {
                [only] if only.path().is_dir() => {
                    let name = only.file_name().to_string_lossy().into_owned();
                    if split_of_folder(&name).is_some() {
                        return Ok(root);
                    }
                    self.layout.descended.push(name);
                    root = only.path().canonicalize()?;
                }
                _ => return Ok(root),
            }
        }
    }

    /// Folders beside split folders: a nested copy of the split folders (it holds split folders
    /// of its own) is skipped; anything else makes the layout ambiguous.
    fn skip_nested_copies(
        &mut self,
        root: &Path,
        others: Vec<String>,
        splits: &[String],
    ) -> Result<()> {
        for other in others {
            let inner = self.subfolders(&root.join(&other))?;
            if inner.iter().any(|n| split_of_folder(n).is_some()) {
                self.skip("nested_copy");
                self.layout.skipped_folders.push(other);
            } else {
                return Err(layout_error(
                    root,
                    &format!(
                        "split folders ({}) beside other folders ({other}/)",
                        splits.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every image under `dir` (recursively), as class `label` from `source_split`.
    fn images_under(
        &mut self,
        dir: &Path,
        label: usize,
        source_split: Option<Split>,
        out: &mut Vec<ScannedImage>,
    ) -> Result<()> {
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if !self.visiting.insert(canonical.clone()) {
            self.skip("link_loop");
            let rel = self.rel(dir);
            eprintln!("warning: {rel} links back into the dataset; not followed");
            self.layout.skipped_folders.push(rel);
            return Ok(());
        }
        let mut entries = read_dir(dir)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let is_dir = path.is_dir();
            if self.left_out(&path, &name, is_dir) {
                continue;
            }
            if is_dir {
                self.images_under(&path, label, source_split, out)?;
            } else if has_image_extension(&path) {
                let rel_path = path
                    .strip_prefix(&self.root)
                    .expect("walked files lie under the root")
                    .to_path_buf();
                out.push(ScannedImage {
                    rel_path,
                    label,
                    source_split,
                    group: None,
                });
            } else {
                self.skip("non_image");
            }
        }
        self.visiting.remove(&canonical);
        Ok(())
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| e.with_context(|| format!("cannot list {}", dir.display())))
        .collect()
}

/// Every file under `dir`, recursively (hidden entries skipped; a folder link back into the
/// walk is not followed).
pub fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    walk_files_from(dir, out, &mut HashSet::new())
}

fn walk_files_from(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    visiting: &mut HashSet<PathBuf>,
) -> Result<()> {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    if !visiting.insert(canonical.clone()) {
        eprintln!(
            "warning: {} links back into the walk; not followed",
            dir.display()
        );
        return Ok(());
    }
    for entry in read_dir(dir)? {
        if is_junk(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk_files_from(&path, out, visiting)?;
        } else {
            out.push(path);
        }
    }
    visiting.remove(&canonical);
    Ok(())
}
