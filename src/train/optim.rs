//! Optimizers whose state can be saved and restored, so an interrupted run resumes exactly:
//! AdamW, Adam (L2 weight decay), SGD (momentum, Nesterov) and RMSprop, with the update rules of
//! `torch.optim`. tch's own optimizers live in C++ and do not expose their state.
//!
//! AdamW, Adam and SGD update every parameter in libtorch's fused kernels (`_fused_adamw_`,
//! `_fused_adam_`, `_fused_sgd_`, reached through [`crate::torch_ext`]): one kernel per step on
//! CUDA instead of about ten per parameter, with no read of the device. RMSprop, which has no
//! fused kernel, runs torch.optim's single-tensor rule op by op. Gradient clipping is
//! multi-tensor too, and reads nothing back.

use std::path::Path;

use anyhow::{Context, Result};
use tch::{nn::VarStore, Kind, Tensor};

use crate::error::{Error, TorchResultExt};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Adam with decoupled weight decay (Loshchilov & Hutter).
    AdamW,
    /// Adam with L2 weight decay added to the gradient.
    Adam,
    /// SGD with momentum, Nesterov when asked.
    Sgd {
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// RMSprop (alpha 0.99), with momentum.
    RmsProp,
}

impl Rule {
    /// The rule `train.optimizer` names (with `train.nesterov` for SGD).
    pub fn from_config(tc: &crate::config::TrainConfig) -> Rule {
        use crate::config::OptimizerKind;
        match tc.optimizer {
            OptimizerKind::AdamW => Rule::AdamW,
            OptimizerKind::Adam => Rule::Adam,
            OptimizerKind::Sgd => Rule::Sgd {
                nesterov: tc.nesterov,
            },
            OptimizerKind::RmsProp => Rule::RmsProp,
        }
    }
}

/// An optimizer over the trainable variables of a VarStore.
pub struct Optimizer {
    rule: Rule,
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    params: Vec<(String, Tensor)>,
    /// First moments (Adam), momentum buffers (SGD, RMSprop), per parameter.
    first: Vec<Tensor>,
    /// Second moments (Adam), squared averages (RMSprop), per parameter.
    second: Vec<Tensor>,
    step: i64,
    /// The step count as the fused kernels read it (a float32 scalar on the parameters' device).
    step_tensor: Tensor,
    /// Whether AdamW/Adam/SGD use the fused kernels (always, but for tests of the equivalence).
    fused: bool,
}

/// Dynamic loss scale for float16 training (torch.cuda.amp.GradScaler's defaults).
#[derive(Debug, Clone)]
pub struct LossScaler {
    /// The current scale.
    pub scale: f64,
    good_steps: usize,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    fn overflowed(&mut self) {
        self.scale *= 0.5;
        self.good_steps = 0;
    }

