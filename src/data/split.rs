//! `xray split`: a stratified, patient-grouped, de-duplicated train/val/test split.
//!
//! Leakage is impossible by construction: byte-identical files are merged before anything is
//! assigned (and dropped when they carry two labels), and whole groups (patients) are assigned
//! to one split. Within each class, groups are shuffled with the seed and dealt to the split
//! furthest below its target share, which keeps each class's share near the ratios.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::config::Task;
use crate::data::decode::decode_image;
use crate::data::multilabel;
use crate::data::near_dup::{self, NearDuplicates, NearPair};
use crate::data::scan::{scan_dataset_with, Layout, LayoutKind, ScanOptions, ScannedDataset};
pub use crate::data::splits::Split;
use crate::error::Error;
use crate::progress;

/// Default `--group-regex`: the patient in Kermany file names (`person123_bacteria_45.jpeg` →
/// `person123`, `IM-0115-0001.jpeg` → `IM-0115`, `NORMAL2-IM-0927-0001.jpeg` →
/// `NORMAL2-IM-0927`). Names it does not match are their own group (the file stem).
pub const DEFAULT_GROUP_REGEX: &str = r"^(person\d+|(?:[A-Za-z0-9]+-)?IM-\d+)[_-]";

/// Options of `xray split`.
#[derive(Debug, Clone)]
pub struct SplitOptions {
    /// Shares of train, val and test; they must sum to 1.
    pub ratios: [f64; 3],
    /// Regex whose first capture on the file name is the group.
    pub group_regex: String,
    /// Seed for the group shuffle.
    pub seed: u64,
    /// Pool the dataset's own split folders and split everything by `ratios` (by default the
    /// dataset's test folder stays the test split).
    pub resplit: bool,
    /// Keep images of the dataset's test folder that are byte-identical to training images
    /// (dropping the training copy instead); by default the test copy is dropped.
    pub keep_test_duplicates: bool,
    /// `--exclude` globs, relative to the dataset folder.
    pub exclude: Vec<String>,
    /// `--labels FILE.csv`: labels (and groups) from a metadata file instead of folders.
    pub labels: Option<PathBuf>,
    /// Follow links that lead out of the dataset folder.
    pub follow_external_links: bool,
    /// Images whose perceptual hashes differ by at most this many bits (of 64)...
    pub near_duplicate_distance: u32,
    /// ...and whose 32x32 thumbnails correlate at least this much.
    pub near_duplicate_correlation: f32,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            ratios: [0.7, 0.15, 0.15],
            group_regex: DEFAULT_GROUP_REGEX.into(),
            seed: 42,
            resplit: false,
            keep_test_duplicates: false,
            exclude: Vec::new(),
            labels: None,
            follow_external_links: false,
            near_duplicate_distance: near_dup::DEFAULT_MAX_DISTANCE,
            near_duplicate_correlation: near_dup::DEFAULT_MIN_CORRELATION,
        }
    }
}

/// One row of `split.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SplitRecord {
    /// Path relative to the dataset folder.
    pub path: String,
    /// Class name.
    pub label: String,
    /// Group (patient) the image belongs to.
    pub group: String,
    /// Which split it went to.
    pub split: Split,
    /// sha256 of the file's bytes, hex.
    pub sha256: String,
    /// Multi-label splits: one value per label (see [`crate::data::multilabel`]), written as
    /// a column per label after these.
    #[serde(skip)]
    pub values: Vec<multilabel::LabelValue>,
}

/// A file left out of the split, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    /// Path relative to the dataset folder.
    pub path: String,
    /// Why it was left out.
    pub reason: String,
}

/// `split_report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitReport {
    /// Absolute dataset folder: `train` and `eval` find the images from here.
    pub data_dir: PathBuf,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The ratios used.
    pub ratios: [f64; 3],
    /// The seed used.
    pub seed: u64,
    /// The group regex used.
    pub group_regex: String,
    /// Image files found.
    pub files_found: usize,
    /// Images in split.csv.
    pub images_kept: usize,
    /// Distinct groups among the kept images.
    pub groups: usize,
    /// counts[split][class].
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
    /// Byte-identical copies dropped (the first path, sorted, is kept).
    pub duplicates_dropped: Vec<Skipped>,
    /// Files whose identical bytes appear under two labels: all copies dropped.
    pub label_conflicts_dropped: Vec<Skipped>,
    /// Files that could not be read or decoded.
    pub corrupt_skipped: Vec<Skipped>,
    /// How the dataset was laid out and what the scan skipped.
    #[serde(default)]
    pub layout: Layout,
    /// Where the test split came from: the dataset's own test folder, or re-split.
    #[serde(default)]
    pub test_from: TestFrom,
    /// Byte-identical images found in both the dataset's test folder and its other folders:
    /// the copy dropped (`path`) and why, naming the one kept.
    #[serde(default)]
    pub cross_split_duplicates: Vec<Skipped>,
    /// Groups (patients) with images in the dataset's test folder and in its other folders:
    /// all their images went to test.
    #[serde(default)]
    pub groups_moved_to_test: usize,
    /// Near-duplicate pairs (perceptual hash); each cluster became one group.
    #[serde(default)]
    pub near_duplicates: NearDuplicates,
    /// Each set of identical images found under two or more labels (all dropped).
    #[serde(default)]
    pub label_conflicts: Vec<LabelConflict>,
    /// Classes the split gutted: more than half of their images dropped, or a split left
    /// without any of them (multi-label: without any positive).
    #[serde(default)]
    pub class_warnings: Vec<ClassWarning>,
    /// Multiclass (left out of the file, as in older reports) or multi-label; for
    /// multi-label, `classes` are the labels and `counts` their positive images.
    #[serde(default, skip_serializing_if = "Task::is_multiclass")]
    pub task: Task,
    /// Multi-label: the labels file's layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_format: Option<multilabel::LabelFormat>,
    /// Multi-label: label_counts[split][label], every value the file gave.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_counts: BTreeMap<String, BTreeMap<String, LabelCount>>,
    /// Multi-label: cooccurrence[a][b] = kept images positive for both labels a and b (the
    /// diagonal: positive for a).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cooccurrence: Vec<Vec<usize>>,
}

