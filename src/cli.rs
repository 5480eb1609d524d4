//! The command line: clap derive, one variant per subcommand, errors printed once at the top.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;

/// Train, evaluate, explain and serve medical image classifiers.
#[derive(Debug, Parser)]
#[command(name = "xray", version, about, propagate_version = true)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Split a class-per-folder dataset into train/val/test by patient, without duplicates.
    Split(commands::split::SplitArgs),
    /// Train a classifier from a TOML config.
    Train(commands::train::TrainArgs),
    /// Evaluate a trained model on a split or a folder.
    Eval(commands::eval::EvalArgs),
    /// Heatmaps of what the model looked at (Grad-CAM, Grad-CAM++, Eigen-CAM, Integrated
    /// Gradients), or `--check` them against synth's opacity boxes.
    Gradcam(commands::gradcam::GradcamArgs),
    /// Predict the class of images or folders of images.
    Predict(commands::predict::PredictArgs),
    /// Join the prediction files of a sharded `predict` job, checking every input appears once.
    Merge(commands::merge::MergeArgs),
    /// Serve the upload page and a JSON API (POST /api/predict) over one model.
    Serve(Box<commands::serve::ServeArgs>),
    /// Search hyperparameters (grid, random or TPE) over the keys of a training config.
    Tune(commands::tune::TuneArgs),
    /// Write a synthetic chest-X-ray-like dataset with known opacity boxes.
    Synth(commands::synth::SynthArgs),
    /// Convert a PyTorch state-dict file (.pth) into safetensors for `model.pretrained`.
    ImportWeights(commands::import_weights::ImportWeightsArgs),
    /// Download torchvision's ImageNet weights (SHA-256 checked) for `weights:NAME` configs.
    Weights(commands::weights::WeightsArgs),
    /// Export a trained run as TorchScript for other inference stacks, with a JSON sidecar.
    Export(commands::export::ExportArgs),
    /// Compare trained runs of the same classes: test metrics with intervals, ROC and curves.
    Compare(commands::compare::CompareArgs),
    /// Run synth, split, train, eval, gradcam and predict end to end on the CPU.
    Demo(commands::demo::DemoArgs),
    /// Send DICOM files (what `predict --dicom-out` wrote) to a PACS with C-STORE.
    DicomSend(commands::dicom_send::DicomSendArgs),
}

impl Command {
    /// Whether the command runs networks over many images (and gains from
    /// [`crate::alloc::reexec_with_malloc_conf`]); a one-image predict does not.
    pub fn is_heavy(&self) -> bool {
        match self {
            Command::Train(_)
            | Command::Tune(_)
            | Command::Eval(_)
            | Command::Gradcam(_)
            | Command::Demo(_)
            | Command::Compare(_) => true,
            Command::Predict(a) => a.inputs.len() > 8 || a.inputs.iter().any(|p| p.is_dir()),
            Command::Split(_) | Command::Synth(_) | Command::ImportWeights(_) => false,
            Command::Weights(_) => false,
            Command::Merge(_) | Command::DicomSend(_) => false,
            Command::Export(_) => false,
            Command::Serve(_) => true,
        }
    }

    /// Runs the subcommand.
    pub fn execute(self) -> anyhow::Result<()> {
        match self {
            Command::Split(a) => a.execute(),
            Command::Train(a) => a.execute(),
            Command::Eval(a) => a.execute(),
            Command::Gradcam(a) => a.execute(),
            Command::Predict(a) => a.execute(),
            Command::Merge(a) => a.execute(),
            Command::Serve(a) => a.execute(),
            Command::Tune(a) => a.execute(),
            Command::Synth(a) => a.execute(),
            Command::ImportWeights(a) => a.execute(),
            Command::Weights(a) => a.execute(),
            Command::Export(a) => a.execute(),
            Command::Compare(a) => a.execute(),
            Command::Demo(a) => a.execute(),
            Command::DicomSend(a) => a.execute(),
        }
    }
}

/// Parses the arguments, runs the command, prints any error as one line, returns the exit code
/// (0 success, 2 bad usage or config, 1 anything else).
pub fn run() -> ExitCode {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("error: {}", clap_error_line(&e));
            return ExitCode::from(2);
        }
    };
    if cli.command.is_heavy() {
        crate::alloc::reexec_with_malloc_conf();
    }
    match cli.command.execute() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(crate::error::exit_code(&err))
        }
    }
}

/// A command-line error as one line, like every other error: clap's first paragraph (the
/// message, an argument list, the possible values) joined, without its tips and usage.
fn clap_error_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("error: "))
        .filter(|l| !l.starts_with("tip:"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A panic is a bug: say so in one line instead of a backtrace (unless RUST_BACKTRACE asks).
fn install_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let first = msg
            .split("Exception raised from")
            .next()
            .unwrap_or(&msg)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{at}: {first} (please report this)");
    }));
}

/// Makes closed sets of names (declared by [`crate::choice::choice!`]) clap value enums, so each
/// flag lists and checks the same words (and aliases) as the config.
macro_rules! value_enums {
    ($($ty:ty),+ $(,)?) => {
        $(
            impl clap::ValueEnum for $ty {
                fn value_variants<'a>() -> &'a [Self] {
                    <$ty as crate::choice::Choice>::all()
                }

                fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                    use crate::choice::Choice;
                    Some(clap::builder::PossibleValue::new(self.word()).aliases(self.aliases()))
                }
            }
        )+
    };
}

value_enums!(
    crate::config::DeviceChoice,
    crate::config::PrecisionChoice,
    crate::config::Sampler,
    crate::config::OptimizerKind,
    crate::config::SchedulerKind,
    crate::config::LossKind,
    crate::config::Monitor,
    crate::config::Strategy,
    crate::config::Prune,
    crate::config::ClassWeightKeyword,
    crate::models::Arch,
    crate::report::tables::ClassOrder,
    crate::export::ExportFormat,
    crate::evaluate::CiBy,
    crate::explain::methods::MethodName,
    crate::predict::job::Format,
);
