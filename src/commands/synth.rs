//! `xray synth --out DATA_DIR [--per-class N] [--size PX] [--seed N]`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::data::synth::{write_synth_dataset, SynthOptions};

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
}

impl SynthArgs {
    /// Runs the command.
    pub fn execute(self) -> Result<()> {
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