crate::choice::choice! {
    /// Where a split's test images came from (`split_report.json`'s `test_from`).
    TestFrom, "test_from", default = Resplit {
        /// The dataset's own test folder, kept as it is.
        Dataset = "dataset",
        /// Re-split from all the images by the ratios (the default: older reports).
        Resplit = "resplit",
    }
}

impl SplitReport {
    /// Whether the split's labels are multi-label.
    pub fn is_multilabel(&self) -> bool {
        self.task == Task::Multilabel
    }
}

/// How often one label took each value in one split.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabelCount {
    /// Images positive for it.
    pub positive: usize,
    /// Images negative for it.
    pub negative: usize,
    /// Images whose report was uncertain (`-1`).
    pub uncertain: usize,
    /// Images whose report did not mention it (blank).
    pub blank: usize,
}

/// Identical images (the same decoded pixels) under more than one label.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabelConflict {
    /// The files, sorted, relative to the dataset folder.
    pub paths: Vec<String>,
    /// Each file's label.
    pub labels: Vec<String>,
}

/// A class that `split` left with too little to train or evaluate on, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassWarning {
    /// The class.
    pub class: String,
    /// Its image files found.
    pub found: usize,
    /// Its images in split.csv.
    pub kept: usize,
    /// Dropped because the same pixels appear under another label.
    pub label_conflicts: usize,
    /// Dropped as copies of another image of the class (one copy is kept).
    pub duplicates: usize,
    /// Dropped as unreadable.
    pub unreadable: usize,
    /// The splits (with a share above zero) that hold none of its images.
    pub empty_splits: Vec<String>,
}

impl ClassWarning {
    /// One line: what the class kept, what took the rest, and the splits left without it.
    pub fn line(&self) -> String {
        let mut causes = Vec::new();
        for (n, what) in [
            (
                self.label_conflicts,
                "label conflicts (the same pixels under another label)",
            ),
            (self.duplicates, "duplicates"),
            (self.unreadable, "unreadable"),
        ] {
            if n > 0 {
                causes.push(format!("{n} {what}"));
            }
        }
        let mut line = format!(
            "class \"{}\" kept {} of its {} images",
            self.class, self.kept, self.found
        );
        if !causes.is_empty() {
            line.push_str(&format!(" (dropped: {})", causes.join(", ")));
        }
        if !self.empty_splits.is_empty() {
            line.push_str(&format!("; no {} image", self.empty_splits.join(" or ")));
        }
        line
    }
}

/// The result of a split: the rows and the report.
pub struct SplitOutcome {
    /// Rows of split.csv.
    pub records: Vec<SplitRecord>,
    /// The report.
    pub report: SplitReport,
}

/// The group of a file name: the regex's first capture, else the stem.
pub fn group_of(file_name: &str, re: &Regex) -> String {
    re.captures(file_name)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| {
            Path::new(file_name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| file_name.to_string())
        })
}

