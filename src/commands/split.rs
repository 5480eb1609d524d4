//! `xray split DATA_DIR --out SPLIT_DIR [--ratios 0.7,0.15,0.15] [--group-regex RE] [--seed N]
//! [--resplit] [--exclude GLOB]... [--keep-test-duplicates]`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::data::scan::LayoutKind;
use crate::data::split::{
    split_dataset, write_split, Split, SplitOptions, TestFrom, DEFAULT_GROUP_REGEX,
};
use crate::error::Error;

/// Arguments of `xray split`.
#[derive(Debug, Args)]
pub struct SplitArgs {
    /// Dataset folder (or its .zip as downloaded, extracted into SPLIT_DIR/data): one
    /// sub-folder per class, or the dataset's own split folders (train/val/test, any case) each
    /// holding one sub-folder per class.
    pub data_dir: PathBuf,
    /// Folder for split.csv and split_report.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Shares of train, val and test.
    #[arg(long, default_value = "0.7,0.15,0.15")]
    pub ratios: String,
    /// Regex whose first capture on the file name is the patient group.
    #[arg(long, default_value = DEFAULT_GROUP_REGEX)]
    pub group_regex: String,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Pool the dataset's own split folders and split everything by --ratios (by default its
    /// test folder stays the test split and train+val are re-split by patient).
    #[arg(long)]
    pub resplit: bool,
    /// Leave out files and folders matching this glob, relative to DATA_DIR (repeatable), e.g.
    /// `--exclude '**/*_mask.png'`.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Keep test images that are byte-identical to training images (the training copy is
    /// dropped instead); by default the test copy is dropped.
    #[arg(long)]
    pub keep_test_duplicates: bool,
    /// Labels (and patient groups) from a CSV file instead of class folders, paths relative to
    /// DATA_DIR: `path,label[,group]` (one label per image), or multi-label as the datasets
    /// ship them: NIH's Data_Entry_2017.csv, CheXpert/MIMIC's `Path` and a column per finding
    /// (1, 0, -1, blank), or `path` and a 0/1 column per label with an optional `group`.
    #[arg(long, value_name = "FILE.csv")]
    pub labels: Option<PathBuf>,
    /// Follow links that lead out of DATA_DIR (by default each is reported and left out).
    #[arg(long)]
    pub follow_external_links: bool,
    /// Near-duplicates (the same scan re-encoded, resized, brightened) are kept in one split:
    /// candidates have perceptual hashes at most this many bits (of 64) apart...
    #[arg(long, value_name = "BITS", default_value_t = crate::data::near_dup::DEFAULT_MAX_DISTANCE)]
    pub near_duplicate_distance: u32,
    /// ...and are near-duplicates when their 32x32 thumbnails correlate at least this much.
    #[arg(long, value_name = "R", default_value_t = crate::data::near_dup::DEFAULT_MIN_CORRELATION)]
    pub near_duplicate_correlation: f32,
}

