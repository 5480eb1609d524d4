//! `xray predict [--checkpoint RUN_DIR] INPUT... [--format text|json|csv] [--tta]
//! [--shard I/N|auto] [--out FILE]`
//!
//! CSV and JSON give every input a row; an unreadable one carries its reason in `error`. With
//! `--shard`, only the shard's inputs are predicted ([`crate::predict::shard`]); with `--out`,
//! rows go to a file that a killed task resumes ([`crate::predict::output`]).
//!
//! With the run's out-of-distribution guard, an image unlike the training images is reported as
//! `out-of-distribution` in the text format's class column, `out_of_distribution: true` with a
//! `message` in JSON, and in the CSV's last two columns.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::compute::device::resolve_device;
use crate::config::{DeviceChoice, PrecisionChoice};
use crate::dicom::files;
use crate::dicom::uid::UidRoot;
use crate::infer::Predictor;
use crate::predict::job::{self, output_format, Format, Job};
use crate::predict::shard::Shard;

/// `--dicom-out`: the result objects of the DICOM inputs, and a line saying where they went.
fn write_dicom_results(
    predictor: &Predictor,
    inputs: &[PathBuf],
    dir: &std::path::Path,
    heatmap: bool,
    uids: &UidRoot,
) -> Result<()> {
    let written = files::write_results(predictor, inputs, dir, heatmap, uids)?;
    let captures = written.iter().filter(|w| w.capture.is_some()).count();
    eprintln!(
        "{}: {} structured report(s), {captures} overlay(s) for {} DICOM input(s)",
        dir.display(),
        written.len(),
        written.len()
    );
    if written.is_empty() {
        eprintln!("note: --dicom-out: none of the inputs is a DICOM file; nothing written");
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Image files or folders (walked recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Trained run folder.
    #[arg(long, default_value = "checkpoints/latest")]
    pub checkpoint: PathBuf,
    /// Output format (default text; with --out, the file's extension: .csv or .jsonl).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// auto, cpu or cuda.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Arithmetic: fp32, bf16 (bfloat16 autocast, channels-last) or auto (on a CPU with
    /// AVX512-BF16 or AMX, bf16 where a timed forward pass is at least 1.15x faster, once per
    /// model on this machine; else fp32).
    #[arg(long, value_enum, default_value_t = PrecisionChoice::Auto)]
    pub precision: PrecisionChoice,
    /// Images per forward pass (default 8 on the CPU, where larger batches only cost memory:
    /// MobileNetV2 over 500 images, 928 MiB at 32 against 498 MiB at 8, no faster; 32 on CUDA).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Test-time augmentation: average the probabilities over the image, its mirror image and
    /// both zoomed to the central 90% (four forward passes).
    #[arg(long)]
    pub tta: bool,
    /// Predict only shard I of N (I from 0): the inputs whose relative path hashes to I.
    /// `auto` reads a Slurm job array's or a Kubernetes Indexed Job's variables (`auto/N`
    /// gives the count where the scheduler does not).
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<String>,
    /// Write the rows to FILE (CSV or JSON lines) instead of stdout: appended and synced as
    /// they come, named FILE only when complete, and carried on when run again.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// For each DICOM input, also write a Structured Report (STEM.sr.dcm) into DIR: the
    /// classes' probabilities, the decision and the guard's verdict, in the source's study.
    #[arg(long, value_name = "DIR")]
    pub dicom_out: Option<PathBuf>,
    /// With --dicom-out: also write the Grad-CAM overlay as a Secondary Capture (STEM.sc.dcm).
    #[arg(long, requires = "dicom_out")]
    pub heatmap: bool,
    /// Root of the UIDs of the DICOM results (default: UUID-derived 2.25 UIDs).
    #[arg(long, value_name = "UID", requires = "dicom_out")]
    pub uid_root: Option<String>,
}

impl PredictArgs {
    /// Runs the command; exit code 1 when no input could be read.
    pub fn execute(self) -> Result<()> {
        let format = output_format(self.format, self.out.as_deref())?;
        let shard = self
            .shard
            .as_deref()
            .map(|s| Shard::parse(s, |k| std::env::var(k).ok()))
            .transpose()?;
        let device = resolve_device(self.device)?;
        let mut predictor = Predictor::load(&self.checkpoint, device)?;
        predictor.set_precision(self.precision)?;
        if let Some(note) = predictor.auto_note() {
            crate::progress::note(&note);
        }
        if predictor.ood.is_none() {
            eprintln!(
                "note: {} has no out-of-distribution guard (trained before xray had one, or \
                 with ood.enabled = false): every image gets a class",
                crate::run::run_name(&predictor.run_dir)
            );
        }
        let uids = match &self.uid_root {
            Some(root) => UidRoot::parse(root)?,
            None => UidRoot::default(),
        };
        let dicom_inputs = self
            .dicom_out
            .as_ref()
            .map(|_| crate::predict::collect_inputs(&self.inputs))
            .transpose()?;
        let job = Job {
            inputs: self.inputs,
            format,
            shard,
            out: self.out,
            batch_size: self
                .batch_size
                .unwrap_or(if device.is_cuda() { 32 } else { 8 })
                .max(1),
            tta: self.tta,
        };
        let outcome = job::run(&predictor, &job, &mut std::io::stdout().lock())?;
        if let (Some(m), Some(out)) = (&outcome.file, &job.out) {
            eprintln!(
                "{}: {} row(s), {} of them errors",
                out.display(),
                m.rows,
                m.errors
            );
        }
        if let (Some(dir), Some(inputs)) = (&self.dicom_out, &dicom_inputs) {
            write_dicom_results(&predictor, inputs, dir, self.heatmap, &uids)?;
        }
        if outcome.readable == 0 && outcome.inputs > 0 {
            anyhow::bail!(
                "none of the {} input image(s) could be read",
                outcome.inputs
            );
        }
        Ok(())
    }
}
