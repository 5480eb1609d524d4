//! Multi-label chest X-ray labels as they ship, and the split that keeps every label's share.
//!
//! Three CSV layouts are recognised by their columns:
//!
//! - **NIH ChestX-ray14** (`Data_Entry_2017.csv`): `Image Index` (a file name, found anywhere
//!   under the dataset folder, as the `images_001/images/...` archives unpack), `Finding Labels`
//!   (`Cardiomegaly|Effusion`, `No Finding` = every label negative) and `Patient ID` (the group).
//! - **CheXpert / MIMIC-CXR style**: `Path` plus one column per finding holding `1`, `0`, `-1`
//!   (uncertain) or blank (not mentioned), as numbers (`1.0`) or integers. The metadata columns
//!   (`Sex`, `Age`, `Frontal/Lateral`, `AP/PA`, `ViewPosition`, ids) and `No Finding` (the
//!   complement of the others) are not labels. The patient is a `patient`/`subject_id`/`group`
//!   column, else the `patientNNNNN` folder in the path. Paths may start with the dataset's own
//!   folder name (`CheXpert-v1.0-small/train/...`), as CheXpert's do.
//! - **generic**: `path` plus one `0`/`1` column per label, and optionally `group`.
//!
//! Values keep what the file said ([`LabelValue::Positive`], [`LabelValue::Negative`], [`LabelValue::Uncertain`], [`LabelValue::Blank`]); the
//! training targets apply `data.uncertain` and `data.blank` ([`target`]).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use regex::Regex;

use crate::config::{BlankPolicy, UncertainPolicy};
use crate::error::Error;

/// What a labels file says of one finding in one image. Ordered as the numbers CheXpert
/// writes (blank first), which is the order label combinations are sorted in.
#[repr(i8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LabelValue {
    /// The report did not mention the finding (a blank cell).
    Blank = -2,
    /// The report was uncertain (`-1` in CheXpert/MIMIC).
    Uncertain = -1,
    /// The finding is absent.
    Negative = 0,
    /// The finding is present.
    Positive = 1,
}

/// What an image without any finding is called (NIH's word).
pub const NO_FINDING: &str = "No Finding";

/// A target masked out of the loss and the metrics.
pub const MASKED: f32 = -1.0;

crate::choice::choice! {
    /// Which layout a labels CSV has (the word `split_report.json` records).
    LabelFormat, "label_format" {
        /// NIH ChestX-ray14's `Data_Entry_2017.csv`.
        Nih = "nih",
        /// CheXpert/MIMIC-CXR: a column per finding with 1, 0, -1 or blank.
        Chexpert = "chexpert",
        /// `path`, a 0/1 column per label, optional `group`.
        Generic = "generic",
    }
}

/// One image of a multi-label CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRow {
    /// Path relative to the dataset folder.
    pub rel_path: PathBuf,
    /// The patient, when the file names one.
    pub group: Option<String>,
    /// One value per label: [`LabelValue::Positive`], [`LabelValue::Negative`], [`LabelValue::Uncertain`] or [`LabelValue::Blank`].
    pub values: Vec<LabelValue>,
}

/// A multi-label CSV read: its layout, label names and rows.
#[derive(Debug, Clone)]
pub struct LabelTable {
    /// The layout recognised.
    pub format: LabelFormat,
    /// Label names, in column order (NIH: sorted).
    pub labels: Vec<String>,
    /// The images, in file order (a path listed twice keeps its first row).
    pub rows: Vec<LabelRow>,
}

/// Columns of CheXpert/MIMIC files that are not findings (compared in lower case).
const METADATA_COLUMNS: [&str; 12] = [
    "sex",
    "age",
    "frontal/lateral",
    "ap/pa",
    "viewposition",
    "view",
    "subject_id",
    "study_id",
    "dicom_id",
    "patient",
    "group",
    "no finding",
];