impl SplitArgs {
    /// Runs the command.
    pub fn execute(self) -> Result<()> {
        let parts: Vec<f64> = self
            .ratios
            .split(',')
            .map(|s| s.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                Error::usage(format!("--ratios {}: expected three numbers", self.ratios))
            })?;
        let ratios: [f64; 3] = parts.try_into().map_err(|_| {
            Error::usage(format!("--ratios {}: expected three numbers", self.ratios))
        })?;
        let opts = SplitOptions {
            ratios,
            group_regex: self.group_regex,
            seed: self.seed,
            resplit: self.resplit,
            keep_test_duplicates: self.keep_test_duplicates,
            exclude: self.exclude,
            labels: self.labels,
            follow_external_links: self.follow_external_links,
            near_duplicate_distance: self.near_duplicate_distance,
            near_duplicate_correlation: self.near_duplicate_correlation,
        };
        // A downloaded archive is extracted once into the split folder, which the split records.
        let data_dir = if crate::data::archive::is_zip(&self.data_dir) {
            let dest = self.out.join("data");
            let dir = crate::data::archive::extract_zip(&self.data_dir, &dest)?;
            println!(
                "extracted {} into {}",
                self.data_dir.display(),
                dir.display()
            );
            dir
        } else {
            self.data_dir.clone()
        };
        let outcome = split_dataset(&data_dir, &opts)?;
        write_split(&self.out, &outcome)?;
        crate::report::split_pictures::write_split_pictures(&self.out, &outcome)?;
        let r = &outcome.report;
        for s in &r.corrupt_skipped {
            eprintln!("skipped {}: {}", s.path, s.reason);
        }
        println!("{}", layout_line(r));
        println!(
            "{} images in {} groups ({} found; {} duplicates, {} label conflicts, {} unreadable dropped)",
            r.images_kept,
            r.groups,
            r.files_found,
            r.duplicates_dropped.len(),
            r.label_conflicts_dropped.len(),
            r.corrupt_skipped.len()
        );
        if r.is_multilabel() {
            println!("images per split (positives per label):");
        }
        for split in Split::ALL.iter().copied() {
            let counts = &r.counts[split.as_str()];
            let total: usize = if r.is_multilabel() {
                outcome.records.iter().filter(|x| x.split == split).count()
            } else {
                counts.values().sum()
            };
            let per: Vec<String> = counts.iter().map(|(c, n)| format!("{c} {n}")).collect();
            println!("  {split:<5} {total:>6}  ({})", per.join(", "));
        }
        let nd = &r.near_duplicates;
        println!(
            "near-duplicates: {} pair(s), {} group(s) merged ({})",
            nd.pairs.len(),
            nd.groups_merged,
            self.out.join("near_duplicates.png").display()
        );
        for w in &r.class_warnings {
            eprintln!("warning: {}", w.line());
        }
        if !r.class_warnings.is_empty() {
            let conflicts = r.class_warnings.iter().any(|w| w.label_conflicts > 0);
            // A labels file has no class folders to leave out: its remedy is in the file.
            let remedy = if r.layout.kind == LayoutKind::LabelsCsv {
                "check the labels file, or drop the finding's column (a generic labels file) or its \
                 rows"
            } else {
                "fix the labels in the dataset, leave a class out with --exclude \
                 '<class folder>/**', or give the labels yourself with --labels FILE.csv"
            };
            let kind = if r.is_multilabel() {
                "finding"
            } else {
                "class"
            };
            eprintln!(
                "warning: {} {kind}(s) will train or be evaluated on too little{}; {remedy}",
                r.class_warnings.len(),
                if conflicts {
                    format!(
                        " (the conflicting images: {})",
                        self.out.join("label_conflicts.png").display()
                    )
                } else {
                    String::new()
                }
            );
        }
        println!(
            "look before training: {} and {}",
            self.out.join("classes.png").display(),
            self.out.join("samples.png").display()
        );
        if r.is_multilabel() {
            println!(
                "label co-occurrence: {}; train it with model.task = \"multilabel\"",
                self.out.join("cooccurrence.png").display()
            );
        }
        println!("wrote {}", self.out.join("split.csv").display());
        Ok(())
    }
}

/// What the scan found: the layout, where test came from, what it skipped.
fn layout_line(r: &crate::data::split::SplitReport) -> String {
    let l = &r.layout;
    let mut line = match l.kind {
        LayoutKind::SplitFolders => format!(
            "layout: split folders ({}) holding {} classes; test {}",
            l.split_folders.join(", "),
            r.classes.len(),
            if r.test_from == TestFrom::Dataset {
                "is the dataset's own test folder, train+val re-split by patient"
            } else {
                "re-split by --ratios (--resplit)"
            }
        ),
        LayoutKind::LabelsCsv if r.is_multilabel() => format!(
            "layout: labels and groups from --labels ({} file, {} labels per image)",
            r.label_format.map_or("?", |f| f.as_str()),
            r.classes.len()
        ),
        LayoutKind::LabelsCsv => format!(
            "layout: labels and groups from --labels ({} classes)",
            r.classes.len()
        ),
        LayoutKind::ClassFolders => {
            format!("layout: one folder per class ({} classes)", r.classes.len())
        }
    };
    if !l.descended.is_empty() {
        line.push_str(&format!("; inside {}", l.descended.join("/")));
    }
    if !l.skipped.is_empty() {
        let skipped: Vec<String> = l.skipped.iter().map(|(k, n)| format!("{n} {k}")).collect();
        line.push_str(&format!("; skipped {}", skipped.join(", ")));
    }
    if !r.cross_split_duplicates.is_empty() {
        line.push_str(&format!(
            "; {} image(s) in both the dataset's test and train folders dropped from one side",
            r.cross_split_duplicates.len()
        ));
    }
    line
}
