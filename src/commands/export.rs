//! `xray export [--checkpoint RUN_DIR] --format torchscript -o FILE.pt`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::export::{export, ExportFormat};

/// Arguments of `xray export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Trained run folder.
    #[arg(long, default_value = "checkpoints/latest")]
    pub checkpoint: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Torchscript)]
    pub format: ExportFormat,
    /// The module file to write (its sidecar goes to FILE.json beside it).
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
}

impl ExportArgs {
    /// Runs the command.
    pub fn execute(self) -> Result<()> {
        let done = export(&self.checkpoint, self.format, &self.out)?;
        println!("module: {}", done.module.display());
        println!("sidecar: {}", done.sidecar.display());
        match &done.ood {
            Some(p) => println!("out-of-distribution guard: {}", p.display()),
            None => println!("out-of-distribution guard: none fitted for this run"),
        }
        Ok(())
    }
}