/// Whether the labels CSV at `csv_path` is read here: every header without a `label` column
/// (the single-label `path,label[,group]` file), so that an unknown column set is reported
/// with every layout it could have been.
pub fn is_multilabel_csv(csv_path: &Path) -> Result<bool> {
    let header = read_header(csv_path)?;
    Ok(!header.iter().any(|h| h.eq_ignore_ascii_case("label")))
}

fn read_header(csv_path: &Path) -> Result<Vec<String>> {
    let mut reader = csv::Reader::from_path(csv_path).map_err(|e| bad(csv_path, e.to_string()))?;
    Ok(reader
        .headers()
        .map_err(|e| bad(csv_path, e.to_string()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect())
}

fn bad(csv_path: &Path, why: String) -> anyhow::Error {
    Error::usage(format!("--labels {}: {why}", csv_path.display())).into()
}

/// Reads a multi-label CSV whose paths are relative to `root` (an absolute, existing folder).
/// An unknown column set, a path that does not exist or leaves `root`, or a value other than
/// 1, 0, -1 or blank is one usage error naming the line.
pub fn read_label_table(root: &Path, csv_path: &Path) -> Result<LabelTable> {
    let header = read_header(csv_path)?;
    let lower: Vec<String> = header.iter().map(|h| h.to_ascii_lowercase()).collect();
    let column = |name: &str| lower.iter().position(|h| h == name);
    let mut reader = csv::Reader::from_path(csv_path).map_err(|e| bad(csv_path, e.to_string()))?;
    let mut records = Vec::new();
    for (i, row) in reader.records().enumerate() {
        records.push((
            i + 2,
            row.map_err(|e| bad(csv_path, format!("line {}: {e}", i + 2)))?,
        ));
    }
    let table =
        if let (Some(image), Some(findings)) = (column("image index"), column("finding labels")) {
            read_nih(
                root,
                csv_path,
                &records,
                image,
                findings,
                column("patient id"),
            )?
        } else if let Some(path_col) = column("path") {
            let format = if header[path_col] == "Path" || column("frontal/lateral").is_some() {
                LabelFormat::Chexpert
            } else {
                LabelFormat::Generic
            };
            read_columns(root, csv_path, &records, &header, path_col, format)?
        } else {
            return Err(bad(
                csv_path,
                format!(
                "unknown column set ({}); expected NIH's `Image Index,Finding Labels,Patient ID`, \
                 CheXpert's `Path` and a column per finding, `path` and a 0/1 column per label, \
                 or `path,label[,group]` for one label per image",
                header.join(",")
            ),
            ));
        };
    if table.rows.is_empty() {
        return Err(bad(csv_path, "lists no image".into()));
    }
    if table.labels.is_empty() {
        return Err(bad(csv_path, "names no finding column".into()));
    }
    Ok(table)
}

/// NIH: findings `|`-separated, labels the findings seen (sorted), images found by file name.
fn read_nih(
    root: &Path,
    csv_path: &Path,
    records: &[(usize, csv::StringRecord)],
    image: usize,
    findings: usize,
    patient: Option<usize>,
) -> Result<LabelTable> {
    let mut by_name: HashMap<String, PathBuf> = HashMap::new();
    let mut files = Vec::new();
    crate::data::scan::walk_files(root, &mut files)?;
    files.sort();
    for f in files {
        if let (Some(name), Ok(rel)) = (f.file_name(), f.strip_prefix(root)) {
            by_name
                .entry(name.to_string_lossy().into_owned())
                .or_insert_with(|| rel.to_path_buf());
        }
    }
    let mut labels = BTreeSet::new();
    let mut parsed = Vec::new();
    let mut missing = Vec::new();
    for (line, row) in records {
        let cell = |i: usize| row.get(i).unwrap_or("").trim();
        let name = cell(image);
        let found: Vec<String> = cell(findings)
            .split('|')
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty() && f != NO_FINDING)
            .collect();
        if name.is_empty() {
            return Err(bad(csv_path, format!("line {line}: empty Image Index")));
        }
        let Some(rel) = by_name.get(name) else {
            missing.push((line, name.to_string()));
            continue;
        };
        labels.extend(found.iter().cloned());
        let group = patient
            .map(|p| cell(p).to_string())
            .filter(|g| !g.is_empty());
        parsed.push((rel.clone(), group, found));
    }
    if let Some((line, name)) = missing.first() {
        return Err(bad(
            csv_path,
            format!(
                "{} of {} listed images are not under {} (the first, line {line}: {name}); \
                 list only the images you have",
                missing.len(),
                records.len(),
                root.display()
            ),
        ));
    }
    let labels: Vec<String> = labels.into_iter().collect();
    let mut seen = std::collections::HashSet::new();
    let rows = parsed
        .into_iter()
        .filter(|(rel, _, _)| seen.insert(rel.clone()))
        .map(|(rel_path, group, found)| LabelRow {
            rel_path,
            group,
            values: labels
                .iter()
                .map(|l| {
                    if found.contains(l) {
                        LabelValue::Positive
                    } else {
                        LabelValue::Negative
                    }
                })
                .collect(),
        })
        .collect();
    Ok(LabelTable {
        format: LabelFormat::Nih,
        labels,
        rows,
    })
}

/// CheXpert/MIMIC and generic: a column per label; the metadata columns are not labels.
fn read_columns(
    root: &Path,
    csv_path: &Path,
    records: &[(usize, csv::StringRecord)],
    header: &[String],
    path_col: usize,
    format: LabelFormat,
) -> Result<LabelTable> {
    let lower: Vec<String> = header.iter().map(|h| h.to_ascii_lowercase()).collect();
    let group_col = ["group", "patient", "subject_id"]
        .iter()
        .find_map(|g| lower.iter().position(|h| h == g));
    let label_cols: Vec<usize> = (0..header.len())
        .filter(|&i| i != path_col && !METADATA_COLUMNS.contains(&lower[i].as_str()))
        .collect();
    let patient_re = Regex::new(r"(?i)(patient\d+)").expect("a valid regex");
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for (line, row) in records {
        let cell = |i: usize| row.get(i).unwrap_or("").trim();
        let listed = cell(path_col);
        if listed.is_empty() {
            return Err(bad(csv_path, format!("line {line}: empty path")));
        }
        let rel = resolve(root, Path::new(listed)).map_err(|why| {
            bad(
                csv_path,
                format!(
                    "line {line}: {listed} {why} (paths are relative to {})",
                    root.display()
                ),
            )
        })?;
        let mut values = Vec::with_capacity(label_cols.len());
        for &c in &label_cols {
            values.push(parse_value(cell(c)).ok_or_else(|| {
                bad(
                    csv_path,
                    format!(
                        "line {line}, column {}: value {} (expected 1, 0, -1 or blank)",
                        header[c],
                        cell(c)
                    ),
                )
            })?);
        }
        let group = group_col
            .map(|g| cell(g).to_string())
            .filter(|g| !g.is_empty())
            .or_else(|| {
                patient_re
                    .captures(listed)
                    .map(|c| c[1].to_string())
                    .filter(|_| format == LabelFormat::Chexpert)
            });
        if seen.insert(rel.clone()) {
            rows.push(LabelRow {
                rel_path: rel,
                group,
                values,
            });
        }
    }
    Ok(LabelTable {
        format,
        labels: label_cols.iter().map(|&c| header[c].clone()).collect(),
        rows,
    })
}

/// A cell as a value: `1`, `0`, `-1` (also `1.0`, `0.0`, `-1.0`) or blank.
fn parse_value(cell: &str) -> Option<LabelValue> {
    if cell.is_empty() {
        return Some(LabelValue::Blank);
    }
    let v = cell.parse::<f64>().ok()?;
    if v == 1.0 {
        Some(LabelValue::Positive)
    } else if v == 0.0 {
        Some(LabelValue::Negative)
    } else if v == -1.0 {
        Some(LabelValue::Uncertain)
    } else {
        None
    }
}

/// The file a listed path names under `root`: the path itself, or (CheXpert lists
/// `CheXpert-v1.0-small/train/...` from the folder above the dataset) the path without its
/// first components; an error when it leaves `root` or is nowhere.
fn resolve(root: &Path, listed: &Path) -> Result<PathBuf, &'static str> {
    if let Some(why) = crate::data::scan::leaves_root(root, listed, false) {
        return Err(why);
    }
    let parts: Vec<_> = listed.components().collect();
    for skip in 0..parts.len() {
        let rel: PathBuf = parts[skip..].iter().collect();
        if root.join(&rel).is_file() {
            return Ok(rel);
        }
    }
    Err("does not exist")
}

