//! `xray merge SHARD_FILE... -o FILE [--inputs INPUT...]`: joins the prediction files of a
//! sharded `predict` job (files, or folders of them) and checks that every input appears
//! exactly once.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::predict::collect_inputs;
use crate::predict::output::merge;

/// Arguments of `xray merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Prediction files written by `predict --out` (.csv or .jsonl), or folders of them.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// The merged file.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// The inputs the shards were given, exactly as given to `predict`: every image among them
    /// must have exactly one row, and the rows follow their order.
    #[arg(long, num_args = 1.., value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
}

impl MergeArgs {
    /// Runs the command: exit 1 when a shard is missing or unfinished, or an input has no row
    /// or several.
    pub fn execute(self) -> Result<()> {
        let expected: Option<Vec<String>> = if self.inputs.is_empty() {
            None
        } else {
            Some(
                collect_inputs(&self.inputs)?
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            )
        };
        let report = merge(&self.shards, &self.out, expected.as_deref())?;
        println!(
            "{}: {} row(s) from {} file(s){}, {} of them errors; {}",
            self.out.display(),
            report.rows,
            report.files,
            report
                .shards
                .map_or(String::new(), |n| format!(" (all {n} shards)")),
            report.errors,
            if expected.is_some() {
                "every input exactly once"
            } else {
                "no input twice (give --inputs to check that none is missing)"
            }
        );
        Ok(())
    }
}
