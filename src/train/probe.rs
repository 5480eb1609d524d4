//! `train.precision = "auto"` on a CPU with bfloat16 instructions: a few training steps of this
//! run's network (fresh weights, random images of the configured batch and size) timed in
//! float32 and in bf16, through [`crate::torch_ext::auto_precision`], which keeps bf16 only
//! where it is measurably faster and caches the times for the next run on this machine. The
//! step timed is the one of the run's last phase, which trains longest: with the stages it
//! trains, and on cached activations when `precompute_frozen` gives it those.

use anyhow::Result;
use tch::{nn, Device, Kind, Tensor};

use super::epoch::forward_from;
use super::optim::{Optimizer, Rule};
use super::phases;
use crate::compute::precision::Precision;
use crate::config::Config;
use crate::models::{build, Classifier, ModelSpec};
use crate::progress;
use crate::torch_ext::auto_precision::{self as auto, AutoChoice};

/// The precision a run trains in, with what `auto` measured when it measured; a resumed run
/// passes the choice it began with (`earlier`) and keeps it. Call it before the run seeds
/// libtorch's generator: the probe's networks and images draw from it.
pub(super) fn training_precision(
    config: &Config,
    spec: &ModelSpec,
    device: Device,
    earlier: Option<AutoChoice>,
) -> Result<(Precision, Option<AutoChoice>)> {
    let tc = &config.train;
    let measured = |choice: AutoChoice| {
        let precision = Precision::resolve(Precision::measured_choice(&choice), device, tc.amp);
        Ok((precision, Some(choice)))
    };
    if let Some(choice) = earlier {
        return measured(choice);
    }
    if !Precision::auto_measures(tc.precision, device) {
        return Ok((Precision::resolve(tc.precision, device, tc.amp), None));
    }
    let batch = tc.batch_size.max(1);
    let stages = {
        let vs = nn::VarStore::new(Device::Cpu);
        build(&vs.root(), spec)?.num_stages()
    };
    let plan = phases::plan(tc, stages);
    let phase = plan.iter().rev().find(|p| p.epochs > 0).unwrap_or(&plan[1]);
    let from = phase.trainable_from;
    let level = if tc.precompute_frozen { from } else { 0 };
    let workload = format!(
        "train|{}|{}|{} px|{} channels|{} classes|batch {batch}|{}|stages {from}.. of \
         {stages} from {level}",
        spec.arch.as_str(),
        serde_json::to_string(&spec.shape)?,
        spec.image_size,
        spec.in_channels,
        spec.num_classes,
        tc.optimizer
    );
    let what = match (from, level) {
        (0, _) => "training step".to_string(),
        (f, 0) => format!("fine-tuning step (stages {f}.. of {stages})"),
        (f, _) => format!("fine-tuning step (stages {f}.. of {stages}, on cached activations)"),
    };
    let timed = format!(
        "{} {what} of {batch} images at {} px",
        spec.arch.as_str(),
        spec.image_size
    );
    let choice = auto::choose(&workload, &timed, || {
        progress::note(&format!(
            "precision auto: timing the {timed} in fp32 and in bf16, {} times each (once on \
             this machine)",
            auto::ROUNDS + 1
        ));
        let new = |precision| Probe::new(config, spec, device, precision, (from, level));
        let (mut fp32, mut bf16) = (new(Precision::FP32)?, new(Precision::BF16)?);
        auto::time_alternating(|| fp32.step(), || bf16.step())
    })?;
    measured(choice)
}

/// A throwaway copy of the run's network, optimiser and a batch, for timing steps.
struct Probe {
    _vs: nn::VarStore,
    model: Box<dyn Classifier>,
    /// The first trained stage, and the stage the inputs enter at.
    from: usize,
    level: usize,
    opt: Optimizer,
    xs: Tensor,
    ys: Tensor,
    precision: Precision,
    device: Device,
    clip: f64,
}

impl Probe {
    /// The probe of a step training stages `from..` on inputs entering at stage `level`.
    fn new(
        config: &Config,
        spec: &ModelSpec,
        device: Device,
        precision: Precision,
        (from, level): (usize, usize),
    ) -> Result<Probe> {
        let tc = &config.train;
        let vs = nn::VarStore::new(device);
        let model = build(&vs.root(), spec)?;
        precision.prepare_weights(&vs)?;
        phases::set_trainable(&vs, model.as_ref(), from);
        let opt = Optimizer::new(
            &vs,
            Rule::from_config(tc),
            tc.lr,
            tc.weight_decay,
            tc.momentum,
        );
        let size = spec.image_size as i64;
        let batch = tc.batch_size.max(1) as i64;
        let images = Tensor::randn([batch, spec.in_channels, size, size], (Kind::Float, device));
        // Cached activations are computed in eval mode and kept in float32.
        let xs = tch::no_grad(|| model.run_stages(&images, 0, level, false));
        let ys = Tensor::randint(spec.num_classes, [batch], (Kind::Int64, device));
        Ok(Probe {
            _vs: vs,
            model,
            from,
            level,
            opt,
            xs,
            ys,
            precision,
            device,
            clip: tc.grad_clip,
        })
    }

    /// One training step as the epoch loop takes it: the input in the precision's layout,
    /// forward (frozen stages without gradients), cross-entropy, backward, update.
    fn step(&mut self) -> Result<()> {
        let xs = self.precision.input(self.xs.shallow_clone());
        let logits = self
            .precision
            .run(self.device, || {
                forward_from(self.model.as_ref(), &xs, self.level, self.from, true)
            })
            .to_kind(Kind::Float);
        let loss = logits.cross_entropy_for_logits(&self.ys);
        self.opt.backward_step(&loss, self.clip);
        Ok(())
    }
}
