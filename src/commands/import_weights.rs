//! `xray import-weights FILE.pth --arch ARCH -o FILE.safetensors`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::models::import::import_weights;
use crate::models::Arch;

/// Arguments of `xray import-weights`.
#[derive(Debug, Args)]
pub struct ImportWeightsArgs {
    /// A PyTorch state-dict file (torch.save), e.g. torchvision's resnet18-f37072fd.pth.
    pub file: PathBuf,
    /// The architecture it belongs to (its names are checked).
    #[arg(long, value_enum)]
    pub arch: Arch,
    /// Output safetensors file, for `model.pretrained`.
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
}

impl ImportWeightsArgs {
    /// Runs the command.
    pub fn execute(self) -> Result<()> {
        let report = import_weights(&self.file, self.arch, &self.out)?;
        println!(
            "wrote {} tensors of {} ({} classes) to {}{}",
            report.written,
            self.arch,
            report.classes,
            self.out.display(),
            if report.left_out.is_empty() {
                String::new()
            } else {
                format!(
                    "; left out {} ({})",
                    report.left_out.len(),
                    if report
                        .left_out
                        .iter()
                        .all(|n| n.ends_with("num_batches_tracked"))
                    {
                        "batch-norm step counters".to_string()
                    } else {
                        report.left_out.join(", ")
                    }
                )
            }
        );
        Ok(())
    }
}
