//! `xray synth --out DATA_DIR [--per-class N] [--size PX] [--seed N]`, or with `--multilabel
//! [--images N]` NIH ChestX-ray14's layout with four findings and a box each.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::data::synth::{
    write_findings_dataset, write_synth_dataset, FindingsOptions, SynthOptions, SYNTH_FINDINGS,
};

/// Arguments of `xray synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Folder to write (class sub-folders and boxes.csv).
    #[arg(long)]
    pub out: PathBuf,
    /// Images per class.
    #[arg(long, default_value_t = 200)]
    pub per_class: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Multi-label chest X-rays in NIH ChestX-ray14's layout: `images/`, `labels.csv` (its
    /// columns: `Finding Labels` such as `Cardiomegaly|Effusion`, a `Patient ID` that repeats)
    /// and `boxes.csv` with a box per finding.
    #[arg(long)]
    pub multilabel: bool,
    /// Images in all, with --multilabel (default: twice --per-class).
    #[arg(long, requires = "multilabel")]
    pub images: Option<usize>,
}

impl SynthArgs {
    /// Runs the command.
    pub fn execute(self) -> Result<()> {
        if self.multilabel {
            let opts = FindingsOptions {
                images: self.images.unwrap_or(2 * self.per_class),
                size: self.size,
                seed: self.seed,
            };
            let n = write_findings_dataset(&self.out, &opts)?;
            println!(
                "wrote {n} images ({}x{} px; findings {}) with labels.csv (NIH's columns) and \
                 boxes.csv to {}",
                opts.size,
                opts.size,
                SYNTH_FINDINGS.join(", "),
                self.out.display()
            );
            return Ok(());
        }
        let opts = SynthOptions {
            per_class: self.per_class,
            size: self.size,
            seed: self.seed,
        };
        let n = write_synth_dataset(&self.out, &opts)?;
        println!(
            "wrote {n} images ({} per class, {}x{} px) and boxes.csv to {}",
            opts.per_class,
            opts.size,
            opts.size,
            self.out.display()
        );
        Ok(())
    }
}