/// The training target of a value: 1 or 0, or [`MASKED`], by the uncertain and blank policies
/// (the CheXpert paper's U-Ignore, U-Zeros and U-Ones).
pub fn target(value: LabelValue, uncertain: UncertainPolicy, blank: BlankPolicy) -> f32 {
    match value {
        LabelValue::Positive => 1.0,
        LabelValue::Negative => 0.0,
        LabelValue::Uncertain => match uncertain {
            UncertainPolicy::Ignore => MASKED,
            UncertainPolicy::Zeros => 0.0,
            UncertainPolicy::Ones => 1.0,
        },
        LabelValue::Blank => match blank {
            BlankPolicy::Ignore => MASKED,
            BlankPolicy::Zeros => 0.0,
        },
    }
}

/// A value as split.csv writes it: `1`, `0`, `-1` or empty.
pub fn value_text(value: LabelValue) -> &'static str {
    match value {
        LabelValue::Positive => "1",
        LabelValue::Negative => "0",
        LabelValue::Uncertain => "-1",
        LabelValue::Blank => "",
    }
}

/// A cell of split.csv read back (see [`value_text`]).
pub fn value_of_text(text: &str) -> Option<LabelValue> {
    parse_value(text.trim())
}

/// Findings as NIH writes them: `|`-joined, or [`NO_FINDING`] when there are none.
pub fn join_findings<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    if names.is_empty() {
        NO_FINDING.into()
    } else {
        names.join("|")
    }
}

