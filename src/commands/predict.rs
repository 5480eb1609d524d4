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

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::compute::device::resolve_device;
use crate::config::{DeviceChoice, PrecisionChoice};
use crate::error::Error;
use crate::infer::Predictor;
use crate::predict::output::{PredictionFile, RowFormat};
use crate::predict::shard::Shard;
use crate::predict::{collect_keyed_inputs, predict_files_with, Prediction};
use crate::progress;

/// Output formats of `xray predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `<path>\t<label>\t<probability %>` per line.
    Text,
    /// One JSON object per line.
    Json,
    /// A header, then one row per image.
    Csv,
}

/// Arguments of `xray predict`.
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
    /// Arithmetic: fp32, bf16 (bfloat16 autocast, channels-last) or auto (bf16 where the CPU
    /// computes it in hardware: AVX512-BF16 or AMX; else fp32).
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
}

impl PredictArgs {
    /// Runs the command; exit code 1 when no input could be read.
    pub fn execute(self) -> Result<()> {
        let format = self.output_format()?;
        let shard = self
            .shard
            .as_deref()
            .map(|s| Shard::parse(s, |k| std::env::var(k).ok()))
            .transpose()?;
        let device = resolve_device(self.device)?;
        let mut predictor = Predictor::load(&self.checkpoint, device)?;
        predictor.set_precision(self.precision)?;
        let mut files = collect_keyed_inputs(&self.inputs)?;
        let found = files.len();
        if let Some(s) = shard {
            files.retain(|f| s.owns(&f.key));
            eprintln!("shard {s}: {} of {found} input(s)", files.len());
        }
        let batch_size = self
            .batch_size
            .unwrap_or(if device.is_cuda() { 32 } else { 8 })
            .max(1);
        let model_name = crate::run::run_name(&predictor.run_dir);
        let classes = &predictor.card.classes;
        if predictor.ood.is_none() {
            eprintln!(
                "note: {model_name} has no out-of-distribution guard (trained before xray had \
                 one, or with ood.enabled = false): every image gets a class"
            );
        }
        let rows = Rows {
            format,
            classes,
            model: &model_name,
        };
        let mut file = match &self.out {
            Some(out) => {
                let row_format = if format == Format::Csv {
                    RowFormat::Csv
                } else {
                    RowFormat::Jsonl
                };
                let file = PredictionFile::open(out, row_format, Some(&rows.csv_header()))?;
                let before = files.len();
                files.retain(|f| !file.done().contains(&display(&f.path)));
                if before > files.len() {
                    eprintln!(
                        "{}: {} of {before} input(s) done earlier, {} to go",
                        out.display(),
                        before - files.len(),
                        files.len()
                    );
                }
                Some((file, before))
            }
            None => None,
        };
        let stdout = std::io::stdout();
        let mut stdout = stdout.lock();
        if file.is_none() && format == Format::Csv {
            writeln!(stdout, "{}", rows.csv_header())?;
        }
        let bar = progress::bar(files.len() as u64, "predict");
        let paths: Vec<PathBuf> = files.into_iter().map(|f| f.path).collect();
        let mut readable = 0;
        // Pieces of a few batches: memory stays flat over an archive, and a killed task loses
        // at most one piece.
        for piece in paths.chunks(batch_size * 8) {
            let results = predict_files_with(&predictor, piece, batch_size, self.tta, &bar)?;
            let mut text = Vec::new();
            let mut errors = 0;
            for (path, result) in piece.iter().zip(&results) {
                if let Err(e) = result {
                    bar.suspend(|| eprintln!("error: {e}"));
                    errors += 1;
                } else {
                    readable += 1;
                }
                rows.write(&mut text, path, result)?;
            }
            match &mut file {
                Some((f, _)) => {
                    let names: Vec<String> = piece.iter().map(|p| display(p)).collect();
                    f.append(&text, &names, errors)?;
                }
                None => stdout.write_all(&text)?,
            }
        }
        bar.finish_and_clear();
        stdout.flush()?;
        if let (Some((f, inputs)), Some(out)) = (file, &self.out) {
            let m = f.finish(shard.map(|s| s.to_string()), inputs, &model_name)?;
            eprintln!(
                "{}: {} row(s), {} of them errors",
                out.display(),
                m.rows,
                m.errors
            );
        }
        if readable == 0 && !paths.is_empty() {
            anyhow::bail!("none of the {} input image(s) could be read", paths.len());
        }
        Ok(())
    }

    /// The format asked for, or the one `--out`'s extension implies; text cannot go to a file.
    fn output_format(&self) -> Result<Format, Error> {
        let Some(out) = &self.out else {
            return Ok(self.format.unwrap_or(Format::Text));
        };
        let implied = match RowFormat::from_extension(out) {
            Some(RowFormat::Csv) => Format::Csv,
            Some(RowFormat::Jsonl) => Format::Json,
            None => {
                return Err(Error::usage(format!(
                    "--out {}: name it .csv or .jsonl, so that a rerun and `xray merge` know \
                     its format (text goes to stdout)",
                    out.display()
                )))
            }
        };
        match self.format {
            Some(f) if f != implied => Err(Error::usage(format!(
                "--out {}: its extension says {implied:?}, --format says {f:?}",
                out.display()
            ))),
            _ => Ok(implied),
        }
    }
}

/// A path as the rows show it.
fn display(path: &Path) -> String {
    path.display().to_string()
}

/// How rows are written.
struct Rows<'a> {
    format: Format,
    classes: &'a [String],
    model: &'a str,
}

impl Rows<'_> {
    fn csv_header(&self) -> String {
        let probs: Vec<String> = self.classes.iter().map(|c| format!("p_{c}")).collect();
        format!(
            "path,label,probability,{},ood_score,out_of_distribution,error",
            probs.join(",")
        )
    }

    /// One input's row; in text, an unreadable input has none (its error is on stderr).
    fn write(
        &self,
        out: &mut Vec<u8>,
        path: &Path,
        result: &Result<Prediction, Error>,
    ) -> Result<()> {
        let shown = display(path);
        match (self.format, result) {
            (Format::Text, Err(_)) => {}
            // A flagged image's class column says so; the closest class follows.
            (Format::Text, Ok(p)) if p.out_of_distribution() => writeln!(
                out,
                "{shown}\tout-of-distribution\t{} (closest class {} {:.1}%)",
                crate::ood::MESSAGE,
                p.label,
                p.probability * 100.0
            )?,
            (Format::Text, Ok(p)) => {
                writeln!(out, "{shown}\t{}\t{:.1}%", p.label, p.probability * 100.0)?
            }
            (Format::Json, Ok(p)) => {
                writeln!(out, "{}", p.to_json(&shown, self.classes, self.model))?
            }
            (Format::Json, Err(e)) => writeln!(
                out,
                "{}",
                serde_json::json!({"path": shown, "error": e.to_string(), "model": self.model})
            )?,
            (Format::Csv, result) => {
                let mut row = vec![shown];
                match result {
                    Ok(p) => {
                        row.push(p.label.clone());
                        row.push(format!("{:.6}", p.probability));
                        row.extend(p.probabilities.iter().map(|v| format!("{v:.6}")));
                        row.push(p.ood.map_or(String::new(), |v| format!("{:.4}", v.score)));
                        row.push(p.ood.map_or(String::new(), |v| v.flagged().to_string()));
                        row.push(String::new());
                    }
                    Err(e) => {
                        row.extend(std::iter::repeat_n(String::new(), self.classes.len() + 4));
                        row.push(e.to_string());
                    }
                }
                let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
                w.write_record(&row)?;
                out.extend(w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?);
            }
        }
        Ok(())
    }
}
