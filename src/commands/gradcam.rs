//! `xray gradcam [--checkpoint RUN_DIR] INPUT... --out DIR [--method M]... [--target T]` and
//! `xray gradcam --check DATA_DIR`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::compute::device::resolve_device;
use crate::config::DeviceChoice;
use crate::explain::{
    check_table, explain_files, run_check, write_gallery, Method, MethodName, Target,
};
use crate::infer::Predictor;
use crate::predict::collect_inputs;

/// Arguments of `xray gradcam`.
#[derive(Debug, Args)]
pub struct GradcamArgs {
    /// Image files or folders (walked recursively).
    #[arg(required_unless_present = "check")]
    pub inputs: Vec<PathBuf>,
    /// Trained run folder.
    #[arg(long, default_value = "checkpoints/latest")]
    pub checkpoint: PathBuf,
    /// Output folder (default RUN_DIR/gradcam, or RUN_DIR/gradcam-check with --check).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// gradcam, gradcam++, eigencam, ig (black baseline) or ig-blur (blurred baseline);
    /// repeat or separate with commas for several. --check defaults to all of them.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub method: Vec<MethodName>,
    /// "predicted" or a class name.
    #[arg(long, default_value = "predicted")]
    pub target: String,
    /// Integrated Gradients steps along the path.
    #[arg(long, default_value_t = 32)]
    pub ig_steps: usize,
    /// Score the heatmaps on a synth dataset (pointing game, energy in the box, randomisation).
    #[arg(long, value_name = "DATA_DIR")]
    pub check: Option<PathBuf>,
    /// --check: at most this many positive images.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// --check: seed of the randomised model.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// auto, cpu or cuda.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

impl GradcamArgs {
    fn methods(&self) -> Result<Vec<Method>> {
        let names: Vec<MethodName> = if self.method.is_empty() {
            if self.check.is_some() {
                MethodName::ALL.to_vec()
            } else {
                vec![MethodName::GradCam]
            }
        } else {
            self.method.clone()
        };
        Ok(names
            .into_iter()
            .map(|n| Method::new(n, self.ig_steps))
            .collect())
    }

    /// Runs the command; exit code 1 when no input could be read.
    pub fn execute(self) -> Result<()> {
        let methods = self.methods()?;
        let predictor = Predictor::load(&self.checkpoint, resolve_device(self.device)?)?;
        if let Some(data) = &self.check {
            let (scores, source) = run_check(
                &predictor,
                data,
                &methods,
                self.limit,
                self.batch_size,
                self.seed,
            )?;
            let out = self
                .out
                .clone()
                .unwrap_or_else(|| self.checkpoint.join("gradcam-check"));
            std::fs::create_dir_all(&out)?;
            crate::fsutil::write_json_atomic(&out.join("check.json"), &scores)?;
            let n = scores.first().map_or(0, |s| s.images);
            println!("heatmap check on {n} positive images ({source})");
            print!("{}", check_table(&scores));
            println!("report: {}", out.join("check.json").display());
            return Ok(());
        }
        let target = Target::parse(&self.target, &predictor.card.classes)?;
        let files = collect_inputs(&self.inputs)?;
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| self.checkpoint.join("gradcam"));
        let results = explain_files(&predictor, &files, &methods, target, &out, self.batch_size)?;
        let mut done = Vec::new();
        for r in results {
            match r {
                Ok(e) => done.push(e),
                Err(e) => eprintln!("{e}"),
            }
        }
        if done.is_empty() {
            return Err(anyhow::anyhow!("no input could be read"));
        }
        let run = crate::run::run_name(&predictor.run_dir);
        write_gallery(&out, &done, &run)?;
        for e in &done {
            let files: Vec<&str> = e.outputs.iter().map(|o| o.1.as_str()).collect();
            println!(
                "{}\t{}\t{:.1}%\t{}",
                e.path.display(),
                e.target,
                100.0 * e.probability,
                files.join(" ")
            );
        }
        println!(
            "{} images; gallery: {}",
            done.len(),
            out.join("index.html").display()
        );
        Ok(())
    }
}
