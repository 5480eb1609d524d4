//! `xray split DATA_DIR --out SPLIT_DIR [--ratios 0.7,0.15,0.15] [--group-regex RE] [--seed N]`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::data::split::{split_dataset, write_split, SplitOptions, DEFAULT_GROUP_REGEX, SPLITS};
use crate::error::Error;

/// Arguments of `xray split`.
#[derive(Debug, Args)]
pub struct SplitArgs {
    /// Dataset folder with one sub-folder per class.
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
        };
        let outcome = split_dataset(&self.data_dir, &opts)?;
        write_split(&self.out, &outcome)?;
        let r = &outcome.report;
        for s in &r.corrupt_skipped {
            eprintln!("skipped {}: {}", s.path, s.reason);
        }
        println!(
            "{} images in {} groups ({} found; {} duplicates, {} label conflicts, {} unreadable dropped)",
            r.images_kept,
            r.groups,
            r.files_found,
            r.duplicates_dropped.len(),
            r.label_conflicts_dropped.len(),
            r.corrupt_skipped.len()
        );
        for split in SPLITS {
            let counts = &r.counts[split];
            let total: usize = counts.values().sum();
            let per: Vec<String> = counts.iter().map(|(c, n)| format!("{c} {n}")).collect();
            println!("  {split:<5} {total:>6}  ({})", per.join(", "));
        }
        println!("wrote {}", self.out.join("split.csv").display());
        Ok(())
    }
}
