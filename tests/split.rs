//! Split invariants on made fixtures: stratified, grouped, no duplicate across splits, conflicts
//! dropped, unreadable files listed with a reason.

use std::collections::HashMap;

use crate::common::{read_json, split_dataset, synth_dataset, xray};

#[test]
fn split_keeps_groups_and_duplicates_together() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_dataset(dir.path(), 60, 48);
    // Patients with several images, a byte-identical copy in the same class, and the same bytes
    // under both labels.
    for (class, first_patient) in [("normal", 0), ("opacity", 100)] {
        for j in 0..30 {
            std::fs::rename(
                data.join(format!("{class}/{class}_{:05}.png", 20 + j)),
                data.join(format!(
                    "{class}/person{}_view_{}.png",
                    first_patient + j / 3,
                    j % 3
                )),
            )
            .unwrap();
        }
    }
    std::fs::copy(
        data.join("opacity/opacity_00001.png"),
        data.join("opacity/copy_b.png"),
    )
    .unwrap();
    std::fs::copy(
        data.join("opacity/opacity_00002.png"),
        data.join("normal/conflict.png"),
    )
    .unwrap();
    std::fs::write(data.join("normal/empty.png"), b"").unwrap();
    std::fs::write(data.join("normal/text.png"), b"this is not an image").unwrap();

    let out = dir.path().join("split");
    xray()
        .arg("split")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--group-regex", r"^(person\d+)_"])
        .assert()
        .success();

    let mut rows = csv::Reader::from_path(out.join("split.csv")).unwrap();
    let mut split_of_group: HashMap<String, String> = HashMap::new();
    let mut split_of_hash: HashMap<String, String> = HashMap::new();
    let mut n = 0;
    for row in rows.records() {
        let row = row.unwrap();
        let (path, group, split, sha) = (&row[0], &row[2], &row[3], &row[4]);
        n += 1;
        if let Some(prev) = split_of_group.insert(group.to_string(), split.to_string()) {
            assert_eq!(prev, split, "group {group} in two splits");
        }
        assert!(
            split_of_hash
                .insert(sha.to_string(), split.to_string())
                .is_none(),
            "{path}: the same bytes appear twice in split.csv"
        );
        assert!(
            !path.contains("conflict") && !path.contains("empty") && !path.contains("text.png")
        );
    }
    let report = read_json(&out.join("split_report.json"));
    // copy_b.png and opacity_00001.png share bytes: the first by path (copy_b) is kept.
    assert_eq!(report["duplicates_dropped"].as_array().unwrap().len(), 1);
    assert_eq!(
        report["label_conflicts_dropped"].as_array().unwrap().len(),
        2
    );
    let corrupt = report["corrupt_skipped"].as_array().unwrap();
    assert_eq!(corrupt.len(), 2, "{corrupt:?}");
    assert!(corrupt
        .iter()
        .any(|c| c["reason"].as_str().unwrap().contains("empty")));
    assert_eq!(report["images_kept"].as_u64().unwrap() as usize, n);
    assert_eq!(n, 120 - 1);
    // 20 patients of 3 images each, and 60 single-image groups.
    assert_eq!(report["groups"].as_u64().unwrap(), 20 + 59);

    // Stratified: each class's share of each split within 2 points of the ratio... where group
    // sizes allow; with singleton groups they do.
    let counts = &report["counts"];
    for class in ["normal", "opacity"] {
        let total: f64 = ["train", "val", "test"]
            .iter()
            .map(|s| counts[s][class].as_f64().unwrap())
            .sum();
        for (s, ratio) in [("train", 0.7), ("val", 0.15), ("test", 0.15)] {
            let share = counts[s][class].as_f64().unwrap() / total;
            assert!(
                (share - ratio).abs() <= 0.02 + 1.0 / total,
                "{class} {s}: {share}"
            );
        }
    }

    // Deterministic for a seed.
    let again = dir.path().join("split2");
    xray()
        .arg("split")
        .arg(&data)
        .arg("--out")
        .arg(&again)
        .args(["--group-regex", r"^(person\d+)_"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read(out.join("split.csv")).unwrap(),
        std::fs::read(again.join("split.csv")).unwrap()
    );
}

/// The real Kermany set (../shared): no patient and no file content in two splits, class shares
/// within 2 points of the ratios, and the byte-identical copies counted.
#[test]
fn kermany_split_has_no_leakage() {
    let data = crate::common::repo().join("../shared/datasets/pneumonia");
    if !data.is_dir() {
        println!("skipped: {} is absent", data.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("split");
    split_dataset(&data, &out);
    let mut reader = csv::Reader::from_path(out.join("split.csv")).unwrap();
    let mut split_of_group: HashMap<String, String> = HashMap::new();
    let mut split_of_hash: HashMap<String, String> = HashMap::new();
    let mut per_class: HashMap<(String, String), f64> = HashMap::new();
    for row in reader.records() {
        let row = row.unwrap();
        let (label, group, split, sha) = (&row[1], &row[2], &row[3], &row[4]);
        let prev = split_of_group.insert(group.to_string(), split.to_string());
        assert!(
            prev.is_none_or(|p| p == split),
            "patient {group} in two splits"
        );
        assert!(
            split_of_hash
                .insert(sha.to_string(), split.to_string())
                .is_none(),
            "{sha} appears twice"
        );
        *per_class
            .entry((label.to_string(), split.to_string()))
            .or_default() += 1.0;
    }
    for class in ["NORMAL", "PNEUMONIA"] {
        let total: f64 = ["train", "val", "test"]
            .iter()
            .map(|s| per_class[&(class.to_string(), s.to_string())])
            .sum();
        for (s, ratio) in [("train", 0.7), ("val", 0.15), ("test", 0.15)] {
            let share = per_class[&(class.to_string(), s.to_string())] / total;
            assert!((share - ratio).abs() <= 0.02, "{class} {s}: {share:.4}");
        }
    }
    let report = read_json(&out.join("split_report.json"));
    let dups = report["duplicates_dropped"].as_array().unwrap();
    assert!(
        !dups.is_empty(),
        "the Kermany copy holds byte-identical files"
    );
    assert_eq!(
        report["images_kept"].as_u64().unwrap() as usize
            + dups.len()
            + report["label_conflicts_dropped"].as_array().unwrap().len()
            + report["corrupt_skipped"].as_array().unwrap().len(),
        report["files_found"].as_u64().unwrap() as usize
    );
    // Kermany names carry the patient: far fewer groups than images.
    assert!(report["groups"].as_u64().unwrap() < 3500);
    assert_eq!(
        split_of_hash.len(),
        report["images_kept"].as_u64().unwrap() as usize
    );
}
