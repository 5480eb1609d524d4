//! `xray serve [--checkpoint RUN_DIR] [--addr 127.0.0.1:8080]`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::DeviceChoice;
use crate::infer::{resolve_device, Predictor};
use crate::serve::{serve, ServeOptions};

/// Arguments of `xray serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Trained run folder.
    #[arg(long, default_value = "checkpoints/latest")]
    pub checkpoint: PathBuf,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// auto, cpu or cuda.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Largest accepted upload in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_upload_mb: usize,
    /// Largest accepted image in megapixels.
    #[arg(long, default_value_t = 50.0)]
    pub max_megapixels: f64,
    /// Requests that may wait for the model; beyond that the answer is 503.
    #[arg(long, default_value_t = 32)]
    pub queue: usize,
}

impl ServeArgs {
    /// Runs the server until SIGTERM or Ctrl-C.
    pub fn execute(self) -> Result<()> {
        let predictor = Predictor::load(&self.checkpoint, resolve_device(self.device)?)?;
        let options = ServeOptions {
            max_upload_bytes: self.max_upload_mb.max(1) << 20,
            max_pixels: (self.max_megapixels.max(0.001) * 1e6) as u64,
            queue: self.queue,
        };
        serve(&self.checkpoint, predictor, &self.addr, options)
    }
}