/// Scans, hashes, checks and splits `data_dir`.
pub fn split_dataset(data_dir: &Path, opts: &SplitOptions) -> Result<SplitOutcome> {
    let sum: f64 = opts.ratios.iter().sum();
    if (sum - 1.0).abs() > 1e-6 || opts.ratios.iter().any(|r| *r < 0.0) {
        return Err(Error::usage(format!(
            "--ratios must be three non-negative shares summing to 1, got {:?}",
            opts.ratios
        ))
        .into());
    }
    let re =
        Regex::new(&opts.group_regex).map_err(|e| Error::usage(format!("--group-regex: {e}")))?;
    if let Some(labels) = opts.labels.as_deref() {
        if multilabel::is_multilabel_csv(labels)? {
            return split_multilabel(data_dir, labels, opts, &re);
        }
    }
    let scanned = scan_dataset_with(
        data_dir,
        &ScanOptions {
            exclude: opts.exclude.clone(),
            labels: opts.labels.clone(),
            follow_external_links: opts.follow_external_links,
        },
    )?;
    // The dataset's own test folder stays the test split unless asked otherwise.
    let fixed_test = !opts.resplit
        && scanned
            .images
            .iter()
            .any(|i| i.source_split == Some(Split::Test));
    if fixed_test && opts.ratios[0] + opts.ratios[1] <= 0.0 {
        return Err(Error::usage(
            "--ratios gives train and val no share, but the dataset's own test folder is the test split (use --resplit to split everything by --ratios)",
        )
        .into());
    }
    let (checked, corrupt) = check_files(&scanned);
    let unique = deduplicate(&scanned, &checked, fixed_test, opts.keep_test_duplicates);
    let phash = checked.signatures;
    if unique.kept.is_empty() {
        return Err(
            Error::usage(format!("no readable images in {}", scanned.root.display())).into(),
        );
    }
    let kept = &unique.kept;
    let rel = |i: usize| scanned.images[i].rel_path.to_string_lossy().into_owned();
    let mut group_members = group_images(&scanned, kept, &re);
    let near = merge_near_duplicates(&scanned, kept, &phash, &mut group_members, opts);
    let (assignment, groups_moved_to_test) =
        assign_groups(&scanned, kept, &group_members, opts, fixed_test);
    let mut records = Vec::with_capacity(kept.len());
    for (group, members) in &group_members {
        let s = assignment[group];
        for &k in members {
            let (i, hash) = &kept[k];
            records.push(SplitRecord {
                path: rel(*i),
                label: scanned.classes[scanned.images[*i].label].clone(),
                group: group.clone(),
                split: Split::ALL[s],
                sha256: hash.clone(),
                values: Vec::new(),
            });
        }
    }
    records.sort_by(|a, b| a.path.cmp(&b.path));
    let mut report = SplitReport {
        data_dir: scanned.root.clone(),
        classes: scanned.classes.clone(),
        ratios: opts.ratios,
        seed: opts.seed,
        group_regex: opts.group_regex.clone(),
        files_found: scanned.images.len(),
        images_kept: records.len(),
        groups: group_members.len(),
        counts: count_per_split(&scanned.classes, &records),
        duplicates_dropped: unique.duplicates,
        label_conflicts_dropped: unique.conflicts,
        corrupt_skipped: corrupt,
        layout: scanned.layout.clone(),
        test_from: if fixed_test {
            TestFrom::Dataset
        } else {
            TestFrom::Resplit
        },
        cross_split_duplicates: unique.cross_split,
        groups_moved_to_test,
        near_duplicates: near,
        label_conflicts: conflicts_of(&scanned, &unique.conflict_sets),
        class_warnings: Vec::new(),
        task: Task::Multiclass,
        label_format: None,
        label_counts: BTreeMap::new(),
        cooccurrence: Vec::new(),
    };
    report.class_warnings = class_warnings(&scanned, &report, opts.ratios);
    Ok(SplitOutcome { records, report })
}

/// The multi-label split of the images a labels CSV lists (see [`crate::data::multilabel`]).
/// Each distinct set of values is one "class" of the scan, so that identical pixels under two
/// sets are a label conflict and duplicates, near-duplicates and groups are handled as for
/// classes; the groups are then dealt by iterative stratification over the labels.
fn split_multilabel(
    data_dir: &Path,
    labels_csv: &Path,
    opts: &SplitOptions,
    re: &Regex,
) -> Result<SplitOutcome> {
    if !data_dir.is_dir() {
        return Err(Error::usage(format!(
            "dataset folder {} does not exist or is not a folder",
            data_dir.display()
        ))
        .into());
    }
    let root = data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
    let table = multilabel::read_label_table(&root, labels_csv)?;
    let mut combos: Vec<Vec<multilabel::LabelValue>> =
        table.rows.iter().map(|r| r.values.clone()).collect();
    combos.sort();
    combos.dedup();
    let combo_name = |values: &[multilabel::LabelValue]| {
        let mut name = multilabel::finding_text(&table.labels, values);
        for (what, v) in [
            ("uncertain", multilabel::LabelValue::Uncertain),
            ("blank", multilabel::LabelValue::Blank),
        ] {
            let these: Vec<&str> = table
                .labels
                .iter()
                .zip(values)
                .filter(|(_, &x)| x == v)
                .map(|(l, _)| l.as_str())
                .collect();
            if !these.is_empty() {
                name.push_str(&format!("; {what} {}", these.join("|")));
            }
        }
        name
    };
    let scanned = ScannedDataset {
        root: root.clone(),
        classes: combos.iter().map(|c| combo_name(c)).collect(),
        images: table
            .rows
            .iter()
            .map(|r| crate::data::scan::ScannedImage {
                rel_path: r.rel_path.clone(),
                label: combos
                    .binary_search(&r.values)
                    .expect("a listed combination"),
                source_split: None,
                group: r.group.clone(),
            })
            .collect(),
        layout: Layout {
            kind: LayoutKind::LabelsCsv,
            ..Layout::default()
        },
    };
    let (checked, corrupt) = check_files(&scanned);
    let unique = deduplicate(&scanned, &checked, false, false);
    if unique.kept.is_empty() {
        return Err(Error::usage(format!("no readable images in {}", root.display())).into());
    }
    let kept = &unique.kept;
    let rel = |i: usize| scanned.images[i].rel_path.to_string_lossy().into_owned();
    let values_of = |k: usize| &combos[scanned.images[kept[k].0].label];
    let mut group_members = group_images(&scanned, kept, re);
    let near = merge_near_duplicates(
        &scanned,
        kept,
        &checked.signatures,
        &mut group_members,
        opts,
    );
    let n_labels = table.labels.len();
    let group_labels: Vec<multilabel::GroupLabels> = group_members
        .values()
        .map(|members| multilabel::GroupLabels {
            size: members.len(),
            positives: (0..n_labels)
                .map(|l| {
                    members
                        .iter()
                        .filter(|&&k| values_of(k)[l] == multilabel::LabelValue::Positive)
                        .count()
                })
                .collect(),
        })
        .collect();
    let dealt = multilabel::iterative_stratification(&group_labels, opts.ratios, opts.seed);
    let mut records = Vec::with_capacity(kept.len());
    for ((group, members), &s) in group_members.iter().zip(&dealt) {
        for &k in members {
            let (i, hash) = &kept[k];
            records.push(SplitRecord {
                path: rel(*i),
                label: multilabel::finding_text(&table.labels, values_of(k)),
                group: group.clone(),
                split: Split::ALL[s],
                sha256: hash.clone(),
                values: values_of(k).clone(),
            });
        }
    }
    records.sort_by(|a, b| a.path.cmp(&b.path));
    let label_counts = count_label_values(&table.labels, &records);
    let counts = label_counts
        .iter()
        .map(|(s, per)| {
            let positives = per.iter().map(|(l, c)| (l.clone(), c.positive)).collect();
            (s.clone(), positives)
        })
        .collect();
    let positive: Vec<Vec<bool>> = records
        .iter()
        .map(|r| {
            r.values
                .iter()
                .map(|&v| v == multilabel::LabelValue::Positive)
                .collect()
        })
        .collect();
    let cooccurrence = multilabel::cooccurrence(positive.iter().map(Vec::as_slice), n_labels);
    let mut report = SplitReport {
        data_dir: root,
        classes: table.labels.clone(),
        ratios: opts.ratios,
        seed: opts.seed,
        group_regex: opts.group_regex.clone(),
        files_found: scanned.images.len(),
        images_kept: records.len(),
        groups: group_members.len(),
        counts,
        duplicates_dropped: unique.duplicates,
        label_conflicts_dropped: unique.conflicts,
        corrupt_skipped: corrupt,
        layout: scanned.layout.clone(),
        test_from: TestFrom::Resplit,
        cross_split_duplicates: unique.cross_split,
        groups_moved_to_test: 0,
        near_duplicates: near,
        label_conflicts: conflicts_of(&scanned, &unique.conflict_sets),
        class_warnings: Vec::new(),
        task: Task::Multilabel,
        label_format: Some(table.format),
        label_counts,
        cooccurrence,
    };
    report.class_warnings = label_warnings(&table, &report);
    Ok(SplitOutcome { records, report })
}

