//! `xray compare RUN_DIR... [--out DIR]`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::compute::device::resolve_device;
use crate::config::DeviceChoice;
use crate::evaluate::runs::{check_comparable, summarize, summarize_labels};
use crate::report::compare::{
    compare_labels_text, compare_text, write_compare, write_compare_labels,
};

/// Arguments of `xray compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Trained run folders of the same classes (two or more; all single-label, or all
    /// multi-label with the same labels).
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<PathBuf>,
    /// Output folder for compare.md, compare.html, roc.png and curves.png.
    #[arg(long, default_value = "compare")]
    pub out: PathBuf,
    /// Which images of each run's split: test, val or train.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// auto, cpu or cuda.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

impl CompareArgs {
    /// Evaluates every run, prints the table and writes the files.
    pub fn execute(self) -> Result<()> {
        let multilabel = check_comparable(&self.runs)?;
        let device = resolve_device(self.device)?;
        if multilabel {
            let summaries = self
                .runs
                .iter()
                .map(|r| summarize_labels(r, device, &self.split, self.batch_size))
                .collect::<Result<Vec<_>>>()?;
            write_compare_labels(&self.out, &summaries)?;
            print!("{}", compare_labels_text(&summaries));
            println!("\ncompare: {}", self.out.join("compare.html").display());
            return Ok(());
        }
        let summaries = self
            .runs
            .iter()
            .map(|r| summarize(r, device, &self.split, self.batch_size))
            .collect::<Result<Vec<_>>>()?;
        write_compare(&self.out, &summaries)?;
        print!("{}", compare_text(&summaries));
        println!("\ncompare: {}", self.out.join("compare.html").display());
        Ok(())
    }
}
