//! `xray eval [--checkpoint RUN_DIR] [--split test|val|train|DATA_DIR] [--out DIR]`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::evaluate::{evaluate, labelled_images, report_table, write_report};
use crate::infer::{resolve_device, Predictor};

/// Arguments of `xray eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Trained run folder.
    #[arg(long, default_value = "checkpoints/latest")]
    pub checkpoint: PathBuf,
    /// "test", "val", "train" (of the model's split) or a class-per-folder dataset.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Output folder (default RUN_DIR/eval-<split>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

impl EvalArgs {
    /// Runs the command.
    pub fn execute(self) -> Result<()> {
        let predictor = Predictor::load(&self.checkpoint, resolve_device(&self.device)?)?;
        let samples = labelled_images(&predictor, &self.split)?;
        let (report, scored) = evaluate(&predictor, samples, &self.split, self.batch_size)?;
        let out = self.out.unwrap_or_else(|| {
            let name = PathBuf::from(&self.split)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "data".into());
            self.checkpoint.join(format!("eval-{name}"))
        });
        write_report(&out, &report, &scored)?;
        print!("{}", report_table(&report));
        println!("\nreport: {}", out.join("report.json").display());
        println!("predictions: {}", out.join("predictions.csv").display());
        Ok(())
    }
}