    fn stepped(&mut self) {
        self.good_steps += 1;
        if self.good_steps == 2000 {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
    }
}

/// Divides every gradient by `scale` and says whether all were finite. On CUDA this is torch's
/// fused check-and-unscale kernel per gradient with a single device-to-host read at the end (a
/// read per gradient stalled the GPU once per parameter, 158 times a step for MobileNetV2).
fn unscale_all_finite(grads: Vec<Tensor>, scale: f64) -> bool {
    let Some(device) = grads.first().map(|g| g.device()) else {
        return true;
    };
    if device.is_cuda() {
        let mut found_inf = Tensor::zeros([1], (Kind::Float, device));
        let inv_scale = Tensor::from_slice(&[(1.0 / scale) as f32]).to_device(device);
        let fused = grads.into_iter().all(|mut g| {
            g.f_internal_amp_non_finite_check_and_unscale(&mut found_inf, &inv_scale)
                .is_ok()
        });
        if fused {
            return found_inf.double_value(&[0]) == 0.0;
        }
        // Not reached with libtorch's CUDA build; the gradients were not all unscaled, so
        // report an overflow: the step is skipped and the next one recomputes them.
        return false;
    }
    // On the CPU a read per gradient costs nothing.
    let finite = grads
        .iter()
        .all(|g| g.isfinite().all().int64_value(&[]) == 1);
    if finite {
        for mut g in grads {
            let _ = g.g_mul_scalar_(1.0 / scale);
        }
    }
    finite
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;
const RMS_ALPHA: f64 = 0.99;

impl Optimizer {
    /// An optimizer for every trainable variable of `vs` (frozen ones are skipped at each
    /// step while they have no gradient).
    pub fn new(vs: &VarStore, rule: Rule, lr: f64, weight_decay: f64, momentum: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(name, t)| t.is_floating_point() && !name.contains("running_"))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &Tensor| p.zeros_like().detach();
        let first = params.iter().map(|(_, p)| zeros(p)).collect();
        let second = params.iter().map(|(_, p)| zeros(p)).collect();
        let device = params.first().map_or(tch::Device::Cpu, |(_, p)| p.device());
        Optimizer {
            rule,
            lr,
            weight_decay,
            momentum,
            params,
            first,
            second,
            step: 0,
            step_tensor: Tensor::zeros([], (Kind::Float, device)),
            fused: true,
        }
    }

    /// Turns the fused kernels off (the op-by-op rule instead), to compare the two.
    #[cfg(test)]
    fn unfused(mut self) -> Self {
        self.fused = false;
        self
    }

    /// Sets the learning rate for the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// The gradients of the parameters that have one (frozen ones have none).
    fn gradients(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// Scales gradients so their global L2 norm is at most `max_norm` (on the device, without
    /// reading it back).
    pub fn clip_grad_norm(&mut self, max_norm: f64) {
        let grads = self.gradients();
        let refs: Vec<&Tensor> = grads.iter().collect();
        if !refs.is_empty() {
            let _ = crate::torch_ext::clip_grad_norm(&refs, max_norm)
                .expect("clipping float gradients of one device");
        }
    }

    /// Backward pass of `loss`, optional clipping, one update.
    pub fn backward_step(&mut self, loss: &Tensor, clip: f64) {
        self.zero_grad();
        loss.backward();
        if clip > 0.0 {
            self.clip_grad_norm(clip);
        }
        self.step();
    }

    /// Mixed-precision step: backward of `loss * scaler.scale`, gradients unscaled, and the
    /// update skipped (with the scale halved) when any gradient overflowed, as torch's
    /// GradScaler does. Returns whether the update was applied.
    pub fn backward_step_scaled(
        &mut self,
        loss: &Tensor,
        clip: f64,
        scaler: &mut LossScaler,
    ) -> bool {
        self.zero_grad();
        (loss * scaler.scale).backward();
        let grads = self.gradients();
        if !unscale_all_finite(grads, scaler.scale) {
            scaler.overflowed();
            return false;
        }
        if clip > 0.0 {
            self.clip_grad_norm(clip);
        }
        self.step();
        scaler.stepped();
        true
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) {
        self.step += 1;
        if self.fused && self.rule != Rule::RmsProp {
            self.fused_step();
            return;
        }
        let t = self.step as f64;
        let (lr, wd, mom) = (self.lr, self.weight_decay, self.momentum);
        tch::no_grad(|| {
            for ((_, p), (m, v)) in self
                .params
                .iter_mut()
                .zip(self.first.iter_mut().zip(self.second.iter_mut()))
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                match self.rule {
                    Rule::AdamW | Rule::Adam => {
                        let g = if self.rule == Rule::Adam && wd != 0.0 {
                            &g + &*p * wd
                        } else {
                            g
                        };
                        if self.rule == Rule::AdamW && wd != 0.0 {
                            let _ = p.g_mul_scalar_(1.0 - lr * wd);
                        }
                        // torch.optim's single-tensor update, op for op where tch has the
                        // op (lerp_, addcmul_, addcdiv_): 10 kernels a parameter, not 14.
                        let _ = m.lerp_(&g, 1.0 - BETA1);
                        let _ = v.g_mul_scalar_(BETA2).addcmul_(&g, &(&g * (1.0 - BETA2)));
                        let bias1 = 1.0 - BETA1.powf(t);
                        let bias2 = 1.0 - BETA2.powf(t);
                        let denom = v.sqrt().g_div_scalar_(bias2.sqrt()).g_add_scalar_(EPS);
                        let _ = p.addcdiv_(&(&*m * (-lr / bias1)), &denom);
                    }
                    Rule::Sgd { nesterov } => {
                        let g = if wd != 0.0 { &g + &*p * wd } else { g };
                        let update = if mom != 0.0 {
                            if self.step == 1 {
                                m.copy_(&g);
                            } else {
                                let _ = m.g_mul_scalar_(mom).g_add_(&g);
                            }
                            if nesterov {
                                &g + &*m * mom
                            } else {
                                m.shallow_clone()
                            }
                        } else {
                            g
                        };
                        let _ = p.g_sub_(&(update * lr));
                    }
                    Rule::RmsProp => {
                        let g = if wd != 0.0 { &g + &*p * wd } else { g };
                        let _ = v
                            .g_mul_scalar_(RMS_ALPHA)
                            .g_add_(&(g.square() * (1.0 - RMS_ALPHA)));
                        let avg = v.sqrt().g_add_scalar_(EPS);
                        if mom > 0.0 {
                            let _ = m.g_mul_scalar_(mom).g_add_(&(&g / &avg));
                            let _ = p.g_sub_(&(&*m * lr));
                        } else {
                            let _ = p.g_sub_(&(&g / &avg * lr));
                        }
                    }
                }
            }
        });
    }

    /// [`Optimizer::step`] for AdamW, Adam and SGD in libtorch's fused kernels, over the
    /// parameters that have a gradient.
    fn fused_step(&mut self) {
        let (mut p, mut g, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((_, param), (first, second)) in self
            .params
            .iter()
            .zip(self.first.iter().zip(self.second.iter()))
        {
            let grad = param.grad();
            if grad.defined() {
                p.push(param);
                g.push(grad);
                m.push(first);
                v.push(second);
            }
        }
        let g: Vec<&Tensor> = g.iter().collect();
        let result = tch::no_grad(|| match self.rule {
            Rule::AdamW | Rule::Adam => {
                let _ = self.step_tensor.fill_(self.step as f64);
                let steps = vec![&self.step_tensor; p.len()];
                crate::torch_ext::fused_adam(
                    &p,
                    &g,
                    &m,
                    &v,
                    &steps,
                    self.lr,
                    (BETA1, BETA2),
                    self.weight_decay,
                    EPS,
                    self.rule == Rule::AdamW,
                )
            }
            Rule::Sgd { nesterov } => crate::torch_ext::fused_sgd(
                &p,
                &g,
                &m,
                self.lr,
                self.weight_decay,
                self.momentum,
                nesterov,
                self.step == 1,
            ),
            Rule::RmsProp => unreachable!("RMSprop has no fused kernel"),
        });
        // The lists are built from this optimizer's own float parameters on one device, which
        // is all the kernels ask.
        result.expect("fused optimizer step");
    }

    /// Saves the optimizer state (moments, step count, the epoch it belongs to) as safetensors.
    pub fn save(&self, path: &Path, epoch: usize) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for ((name, _), (m, v)) in self.params.iter().zip(self.first.iter().zip(&self.second)) {
            named.push((format!("first.{name}"), m.contiguous()));
            named.push((format!("second.{name}"), v.contiguous()));
        }
        named.push(("step".into(), Tensor::from_slice(&[self.step])));
        named.push(("epoch".into(), Tensor::from_slice(&[epoch as i64])));
        crate::fsutil::write_with(path, |tmp| {
            Tensor::write_safetensors(&named, tmp)
                .torch()
                .with_context(|| format!("cannot write {}", tmp.display()))
        })
    }

    /// Restores the state saved by [`Optimizer::save`]; returns the epoch it was saved at.
    pub fn load(&mut self, path: &Path) -> Result<usize> {
        let tensors = Tensor::read_safetensors(path)
            .torch()
            .with_context(|| format!("cannot read optimizer state {}", path.display()))?;
        let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        let get = |key: &str| {
            map.get(key).ok_or_else(|| {
                Error::usage(format!(
                    "{}: no `{key}` in the optimizer state",
                    path.display()
                ))
            })
        };
        tch::no_grad(|| -> Result<()> {
            for (i, (name, _)) in self.params.iter().enumerate() {
                self.first[i].copy_(get(&format!("first.{name}"))?);
                self.second[i].copy_(get(&format!("second.{name}"))?);
            }
            Ok(())
        })?;
        self.step = get("step")?.int64_value(&[0]);
        Ok(get("epoch")?.int64_value(&[0]) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    /// One AdamW step on f(w) = sum(w^2) from w = [1, -2], lr 0.1, wd 0.01, computed by hand
    /// (and by torch.optim.AdamW): the first step moves each weight by lr * sign(grad) after
    /// decay: w * (1 - lr * wd) - lr * g / (|g| + eps).
    #[test]
    fn adamw_first_step_matches_torch() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut opt = Optimizer::new(&vs, Rule::AdamW, 0.1, 0.01, 0.0);
        let loss = w.square().sum(Kind::Float);
        opt.backward_step(&loss, 0.0);
        let got: Vec<f32> = Vec::try_from(&w).unwrap();
        let expect = [1.0 * (1.0 - 0.001) - 0.1, -2.0 * (1.0 - 0.001) + 0.1];
        for (a, b) in got.iter().zip(expect) {
            assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {expect:?}");
        }
    }

    #[test]
    fn sgd_momentum_matches_torch_rule() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32]));
        let mut opt = Optimizer::new(&vs, Rule::Sgd { nesterov: false }, 0.1, 0.0, 0.9);
        // f = w^2: g = 2w. Step 1: b = g = 2, w = 1 - 0.2 = 0.8.
        // Step 2: g = 1.6, b = 0.9 * 2 + 1.6 = 3.4, w = 0.8 - 0.34 = 0.46.
        for _ in 0..2 {
            let loss = w.square().sum(Kind::Float);
            opt.backward_step(&loss, 0.0);
        }
        assert!((w.double_value(&[0]) - 0.46).abs() < 1e-6);
    }

    #[test]
    fn overflowing_step_is_skipped_and_the_scale_halves() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32]));
        let mut opt = Optimizer::new(&vs, Rule::Sgd { nesterov: false }, 0.1, 0.0, 0.0);
        let mut scaler = LossScaler::default();
        // float32 overflows at 3.4e38: a loss of 1e36 times 65536 does.
        let huge = (&w * 1e36f64).sum(Kind::Float);
        assert!(!opt.backward_step_scaled(&huge, 0.0, &mut scaler));
        assert_eq!(scaler.scale, 32768.0);
        assert_eq!(w.double_value(&[0]), 1.0);
        // A normal loss: gradients are unscaled before the update (w -= 0.1 * 2w).
        let loss = w.square().sum(Kind::Float);
        assert!(opt.backward_step_scaled(&loss, 0.0, &mut scaler));
        assert!((w.double_value(&[0]) - 0.8).abs() < 1e-6);
    }

    /// The fused kernels follow the op-by-op rules: four steps on a small quadratic with a
    /// frozen parameter, weight decay, momentum and clipping agree within float rounding.
    #[test]
    fn fused_steps_match_the_single_tensor_rules() {
        let rules = [
            (Rule::AdamW, 0.01, 0.0),
            (Rule::Adam, 0.01, 0.0),
            (Rule::Sgd { nesterov: false }, 0.01, 0.9),
            (Rule::Sgd { nesterov: true }, 0.0, 0.9),
            (Rule::Sgd { nesterov: false }, 0.0, 0.0),
        ];
        for (rule, wd, mom) in rules {
            let run = |fused: bool| {
                tch::manual_seed(3);
                let vs = nn::VarStore::new(Device::Cpu);
                let w = vs.root().var(
                    "w",
                    &[4, 3],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                );
                let b = vs.root().var(
                    "b",
                    &[3],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                );
                let frozen = vs.root().var("frozen", &[2], nn::Init::Const(1.0));
                let mut opt = Optimizer::new(&vs, rule, 0.05, wd, mom);
                if !fused {
                    opt = opt.unfused();
                }
                let x = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]).view([1, 4]);
                for _ in 0..4 {
                    let loss = (x.matmul(&w) + &b).square().sum(Kind::Float);
                    opt.backward_step(&loss, 5.0);
                }
                let all = Tensor::cat(&[w.view([-1]), b, frozen], 0);
                Vec::<f32>::try_from(&all).unwrap()
            };
            let (fused, plain) = (run(true), run(false));
            for (a, b) in fused.iter().zip(&plain) {
                assert!((a - b).abs() < 1e-5, "{rule:?}: {fused:?} vs {plain:?}");
            }
            assert_eq!(
                &fused[15..],
                &[1.0, 1.0],
                "{rule:?} moved a parameter without gradient"
            );
        }
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32, 3.0]));
        let mut opt = Optimizer::new(&vs, Rule::AdamW, 0.1, 0.0, 0.0);
        opt.backward_step(&w.square().sum(Kind::Float), 0.0);
        opt.save(&dir.path().join("o.safetensors"), 7).unwrap();
        let mut again = Optimizer::new(&vs, Rule::AdamW, 0.1, 0.0, 0.0);
        assert_eq!(again.load(&dir.path().join("o.safetensors")).unwrap(), 7);
        assert_eq!(again.step, 1);
        let a: Vec<f32> = Vec::try_from(&opt.second[0]).unwrap();
        let b: Vec<f32> = Vec::try_from(&again.second[0]).unwrap();
        assert_eq!(a, b);
    }
}
