//! `xray train --config FILE [--set key=value]... [--out RUN_DIR]`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::Config;
use crate::train::{resume, train};

/// Arguments of `xray train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML config file.
    #[arg(long, required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Continue an interrupted run from its last completed epoch.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "overrides", "out"])]
    pub resume: Option<PathBuf>,
    /// Override a config key, e.g. `--set train.lr=0.001` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run folder (default checkpoints/<name>-<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl TrainArgs {
    /// Runs the command.
    pub fn execute(self) -> Result<()> {
        let outcome = match (&self.resume, &self.config) {
            (Some(run_dir), _) => resume(run_dir)?,
            (None, Some(path)) => {
                train(&Config::load(path, &self.overrides)?, self.out.as_deref())?
            }
            (None, None) => unreachable!("clap requires --config unless --resume is given"),
        };
        println!("{}", outcome.summary());
        Ok(())
    }
}