/// The conflict sets (indices into the scan) with each file's label.
fn conflicts_of(scanned: &ScannedDataset, sets: &[Vec<usize>]) -> Vec<LabelConflict> {
    sets.iter()
        .map(|set| LabelConflict {
            paths: set
                .iter()
                .map(|&i| scanned.images[i].rel_path.to_string_lossy().into_owned())
                .collect(),
            labels: set
                .iter()
                .map(|&i| scanned.classes[scanned.images[i].label].clone())
                .collect(),
        })
        .collect()
}

/// Every value of every label, per split (every split and label present, zeros included).
fn count_label_values(
    labels: &[String],
    records: &[SplitRecord],
) -> BTreeMap<String, BTreeMap<String, LabelCount>> {
    let mut counts: BTreeMap<String, BTreeMap<String, LabelCount>> = Split::ALL
        .iter()
        .map(|s| {
            let per = labels
                .iter()
                .map(|l| (l.clone(), LabelCount::default()))
                .collect();
            (s.to_string(), per)
        })
        .collect();
    for r in records {
        let per = counts.get_mut(r.split.as_str()).expect("a known split");
        for (l, &v) in labels.iter().zip(&r.values) {
            let c = per.get_mut(l).expect("a known label");
            match v {
                multilabel::LabelValue::Positive => c.positive += 1,
                multilabel::LabelValue::Negative => c.negative += 1,
                multilabel::LabelValue::Uncertain => c.uncertain += 1,
                multilabel::LabelValue::Blank => c.blank += 1,
            }
        }
    }
    counts
}

/// The labels that lost more than half of their positive images, or that a split with a share
/// above zero holds no positive of.
fn label_warnings(table: &multilabel::LabelTable, report: &SplitReport) -> Vec<ClassWarning> {
    let dropped: std::collections::HashSet<&str> = report
        .label_conflicts_dropped
        .iter()
        .map(|s| s.path.as_str())
        .collect();
    let corrupt: std::collections::HashSet<&str> = report
        .corrupt_skipped
        .iter()
        .map(|s| s.path.as_str())
        .collect();
    table
        .labels
        .iter()
        .enumerate()
        .filter_map(|(l, label)| {
            let positive =
                |r: &&multilabel::LabelRow| r.values[l] == multilabel::LabelValue::Positive;
            let found = table.rows.iter().filter(positive).count();
            let in_set = |set: &std::collections::HashSet<&str>| {
                table
                    .rows
                    .iter()
                    .filter(positive)
                    .filter(|r| set.contains(r.rel_path.to_string_lossy().as_ref()))
                    .count()
            };
            let kept: usize = Split::ALL
                .iter()
                .map(|s| report.counts[s.as_str()][label])
                .sum();
            let empty_splits: Vec<String> = Split::ALL
                .iter()
                .enumerate()
                .filter(|&(i, s)| report.ratios[i] > 0.0 && report.counts[s.as_str()][label] == 0)
                .map(|(_, s)| s.to_string())
                .collect();
            let label_conflicts = in_set(&dropped);
            let unreadable = in_set(&corrupt);
            (found > 0 && (2 * kept < found || !empty_splits.is_empty())).then(|| ClassWarning {
                class: label.clone(),
                found,
                kept,
                label_conflicts,
                duplicates: found.saturating_sub(kept + label_conflicts + unreadable),
                unreadable,
                empty_splits,
            })
        })
        .collect()
}

