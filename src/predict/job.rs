//! A whole `predict` job over many inputs: the shard's share of them, the rows already in a
//! resumed prediction file skipped, then pieces of a few batches predicted and written (to the
//! file, appended and synced, or to the given stream) as they come.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::choice::choice;
use crate::error::Error;
use crate::infer::Predictor;
use crate::predict::output::{Manifest, PredictionFile, RowFormat};
use crate::predict::shard::Shard;
use crate::predict::{collect_keyed_inputs, predict_files_with, Prediction};
use crate::progress;

choice! {
    /// How prediction rows are written.
    Format, "--format" {
        /// `<path>\t<label>\t<probability %>` per line.
        Text = "text",
        /// One JSON object per line.
        Json = "json",
        /// A header, then one row per image.
        Csv = "csv",
    }
}

/// What to predict and where the rows go.
#[derive(Debug, Clone)]
pub struct Job {
    /// Image files or folders (walked recursively).
    pub inputs: Vec<PathBuf>,
    /// The rows' format (see [`output_format`]).
    pub format: Format,
    /// Only this shard's inputs.
    pub shard: Option<Shard>,
    /// A prediction file to write (and resume) instead of the stream.
    pub out: Option<PathBuf>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Test-time augmentation.
    pub tta: bool,
}

/// What a job did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Inputs predicted in this run (after the shard and a resumed file's rows).
    pub inputs: usize,
    /// Those that could be read.
    pub readable: usize,
    /// The finished prediction file's manifest, with `--out`.
    pub file: Option<Manifest>,
}

/// The format asked for, or the one `out`'s extension implies; text cannot go to a file.
pub fn output_format(asked: Option<Format>, out: Option<&Path>) -> Result<Format, Error> {
    let Some(out) = out else {
        return Ok(asked.unwrap_or(Format::Text));
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
    match asked {
        Some(f) if f != implied => Err(Error::usage(format!(
            "--out {}: its extension says {implied}, --format says {f}",
            out.display()
        ))),
        _ => Ok(implied),
    }
}

/// Runs `job` with `predictor`, writing rows to `stream` unless the job has a file.
pub fn run(predictor: &Predictor, job: &Job, stream: &mut dyn Write) -> Result<Outcome> {
    let mut files = collect_keyed_inputs(&job.inputs)?;
    let found = files.len();
    if let Some(s) = job.shard {
        files.retain(|f| s.owns(&f.key));
        progress::note(&format!("shard {s}: {} of {found} input(s)", files.len()));
    }
    let model_name = crate::run::run_name(&predictor.run_dir);
    let rows = Rows {
        format: job.format,
        classes: &predictor.card.classes,
        model: &model_name,
    };
    let mut file = match &job.out {
        Some(out) => {
            let row_format = match job.format {
                Format::Csv => RowFormat::Csv,
                _ => RowFormat::Jsonl,
            };
            let file = PredictionFile::open(out, row_format, Some(&rows.csv_header()))?;
            let before = files.len();
            files.retain(|f| !file.done().contains(&display(&f.path)));
            if before > files.len() {
                progress::note(&format!(
                    "{}: {} of {before} input(s) done earlier, {} to go",
                    out.display(),
                    before - files.len(),
                    files.len()
                ));
            }
            Some((file, before))
        }
        None => None,
    };
    if file.is_none() && job.format == Format::Csv {
        writeln!(stream, "{}", rows.csv_header())?;
    }
    let bar = progress::bar(files.len() as u64, "predict");
    let paths: Vec<PathBuf> = files.into_iter().map(|f| f.path).collect();
    let mut readable = 0;
    // Pieces of a few batches: memory stays flat over an archive, and a killed task loses at
    // most one piece.
    for piece in paths.chunks(job.batch_size.max(1) * 8) {
        let results = predict_files_with(predictor, piece, job.batch_size, job.tta, &bar)?;
        let mut text = Vec::new();
        let mut errors = 0;
        for (path, result) in piece.iter().zip(&results) {
            match result {
                Err(e) => {
                    bar.suspend(|| eprintln!("error: {e}"));
                    errors += 1;
                }
                Ok(_) => readable += 1,
            }
            rows.write(&mut text, path, result)?;
        }
        match &mut file {
            Some((f, _)) => {
                let names: Vec<String> = piece.iter().map(|p| display(p)).collect();
                f.append(&text, &names, errors)?;
            }
            None => stream.write_all(&text)?,
        }
    }
    bar.finish_and_clear();
    stream.flush()?;
    let manifest = match file {
        Some((f, inputs)) => {
            Some(f.finish(job.shard.map(|s| s.to_string()), inputs, &model_name)?)
        }
        None => None,
    };
    Ok(Outcome {
        inputs: paths.len(),
        readable,
        file: manifest,
    })
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
            (Format::Text, Ok(p)) => writeln!(out, "{shown}\t{}", p.summary(self.classes))?,
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
