//! `xray eval [--checkpoint RUN_DIR] [--split test|val|train|DATA_DIR] [--out DIR]`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::compute::device::resolve_device;
use crate::config::{DeviceChoice, PrecisionChoice};
use crate::evaluate::{evaluate, labelled_images, CiBy};
use crate::infer::Predictor;
use crate::report::{report_table, write_eval_report, ClassOrder};

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
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Arithmetic: fp32, bf16 (bfloat16 autocast, channels-last) or auto (on a CPU with
    /// AVX512-BF16 or AMX, bf16 where a timed forward pass is at least 1.15x faster, once per
    /// model on this machine; else fp32).
    #[arg(long, value_enum, default_value_t = PrecisionChoice::Auto)]
    pub precision: PrecisionChoice,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// What the 95% bootstrap intervals resample: whole patients when the images carry groups
    /// (a split's do), else images (auto); or force group or image.
    #[arg(long, value_enum, default_value_t = CiBy::Auto)]
    pub ci_by: CiBy,
    /// Order of the per-class rows in the tables: as in the data, by F1 or by support.
    #[arg(long, value_enum, default_value_t = ClassOrder::Data)]
    pub sort_classes: ClassOrder,
}

impl EvalArgs {
    /// Runs the command.
    pub fn execute(self) -> Result<()> {
        let mut predictor = Predictor::load(&self.checkpoint, resolve_device(self.device)?)?;
        predictor.set_precision(self.precision)?;
        if let Some(note) = predictor.auto_note() {
            crate::progress::note(&note);
        }
        if predictor.card.task == crate::config::Task::Multilabel {
            return self.execute_multilabel(&predictor);
        }
        let labelled = labelled_images(&predictor, &self.split)?;
        let (report, scored) = evaluate(
            &predictor,
            labelled,
            &self.split,
            self.batch_size,
            self.ci_by,
        )?;
        let out = self.out_dir();
        write_eval_report(&out, &report, &scored, self.sort_classes)?;
        print!("{}", report_table(&report, self.sort_classes));
        println!("\nreport: {}", out.join("report.json").display());
        println!("predictions: {}", out.join("predictions.csv").display());
        Ok(())
    }

    /// The output folder: `--out`, else RUN_DIR/eval-<split>.
    fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            let name = PathBuf::from(&self.split)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "data".into());
            self.checkpoint.join(format!("eval-{name}"))
        })
    }

    /// A multi-label model: per-label figures on its split.
    fn execute_multilabel(&self, predictor: &Predictor) -> Result<()> {
        use crate::evaluate::multilabel::{evaluate_multilabel, labelled_split};
        let (labelled, targets) = labelled_split(predictor, &self.split)?;
        let (report, scored) = evaluate_multilabel(
            predictor,
            labelled,
            targets,
            &self.split,
            self.batch_size,
            self.ci_by,
        )?;
        let out = self.out_dir();
        crate::report::multilabel::write_multilabel_eval(&out, &report, &scored)?;
        print!("{}", crate::report::multilabel::multilabel_text(&report));
        println!("\nreport: {}", out.join("report.json").display());
        println!("predictions: {}", out.join("predictions.csv").display());
        Ok(())
    }
}