/// The positive labels of `values`, as [`join_findings`] writes them.
pub fn finding_text(labels: &[String], values: &[LabelValue]) -> String {
    join_findings(
        labels
            .iter()
            .zip(values)
            .filter(|(_, &v)| v == LabelValue::Positive)
            .map(|(l, _)| l.as_str()),
    )
}

/// cooccurrence[a][b]: the rows positive for both labels a and b (the diagonal: for a), each
/// row a flag per label of `k`.
pub fn cooccurrence<'a>(rows: impl Iterator<Item = &'a [bool]>, k: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0usize; k]; k];
    for row in rows {
        let on: Vec<usize> = (0..k).filter(|&l| row[l]).collect();
        for &a in &on {
            for &b in &on {
                m[a][b] += 1;
            }
        }
    }
    m
}

/// A group (patient) as the stratification sees it: its images and its positives per label.
#[derive(Debug, Clone)]
pub struct GroupLabels {
    /// Images of the group.
    pub size: usize,
    /// Positive images per label.
    pub positives: Vec<usize>,
}

/// Iterative stratification (Sechidis, Tsoumakas and Vlahavas 2011) over whole groups: the
/// label with the fewest positives left is dealt first, each of its groups to the split that
/// most lacks that label (ties: the split that most lacks images, then the first); groups
/// without any positive go to the split that most lacks images. Groups are visited in an order
/// shuffled with `seed`. Returns the split index (into `ratios`) of each group.
pub fn iterative_stratification(groups: &[GroupLabels], ratios: [f64; 3], seed: u64) -> Vec<usize> {
    let n_labels = groups.first().map_or(0, |g| g.positives.len());
    let total: usize = groups.iter().map(|g| g.size).sum();
    let mut want_images: Vec<f64> = ratios.iter().map(|r| r * total as f64).collect();
    let mut want: Vec<Vec<f64>> = ratios
        .iter()
        .map(|r| {
            (0..n_labels)
                .map(|l| r * groups.iter().map(|g| g.positives[l]).sum::<usize>() as f64)
                .collect()
        })
        .collect();
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut assigned: Vec<Option<usize>> = vec![None; groups.len()];
    let open: Vec<usize> = (0..3).filter(|&s| ratios[s] > 0.0).collect();
    let pick = |want_l: Option<&[f64]>, want_images: &[f64]| -> usize {
        *open
            .iter()
            .max_by(|&&a, &&b| {
                let by_label = match want_l {
                    Some(w) => w[a].total_cmp(&w[b]),
                    None => std::cmp::Ordering::Equal,
                };
                by_label
                    .then(want_images[a].total_cmp(&want_images[b]))
                    .then(b.cmp(&a))
            })
            .expect("at least one ratio is positive")
    };
    loop {
        // The label with the fewest positives among the groups left.
        let mut left = vec![0usize; n_labels];
        for &g in order.iter().filter(|&&g| assigned[g].is_none()) {
            for (l, &p) in groups[g].positives.iter().enumerate() {
                left[l] += p;
            }
        }
        let Some(label) = (0..n_labels)
            .filter(|&l| left[l] > 0)
            .min_by_key(|&l| left[l])
        else {
            break;
        };
        for &g in &order {
            if assigned[g].is_some() || groups[g].positives[label] == 0 {
                continue;
            }
            let per_label: Vec<f64> = (0..3).map(|s| want[s][label]).collect();
            let s = pick(Some(&per_label), &want_images);
            assigned[g] = Some(s);
            want_images[s] -= groups[g].size as f64;
            for (l, &p) in groups[g].positives.iter().enumerate() {
                want[s][l] -= p as f64;
            }
        }
    }
    for &g in &order {
        if assigned[g].is_none() {
            let s = pick(None, &want_images);
            assigned[g] = Some(s);
            want_images[s] -= groups[g].size as f64;
        }
    }
    assigned
        .into_iter()
        .map(|s| s.expect("every group is assigned"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn nih_findings_split_on_bars_and_no_finding_is_all_negative() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        touch(&root, "images_001/images/00000001_000.png");
        touch(&root, "images_002/images/00000001_001.png");
        touch(&root, "images_002/images/00000002_000.png");
        let csv = write(
            dir.path(),
            "Data_Entry_2017.csv",
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age\n\
             00000001_000.png,Cardiomegaly|Effusion,0,1,58\n\
             00000001_001.png,Cardiomegaly,1,1,58\n\
             00000002_000.png,No Finding,0,2,81\n",
        );
        let t = read_label_table(&root, &csv).unwrap();
        assert_eq!(t.format, LabelFormat::Nih);
        assert_eq!(t.labels, vec!["Cardiomegaly", "Effusion"]);
        use LabelValue::{Negative as N, Positive as P};
        assert_eq!(t.rows[0].values, vec![P, P]);
        assert_eq!(t.rows[1].values, vec![P, N]);
        assert_eq!(t.rows[2].values, vec![N, N]);
        assert_eq!(
            t.rows[1].rel_path,
            PathBuf::from("images_002/images/00000001_001.png")
        );
        assert_eq!(t.rows[0].group.as_deref(), Some("1"));
        assert_eq!(finding_text(&t.labels, &t.rows[2].values), "No Finding");
        assert_eq!(
            finding_text(&t.labels, &t.rows[0].values),
            "Cardiomegaly|Effusion"
        );
    }

    #[test]
    fn chexpert_values_blanks_and_patients_from_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("CheXpert-v1.0-small");
        touch(&root, "train/patient00001/study1/view1_frontal.jpg");
        touch(&root, "train/patient00001/study1/view2_lateral.jpg");
        let csv = write(
            dir.path(),
            "train.csv",
            "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema\n\
             CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,,1.0,-1.0\n\
             CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg,Female,68,Lateral,,,,0.0\n",
        );
        let t = read_label_table(&root, &csv).unwrap();
        assert_eq!(t.format, LabelFormat::Chexpert);
        assert_eq!(t.labels, vec!["Cardiomegaly", "Edema"]);
        assert_eq!(
            t.rows[0].values,
            vec![LabelValue::Positive, LabelValue::Uncertain]
        );
        assert_eq!(
            t.rows[1].values,
            vec![LabelValue::Blank, LabelValue::Negative]
        );
        assert_eq!(t.rows[1].group.as_deref(), Some("patient00001"));
        assert_eq!(
            t.rows[0].rel_path,
            PathBuf::from("train/patient00001/study1/view1_frontal.jpg")
        );
    }

    #[test]
    fn bad_csvs_are_one_usage_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("d");
        touch(&root, "a.png");
        let cases = [
            ("file,finding\na.png,1\n", "unknown column set"),
            ("path,A,B\nb.png,1,0\n", "line 2: b.png does not exist"),
            ("path,A,B\na.png,2,0\n", "line 2, column A: value 2"),
            ("path,A\n../x.png,1\n", "goes up through .."),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let csv = write(dir.path(), &format!("bad{i}.csv"), text);
            let err = read_label_table(&root, &csv).unwrap_err();
            assert!(err.downcast_ref::<Error>().is_some(), "{err:#}");
            let msg = format!("{err:#}");
            assert!(msg.contains(want), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn policies_turn_values_into_targets() {
        use BlankPolicy as B;
        use UncertainPolicy as U;
        assert_eq!(target(LabelValue::Uncertain, U::Ignore, B::Zeros), MASKED);
        assert_eq!(target(LabelValue::Uncertain, U::Zeros, B::Zeros), 0.0);
        assert_eq!(target(LabelValue::Uncertain, U::Ones, B::Zeros), 1.0);
        assert_eq!(target(LabelValue::Blank, U::Ones, B::Zeros), 0.0);
        assert_eq!(target(LabelValue::Blank, U::Ones, B::Ignore), MASKED);
        for v in [
            LabelValue::Positive,
            LabelValue::Negative,
            LabelValue::Uncertain,
            LabelValue::Blank,
        ] {
            assert_eq!(value_of_text(value_text(v)), Some(v));
        }
    }

    /// Every label's positives are shared out near the ratios, groups stay whole, and a rare
    /// label gets at least one positive group in each split.
    #[test]
    fn iterative_stratification_keeps_each_labels_share() {
        let mut groups = Vec::new();
        for g in 0..600usize {
            let size = 1 + g % 3;
            let positives = vec![
                if g % 2 == 0 { size } else { 0 },
                if g % 7 == 0 { 1 } else { 0 },
                if g % 40 == 0 { 1 } else { 0 },
            ];
            groups.push(GroupLabels { size, positives });
        }
        let ratios = [0.7, 0.15, 0.15];
        let split = iterative_stratification(&groups, ratios, 3);
        for l in 0..3 {
            let total: usize = groups.iter().map(|g| g.positives[l]).sum();
            for (s, ratio) in ratios.iter().enumerate() {
                let got: usize = groups
                    .iter()
                    .zip(&split)
                    .filter(|(_, &x)| x == s)
                    .map(|(g, _)| g.positives[l])
                    .sum();
                let share = got as f64 / total as f64;
                assert!(got > 0, "label {l} split {s} empty");
                assert!((share - ratio).abs() < 0.06, "label {l} split {s}: {share}");
            }
        }
        let images: usize = groups.iter().map(|g| g.size).sum();
        let train: usize = groups
            .iter()
            .zip(&split)
            .filter(|(_, &s)| s == 0)
            .map(|(g, _)| g.size)
            .sum();
        assert!((train as f64 / images as f64 - 0.7).abs() < 0.03);
        assert_eq!(split, iterative_stratification(&groups, ratios, 3));
    }
}
