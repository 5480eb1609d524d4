//! `xray compare RUN_DIR... [--out DIR]`

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use tch::Device;

use crate::compute::device::resolve_device;
use crate::config::DeviceChoice;
use crate::evaluate::runs::{check_comparable, summarize, summarize_labels, RunSummary};
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
        if check_comparable(&self.runs)? {
            self.compare(summarize_labels, write_compare_labels, compare_labels_text)
        } else {
            self.compare(summarize, write_compare, compare_text)
        }
    }

    /// Summarises every run with `summarize`, writes the files with `write` and prints `text`.
    fn compare<R>(
        &self,
        summarize: fn(&Path, Device, &str, usize) -> Result<RunSummary<R>>,
        write: fn(&Path, &[RunSummary<R>]) -> Result<()>,
        text: fn(&[RunSummary<R>]) -> String,
    ) -> Result<()> {
        let device = resolve_device(self.device)?;
        let summaries = self
            .runs
            .iter()
            .map(|r| summarize(r, device, &self.split, self.batch_size))
            .collect::<Result<Vec<_>>>()?;
        write(&self.out, &summaries)?;
        print!("{}", text(&summaries));
        println!("\ncompare: {}", self.out.join("compare.html").display());
        Ok(())
    }
}