/// What checking the files found of the readable images.
struct Checked {
    /// Images with the same decoded pixels (same size, colour type and pixel bytes), by a
    /// 128-bit hash of them: copies re-saved with other metadata or compression, whose file
    /// bytes differ, fall together here.
    by_pixels: BTreeMap<String, Vec<usize>>,
    /// sha256 of each image's file bytes, by index into the scan.
    sha256: HashMap<usize, String>,
    /// Each image's near-duplicate signature, by index into the scan.
    signatures: HashMap<usize, near_dup::Signature>,
}

/// A key of an image's decoded pixels: size, colour type and the xxh3-128 hash of its pixel
/// bytes (about 0.2 ms for a 2-megapixel X-ray).
fn pixel_key(img: &image::DynamicImage) -> String {
    format!(
        "{}x{} {:?} {:032x}",
        img.width(),
        img.height(),
        img.color(),
        xxhash_rust::xxh3::xxh3_128(img.as_bytes())
    )
}

/// Hashes and fully decodes every file, in parallel: the images by decoded pixels (and each
/// one's sha256 and near-duplicate signature), and the files that cannot be read with the reason.
fn check_files(scanned: &ScannedDataset) -> (Checked, Vec<Skipped>) {
    let root = &scanned.root;
    let bar = progress::bar(scanned.images.len() as u64, "check");
    type Found = (String, String, near_dup::Signature);
    let checked: Vec<(usize, Result<Found, String>)> = scanned
        .images
        .par_iter()
        .enumerate()
        .map(|(i, img)| {
            let path = root.join(&img.rel_path);
            let result = crate::fsutil::sha256_file(&path)
                .map_err(|e| e.to_string())
                .and_then(|hash| match decode_image(&path) {
                    Ok(img) => Ok((hash, pixel_key(&img), near_dup::signature(&img))),
                    Err(Error::Image { reason, .. }) => Err(reason),
                    Err(e) => Err(e.to_string()),
                });
            bar.inc(1);
            (i, result)
        })
        .collect();
    bar.finish_and_clear();
    let mut corrupt = Vec::new();
    let mut found = Checked {
        by_pixels: BTreeMap::new(),
        sha256: HashMap::new(),
        signatures: HashMap::new(),
    };
    for (i, result) in checked {
        match result {
            Ok((hash, pixels, signature)) => {
                found.by_pixels.entry(pixels).or_default().push(i);
                found.sha256.insert(i, hash);
                found.signatures.insert(i, signature);
            }
            Err(reason) => corrupt.push(Skipped {
                path: scanned.images[i].rel_path.to_string_lossy().into_owned(),
                reason,
            }),
        }
    }
    (found, corrupt)
}

