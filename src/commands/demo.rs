//! `xray demo`: synth → split → train → eval → gradcam → predict on the CPU, printing where each output
//! went.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use crate::compute::device::resolve_device;
use crate::config::Config;
use crate::data::split::{split_dataset, write_split, Split, SplitOptions, SplitSet};
use crate::data::synth::{write_synth_dataset, SynthOptions};
use crate::evaluate::{evaluate, CiBy, Labelled};
use crate::explain::{
    check_table, explain_files, run_check, write_gallery, Method, MethodName, Target,
};
use crate::infer::Predictor;
use crate::predict::predict_files;
use crate::report::{report_table, write_eval_report, ClassOrder};
use crate::train::train;

/// The demo's training config: configs/smoke.toml, built in so the demo runs anywhere.
pub const SMOKE_CONFIG: &str = include_str!("../../configs/smoke.toml");

/// Arguments of `xray demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder under which datasets/ and checkpoints/ are written.
    #[arg(long, default_value = ".")]
    pub workdir: PathBuf,
    /// Synthetic images per class.
    #[arg(long, default_value_t = 400)]
    pub per_class: usize,
    /// Override a training config key (repeatable), e.g. `--set train.epochs=3`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

impl DemoArgs {
    /// Runs the command.
    pub fn execute(self) -> Result<()> {
        let started = Instant::now();
        let data_dir = self.workdir.join("datasets/synth");
        let split_dir = self.workdir.join("datasets/synth-split");

        println!("[1/6] synth: writing {} images per class", self.per_class);
        let synth = SynthOptions {
            per_class: self.per_class,
            size: 128,
            seed: 0,
        };
        write_synth_dataset(&data_dir, &synth)?;
        println!("      -> {} (boxes in boxes.csv)", data_dir.display());

        println!("[2/6] split: stratified 70/15/15");
        let outcome = split_dataset(&data_dir, &SplitOptions::default())?;
        write_split(&split_dir, &outcome)?;
        crate::report::split_pictures::write_split_pictures(&split_dir, &outcome)?;
        println!("      -> {}", split_dir.join("split.csv").display());

        println!("[3/6] train: simple_cnn (configs/smoke.toml)");
        let mut overrides = vec![format!("data.split={}", toml_string(&split_dir))];
        overrides.extend(self.overrides.iter().cloned());
        let config = Config::from_toml_str(SMOKE_CONFIG, &overrides)?;
        let run_name = format!("demo-{}", chrono::Local::now().format("%Y%m%d-%H%M%S"));
        let run_dir = self.workdir.join("checkpoints").join(run_name);
        let outcome = train(&config, Some(&run_dir))?;
        println!("{}", outcome.summary());

        println!("[4/6] eval: test split");
        let predictor =
            Predictor::load(&run_dir, resolve_device(crate::config::DeviceChoice::Auto)?)?;
        let split = SplitSet::read(&split_dir)?;
        let samples = split.samples(Split::Test)?;
        let labelled = Labelled {
            samples: samples.clone(),
            groups: Some(split.groups(Split::Test)),
        };
        let (report, scored) = evaluate(&predictor, labelled, "test", 64, CiBy::Auto)?;
        let eval_dir = run_dir.join("eval-test");
        write_eval_report(&eval_dir, &report, &scored, ClassOrder::Data)?;
        print!("{}", report_table(&report, ClassOrder::Data));
        println!("      -> {}", eval_dir.join("report.json").display());

        let mut picks: Vec<PathBuf> = Vec::new();
        for class in 0..predictor.card.classes.len() {
            picks.extend(
                samples
                    .iter()
                    .filter(|(_, l)| *l == class)
                    .take(2)
                    .map(|(p, _)| p.clone()),
            );
        }
        let gradcam_dir = run_dir.join("gradcam");
        gradcam_step(&predictor, &picks, &data_dir, &gradcam_dir)?;
        predict_step(&predictor, picks)?;

        println!(
            "\ndone in {:.0}s. Outputs:",
            started.elapsed().as_secs_f64()
        );
        println!("  dataset      {}", data_dir.display());
        println!("  split        {}", split_dir.display());
        println!("  model        {}", run_dir.display());
        println!("  evaluation   {}", eval_dir.join("report.html").display());
        println!(
            "  heatmaps     {}",
            gradcam_dir.join("index.html").display()
        );
        println!(
            "  try          xray predict --checkpoint {} {}",
            run_dir.display(),
            data_dir.join("opacity").display()
        );
        Ok(())
    }
}

/// Step 5: Grad-CAM and Eigen-CAM of the picked images, then every method scored against the
/// opacity boxes.
fn gradcam_step(
    predictor: &Predictor,
    picks: &[PathBuf],
    data_dir: &std::path::Path,
    gradcam_dir: &std::path::Path,
) -> Result<()> {
    println!("[5/6] gradcam: four test images, then the check against the opacity boxes");
    let methods = [Method::GradCam, Method::EigenCam];
    let explained = explain_files(
        predictor,
        picks,
        &methods,
        Target::Predicted,
        gradcam_dir,
        16,
    )?;
    let explained: Vec<_> = explained.into_iter().collect::<Result<_, _>>()?;
    write_gallery(gradcam_dir, &explained, "demo")?;
    let all = [
        Method::GradCam,
        Method::GradCamPlusPlus,
        Method::EigenCam,
        Method::new(MethodName::Ig, 16),
    ];
    let (scores, source) = run_check(predictor, data_dir, &all, 60, 16, 0)?;
    println!(
        "      on {} ({source}):",
        scores.first().map_or(0, |s| s.images)
    );
    for line in check_table(&scores).lines() {
        println!("      {line}");
    }
    println!("      -> {}", gradcam_dir.join("index.html").display());
    Ok(())
}

/// Step 6: one picked image per class through `predict`.
fn predict_step(predictor: &Predictor, picks: Vec<PathBuf>) -> Result<()> {
    println!("[6/6] predict: one test image per class");
    let picks: Vec<PathBuf> = picks.into_iter().step_by(2).collect();
    for (path, result) in picks
        .iter()
        .zip(predict_files(predictor, &picks, 32, false)?)
    {
        match result {
            Ok(p) => println!(
                "{}\t{}\t{:.1}%",
                path.display(),
                p.label,
                p.probability * 100.0
            ),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}

/// A path as a TOML string literal, for `--set` overrides.
fn toml_string(p: &std::path::Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}