/// Finds near-duplicate pairs among the kept images and merges the groups they span, so that a
/// cluster never straddles two splits (a merged group takes the smallest name among its parts).
fn merge_near_duplicates(
    scanned: &ScannedDataset,
    kept: &[(usize, String)],
    phash: &HashMap<usize, near_dup::Signature>,
    group_members: &mut BTreeMap<String, Vec<usize>>,
    opts: &SplitOptions,
) -> NearDuplicates {
    let started = std::time::Instant::now();
    let sigs: Vec<near_dup::Signature> = kept.iter().map(|(i, _)| phash[i].clone()).collect();
    let mut pairs = near_dup::near_duplicates(
        &sigs,
        opts.near_duplicate_distance,
        opts.near_duplicate_correlation,
    );
    pairs.sort_by(|x, y| y.3.total_cmp(&x.3).then((x.0, x.1).cmp(&(y.0, y.1))));
    let mut group_of: HashMap<usize, String> = HashMap::new();
    for (g, members) in group_members.iter() {
        for &k in members {
            group_of.insert(k, g.clone());
        }
    }
    // Union-find over group names.
    let mut parent: HashMap<String, String> = HashMap::new();
    fn root(parent: &HashMap<String, String>, g: &str) -> String {
        let mut g = g.to_string();
        while let Some(p) = parent.get(&g).filter(|p| **p != g) {
            g = p.clone();
        }
        g
    }
    let mut merged = 0;
    for &(a, b, _, _) in &pairs {
        let (ra, rb) = (root(&parent, &group_of[&a]), root(&parent, &group_of[&b]));
        if ra != rb {
            let (keep, other) = if ra < rb { (ra, rb) } else { (rb, ra) };
            parent.insert(other, keep);
            merged += 1;
        }
    }
    if merged > 0 {
        let old = std::mem::take(group_members);
        for (g, members) in old {
            group_members
                .entry(root(&parent, &g))
                .or_default()
                .extend(members);
        }
    }
    let rel = |k: usize| {
        scanned.images[kept[k].0]
            .rel_path
            .to_string_lossy()
            .into_owned()
    };
    NearDuplicates {
        max_distance: opts.near_duplicate_distance,
        min_correlation: opts.near_duplicate_correlation,
        pairs: pairs
            .iter()
            .map(|&(a, b, distance, correlation)| NearPair {
                a: rel(a),
                b: rel(b),
                distance,
                correlation,
            })
            .collect(),
        groups_merged: merged,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The images left after merging byte-identical files, and what was dropped.
struct Unique {
    /// (index into the scan, sha256) of each kept image.
    kept: Vec<(usize, String)>,
    duplicates: Vec<Skipped>,
    conflicts: Vec<Skipped>,
    /// The sets behind `conflicts` (indices into the scan, sorted by path).
    conflict_sets: Vec<Vec<usize>>,
    cross_split: Vec<Skipped>,
}

/// Keeps the first (by path) of each set of identical images (the same decoded pixels, whatever
/// the file bytes: public sets hold many copies re-saved with other metadata); a set under two
/// labels is dropped whole as a label conflict. With the dataset's test folder fixed, a set with copies
/// in test and elsewhere keeps a copy outside test (or, with `keep_test`, one in test), so that
/// no image is in two splits; those drops are listed apart.
fn deduplicate(
    scanned: &ScannedDataset,
    checked: &Checked,
    fixed_test: bool,
    keep_test: bool,
) -> Unique {
    let rel = |i: usize| scanned.images[i].rel_path.to_string_lossy().into_owned();
    let in_test = |i: usize| scanned.images[i].source_split == Some(Split::Test);
    let mut unique = Unique {
        kept: Vec::new(),
        duplicates: Vec::new(),
        conflicts: Vec::new(),
        conflict_sets: Vec::new(),
        cross_split: Vec::new(),
    };
    for idx in checked.by_pixels.values() {
        let mut idx = idx.clone();
        idx.sort_by_key(|&i| scanned.images[i].rel_path.clone());
        let first_label = scanned.images[idx[0]].label;
        if idx.iter().any(|&i| scanned.images[i].label != first_label) {
            let labels: Vec<&str> = idx
                .iter()
                .map(|&i| scanned.classes[scanned.images[i].label].as_str())
                .collect();
            for &i in &idx {
                unique.conflicts.push(Skipped {
                    path: rel(i),
                    reason: format!("same pixels under labels {}", labels.join(", ")),
                });
            }
            unique.conflict_sets.push(idx);
            continue;
        }
        let straddles =
            fixed_test && idx.iter().any(|&i| in_test(i)) && !idx.iter().all(|&i| in_test(i));
        // The copy kept: the first on the side that keeps it.
        let keep = if straddles {
            *idx.iter()
                .find(|&&i| in_test(i) == keep_test)
                .expect("a set that straddles has copies on both sides")
        } else {
            idx[0]
        };
        for &i in idx.iter().filter(|&&i| i != keep) {
            let how = if checked.sha256[&i] == checked.sha256[&keep] {
                ""
            } else {
                " (same pixels, other file bytes)"
            };
            let dropped = Skipped {
                path: rel(i),
                reason: format!("duplicate of {}{how}", rel(keep)),
            };
            if straddles && in_test(i) != in_test(keep) {
                unique.cross_split.push(dropped);
            } else {
                unique.duplicates.push(dropped);
            }
        }
        unique.kept.push((keep, checked.sha256[&keep].clone()));
    }
    unique
}

/// The kept images (indices into `kept`) of each group, by group name.
fn group_images(
    scanned: &ScannedDataset,
    kept: &[(usize, String)],
    re: &Regex,
) -> BTreeMap<String, Vec<usize>> {
    let mut group_members: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (k, (i, _)) in kept.iter().enumerate() {
        let name = scanned.images[*i]
            .rel_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A labels file's group wins over the one in the file name.
        let group = scanned.images[*i]
            .group
            .clone()
            .unwrap_or_else(|| group_of(&name, re));
        group_members.entry(group).or_default().push(k);
    }
    group_members
}

/// Deals each class's groups (by their majority class; groups rarely span classes), shuffled
/// with the seed, to the split furthest below its target share: group name -> split index.
/// With the dataset's test folder fixed, a group with any image there goes to test whole (the
/// second number counts those that also had images elsewhere) and the others are dealt to
/// train and val in the ratio of their shares.
fn assign_groups(
    scanned: &ScannedDataset,
    kept: &[(usize, String)],
    group_members: &BTreeMap<String, Vec<usize>>,
    opts: &SplitOptions,
    fixed_test: bool,
) -> (HashMap<String, usize>, usize) {
    let n_classes = scanned.classes.len();
    let mut groups_by_class: Vec<Vec<(String, usize)>> = vec![Vec::new(); n_classes];
    let mut assignment: HashMap<String, usize> = HashMap::new();
    let mut moved = 0;
    let in_test = |k: usize| scanned.images[kept[k].0].source_split == Some(Split::Test);
    let ratios = if fixed_test {
        [opts.ratios[0], opts.ratios[1], 0.0]
    } else {
        opts.ratios
    };
    for (group, members) in group_members {
        if fixed_test && members.iter().any(|&k| in_test(k)) {
            moved += usize::from(!members.iter().all(|&k| in_test(k)));
            assignment.insert(group.clone(), Split::Test.index());
            continue;
        }
        let mut votes = vec![0usize; n_classes];
        for &k in members {
            votes[scanned.images[kept[k].0].label] += 1;
        }
        let major = (0..n_classes)
            .max_by_key(|&c| (votes[c], n_classes - c))
            .unwrap_or(0);
        groups_by_class[major].push((group.clone(), members.len()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    for groups in groups_by_class.iter_mut() {
        groups.shuffle(&mut rng);
        let total: usize = groups.iter().map(|g| g.1).sum();
        let mut filled = [0usize; 3];
        for (group, size) in groups.iter() {
            // The split furthest below its target after taking this group.
            let s = (0..3)
                .filter(|&s| ratios[s] > 0.0)
                .max_by(|&a, &b| {
                    let gap = |s: usize| ratios[s] * total as f64 - filled[s] as f64;
                    gap(a).total_cmp(&gap(b)).then(b.cmp(&a))
                })
                .expect("at least one ratio is positive");
            filled[s] += size;
            assignment.insert(group.clone(), s);
        }
    }
    (assignment, moved)
}

/// The classes that lost more than half of their images (to label conflicts, duplicates or
/// unreadable files), or that a split with a share above zero holds none of.
fn class_warnings(
    scanned: &ScannedDataset,
    report: &SplitReport,
    ratios: [f64; 3],
) -> Vec<ClassWarning> {
    let label_of: HashMap<String, usize> = scanned
        .images
        .iter()
        .map(|img| (img.rel_path.to_string_lossy().into_owned(), img.label))
        .collect();
    let per_class = |skipped: &[Skipped]| {
        let mut n = vec![0usize; scanned.classes.len()];
        for s in skipped {
            if let Some(&l) = label_of.get(&s.path) {
                n[l] += 1;
            }
        }
        n
    };
    let conflicts = per_class(&report.label_conflicts_dropped);
    let duplicates: Vec<usize> = per_class(&report.duplicates_dropped)
        .iter()
        .zip(per_class(&report.cross_split_duplicates))
        .map(|(a, b)| a + b)
        .collect();
    let unreadable = per_class(&report.corrupt_skipped);
    let mut found = vec![0usize; scanned.classes.len()];
    for img in &scanned.images {
        found[img.label] += 1;
    }
    scanned
        .classes
        .iter()
        .enumerate()
        .filter_map(|(c, class)| {
            let kept: usize = Split::ALL
                .iter()
                .map(|s| report.counts[s.as_str()][class])
                .sum();
            let empty_splits: Vec<String> = Split::ALL
                .iter()
                .enumerate()
                .filter(|&(i, s)| {
                    let has_share = ratios[i] > 0.0
                        || (*s == Split::Test && report.test_from == TestFrom::Dataset);
                    has_share && report.counts[s.as_str()][class] == 0
                })
                .map(|(_, s)| s.to_string())
                .collect();
            (found[c] > 0 && (2 * kept < found[c] || !empty_splits.is_empty())).then(|| {
                ClassWarning {
                    class: class.clone(),
                    found: found[c],
                    kept,
                    label_conflicts: conflicts[c],
                    duplicates: duplicates[c],
                    unreadable: unreadable[c],
                    empty_splits,
                }
            })
        })
        .collect()
}

/// Images per split and class (every split and class present, zeros included).
fn count_per_split(
    classes: &[String],
    records: &[SplitRecord],
) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for s in Split::ALL {
        let per = counts.entry(s.to_string()).or_default();
        for c in classes {
            per.insert(c.clone(), 0);
        }
    }
    for r in records {
        *counts
            .get_mut(r.split.as_str())
            .and_then(|m| m.get_mut(&r.label))
            .expect("every split and class is counted") += 1;
    }
    counts
}

/// Writes `split.csv` and `split_report.json` into `out`.
pub fn write_split(out: &Path, outcome: &SplitOutcome) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let csv_path = out.join("split.csv");
    let mut w = csv::Writer::from_path(&csv_path)
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    if outcome.report.is_multilabel() {
        // A column per label after the fixed ones, as CheXpert writes them.
        let mut header = vec!["path", "label", "group", "split", "sha256"];
        header.extend(outcome.report.classes.iter().map(String::as_str));
        w.write_record(&header)?;
        for r in &outcome.records {
            let mut row = vec![
                r.path.as_str(),
                r.label.as_str(),
                r.group.as_str(),
                r.split.as_str(),
                r.sha256.as_str(),
            ];
            row.extend(r.values.iter().map(|&v| multilabel::value_text(v)));
            w.write_record(&row)?;
        }
    } else {
        for r in &outcome.records {
            w.serialize(r)?;
        }
    }
    w.flush()?;
    crate::fsutil::write_json_atomic(&out.join("split_report.json"), &outcome.report)
}

/// A split folder read back: the dataset folder, classes and rows.
#[derive(Debug, Clone)]
pub struct SplitSet {
    /// Absolute dataset folder.
    pub data_dir: PathBuf,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Rows of split.csv.
    pub records: Vec<SplitRecord>,
    /// Whether the labels are multi-label (`classes` are then the labels, and each record
    /// holds its values).
    pub multilabel: bool,
}

impl SplitSet {
    /// Reads `split.csv` and `split_report.json` from `split_dir`.
    pub fn read(split_dir: &Path) -> Result<SplitSet> {
        let report_path = split_dir.join("split_report.json");
        let csv_path = split_dir.join("split.csv");
        if !csv_path.is_file() || !report_path.is_file() {
            return Err(Error::usage(format!(
                "{} is not a split folder (no split.csv / split_report.json; run `xray split` first)",
                split_dir.display()
            ))
            .into());
        }
        let report: SplitReport = serde_json::from_slice(
            &std::fs::read(&report_path)
                .with_context(|| format!("cannot read {}", report_path.display()))?,
        )
        .with_context(|| format!("{} is not a valid split report", report_path.display()))?;
        let mut reader = csv::Reader::from_path(&csv_path)
            .with_context(|| format!("cannot read {}", csv_path.display()))?;
        let invalid = || format!("{} is not a valid split.csv", csv_path.display());
        let header = reader.headers().with_context(invalid)?.clone();
        let multilabel = report.is_multilabel();
        let label_cols: Vec<usize> = if multilabel {
            report
                .classes
                .iter()
                .map(|l| {
                    header.iter().position(|h| h == l).ok_or_else(|| {
                        Error::usage(format!("{}: no column for label {l}", invalid()))
                    })
                })
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let mut records = Vec::new();
        for row in reader.records() {
            let row = row.with_context(invalid)?;
            let mut record: SplitRecord = row.deserialize(Some(&header)).with_context(invalid)?;
            for &c in &label_cols {
                let cell = row.get(c).unwrap_or("");
                record
                    .values
                    .push(multilabel::value_of_text(cell).ok_or_else(|| {
                        Error::usage(format!("{}: value {cell} for {}", invalid(), &header[c]))
                    })?);
            }
            records.push(record);
        }
        Ok(SplitSet {
            data_dir: report.data_dir,
            classes: report.classes,
            records,
            multilabel,
        })
    }

    /// Multi-label: the (absolute path, row) of each image of `split` in split.csv's order
    /// (the "label" is the image's row in the targets), and the targets, row-major, one per
    /// label: 1, 0 or [`multilabel::MASKED`] by the policies.
    pub fn multilabel_samples(
        &self,
        split: Split,
        uncertain: crate::config::UncertainPolicy,
        blank: crate::config::BlankPolicy,
    ) -> (Vec<(PathBuf, usize)>, Vec<f32>) {
        let mut samples = Vec::new();
        let mut targets = Vec::new();
        for r in self.records.iter().filter(|r| r.split == split) {
            samples.push((self.data_dir.join(&r.path), samples.len()));
            targets.extend(
                r.values
                    .iter()
                    .map(|&v| multilabel::target(v, uncertain, blank)),
            );
        }
        (samples, targets)
    }

    /// The group (patient) of each image of `split`, in the order of [`SplitSet::samples`].
    pub fn groups(&self, split: Split) -> Vec<String> {
        self.records
            .iter()
            .filter(|r| r.split == split)
            .map(|r| r.group.clone())
            .collect()
    }

    /// The (absolute path, label index) of each image of `split`, in split.csv's order.
    pub fn samples(&self, split: Split) -> Result<Vec<(PathBuf, usize)>> {
        self.records
            .iter()
            .filter(|r| r.split == split)
            .map(|r| {
                let label = self
                    .classes
                    .iter()
                    .position(|c| *c == r.label)
                    .ok_or_else(|| anyhow::anyhow!("split.csv: unknown label {}", r.label))?;
                Ok((self.data_dir.join(&r.path), label))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_regex_finds_kermany_patients() {
        let re = Regex::new(DEFAULT_GROUP_REGEX).unwrap();
        assert_eq!(group_of("person123_bacteria_45.jpeg", &re), "person123");
        assert_eq!(group_of("person1_virus_6.jpeg", &re), "person1");
        assert_eq!(group_of("IM-0115-0001.jpeg", &re), "IM-0115");
        assert_eq!(
            group_of("NORMAL2-IM-0927-0001.jpeg", &re),
            "NORMAL2-IM-0927"
        );
        assert_eq!(group_of("synth_00012.png", &re), "synth_00012");
    }

    /// The closed sets read the words reports written before they were types hold, and write
    /// the same words back (a single-label report leaves `task` and `label_format` out).
    #[test]
    fn reports_written_with_strings_read_as_types_and_back() {
        let minimal = |extra: &str| {
            format!(
                r#"{{"data_dir": "/d", "classes": ["a", "b"], "ratios": [0.7, 0.15, 0.15],
                "seed": 42, "group_regex": "x", "files_found": 2, "images_kept": 2,
                "groups": 2, "counts": {{}}, "duplicates_dropped": [],
                "label_conflicts_dropped": [], "corrupt_skipped": []{extra}}}"#
            )
        };
        let multilabel: SplitReport = serde_json::from_str(&minimal(
            r#", "layout": {"kind": "labels_csv"}, "test_from": "resplit",
            "task": "multilabel", "label_format": "nih""#,
        ))
        .unwrap();
        assert!(multilabel.is_multilabel());
        assert_eq!(multilabel.layout.kind, LayoutKind::LabelsCsv);
        assert_eq!(multilabel.label_format, Some(multilabel::LabelFormat::Nih));
        let text = serde_json::to_string(&multilabel).unwrap();
        assert!(
            text.contains(r#""task":"multilabel""#) && text.contains(r#""label_format":"nih""#)
        );
        let folders: SplitReport = serde_json::from_str(&minimal(
            r#", "layout": {"kind": "split_folders"}, "test_from": "dataset""#,
        ))
        .unwrap();
        assert!(!folders.is_multilabel());
        assert_eq!(folders.test_from, TestFrom::Dataset);
        let text = serde_json::to_string(&folders).unwrap();
        assert!(
            !text.contains("\"task\"") && !text.contains("label_format"),
            "{text}"
        );
        assert!(
            text.contains(r#""kind":"split_folders""#) && text.contains(r#""test_from":"dataset""#)
        );
        // Older than `layout` and `test_from`: class folders, re-split.
        let oldest: SplitReport = serde_json::from_str(&minimal("")).unwrap();
        assert_eq!(oldest.layout.kind, LayoutKind::ClassFolders);
        assert_eq!(oldest.test_from, TestFrom::Resplit);
        // A word outside the set is an error that names the key.
        let bad = serde_json::from_str::<SplitReport>(&minimal(r#", "test_from": "elsewhere""#));
        assert!(bad.unwrap_err().to_string().contains("test_from"));
    }
}
