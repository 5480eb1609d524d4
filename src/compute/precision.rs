//! How a network computes: float32, bfloat16 autocast, or float16 autocast on CUDA, and
//! whether its tensors are channels-last. [`Precision::resolve`] turns the configured choice
//! into one of these for a device; training, evaluation and prediction run their forward
//! passes through [`Precision::run`].
//!
//! bfloat16 pays only where the hardware computes it: on a CPU without AVX512-BF16 or AMX
//! libtorch emulates it, and a ResNet18 training step ran 12x slower than float32 (PyTorch 2.11,
//! AMD EPYC with AVX2 only; BENCHMARKS.md), so `auto` keeps float32 there. Where it has the
//! instructions, `auto` times both ([`crate::torch_ext::auto_precision`]).

use anyhow::Result;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::config::PrecisionChoice;
use crate::torch_ext::auto_precision::AutoChoice;
use crate::torch_ext::{self, Autocast};

/// The arithmetic a run uses on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// The autocast region's lower precision, or `None` for float32 throughout.
    pub autocast: Option<Autocast>,
    /// Weights and inputs channels-last (what oneDNN and cuDNN convolve fastest in reduced
    /// precision).
    pub channels_last: bool,
}

impl Precision {
    /// float32, the tensors as they are.
    pub const FP32: Precision = Precision {
        autocast: None,
        channels_last: false,
    };

    /// bfloat16 autocast, channels-last.
    pub const BF16: Precision = Precision {
        autocast: Some(Autocast::BFloat16),
        channels_last: true,
    };

    /// Whether `auto` on `device` has to time both precisions to choose: on a CPU with
    /// bfloat16 instructions, where bf16 is faster for some networks and slower for others
    /// ([`crate::torch_ext::auto_precision`]).
    pub fn auto_measures(choice: PrecisionChoice, device: Device) -> bool {
        choice == PrecisionChoice::Auto && !device.is_cuda() && torch_ext::cpu_has_bf16()
    }

    /// What `auto`'s measurement chose, as the choice it stands for: `bf16` or `fp32`.
    pub fn measured_choice(measured: &AutoChoice) -> PrecisionChoice {
        if measured.bf16() {
            PrecisionChoice::Bf16
        } else {
            PrecisionChoice::Fp32
        }
    }

    /// The precision `choice` means on `device`; `amp` is `train.amp` (float16 on CUDA).
    /// `auto` is float16 on CUDA with `amp`, bfloat16 (the candidate that callers time against
    /// float32 where [`Precision::auto_measures`]) on a CPU with bfloat16 instructions, and
    /// float32 otherwise. bf16 and float16 run channels-last.
    pub fn resolve(choice: PrecisionChoice, device: Device, amp: bool) -> Precision {
        const FP16: Precision = Precision {
            autocast: Some(Autocast::Float16),
            channels_last: true,
        };
        match choice {
            PrecisionChoice::Fp32 if device.is_cuda() && amp => FP16,
            PrecisionChoice::Fp32 => Precision::FP32,
            PrecisionChoice::Bf16 => Precision::BF16,
            PrecisionChoice::Auto if device.is_cuda() && amp => FP16,
            PrecisionChoice::Auto if !device.is_cuda() && torch_ext::cpu_has_bf16() => {
                Precision::BF16
            }
            PrecisionChoice::Auto => Precision::FP32,
        }
    }

    /// The precision `choice` means for inference (prediction, evaluation, serving) on `device`:
    /// [`Precision::resolve`] without `train.amp`, and float32 on the CPU channels-last too,
    /// where oneDNN convolves without reordering (with batch norm folded, MobileNetV2 inference
    /// ran about twice as fast as in NCHW; BENCHMARKS.md).
    pub fn for_inference(choice: PrecisionChoice, device: Device) -> Precision {
        let p = Precision::resolve(choice, device, false);
        Precision {
            channels_last: p.channels_last || !device.is_cuda(),
            ..p
        }
    }

    /// The word model.json, logs and reports use: "fp32", "bf16" or "fp16".
    pub fn label(&self) -> &'static str {
        match self.autocast {
            None => "fp32",
            Some(Autocast::BFloat16) => "bf16",
            Some(Autocast::Float16) => "fp16",
        }
    }

    /// Whether float16 gradients need a loss scale.
    pub fn needs_loss_scale(&self) -> bool {
        self.autocast == Some(Autocast::Float16)
    }

    /// Runs `f` (a forward pass) in this precision on `device`. Panics only if libtorch refuses
    /// to enter autocast, which it does not for the CPU or CUDA.
    pub fn run<T>(&self, device: Device, f: impl FnOnce() -> T) -> T {
        torch_ext::autocast(device, self.autocast, f).expect("entering autocast")
    }

    /// The network's input in this precision's layout.
    pub fn input(&self, xs: Tensor) -> Tensor {
        if self.channels_last {
            torch_ext::channels_last(&xs).unwrap_or(xs)
        } else {
            xs
        }
    }

    /// Lays the 4-d weights of `vs` out channels-last when this precision asks (values are
    /// unchanged; saved weights are made contiguous again by [`crate::run::save_weights`]).
    pub fn prepare_weights(&self, vs: &VarStore) -> Result<()> {
        if self.channels_last {
            tch::no_grad(|| -> Result<()> {
                for (_, v) in vs.variables() {
                    torch_ext::make_channels_last(&v)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// Float32 version of a forward pass's output (autocast leaves some outputs in bfloat16).
pub fn to_f32(t: Tensor) -> Tensor {
    if t.kind() == Kind::Float {
        t
    } else {
        t.to_kind(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_resolve_per_device() {
        let cpu = Device::Cpu;
        assert_eq!(
            Precision::resolve(PrecisionChoice::Fp32, cpu, true),
            Precision::FP32
        );
        let bf16 = Precision::resolve(PrecisionChoice::Bf16, cpu, false);
        assert_eq!((bf16.label(), bf16.channels_last), ("bf16", true));
        assert_eq!(bf16, Precision::BF16);
        // auto times both only on a CPU that has the instructions.
        assert_eq!(
            Precision::auto_measures(PrecisionChoice::Auto, cpu),
            torch_ext::cpu_has_bf16()
        );
        assert!(!Precision::auto_measures(PrecisionChoice::Bf16, cpu));
        assert!(!Precision::auto_measures(
            PrecisionChoice::Auto,
            Device::Cuda(0)
        ));
        let auto = Precision::resolve(PrecisionChoice::Auto, cpu, false);
        let expect = if torch_ext::cpu_has_bf16() {
            "bf16"
        } else {
            "fp32"
        };
        assert_eq!(auto.label(), expect);
        let cuda = Device::Cuda(0);
        assert_eq!(
            Precision::resolve(PrecisionChoice::Auto, cuda, true).label(),
            "fp16"
        );
        assert_eq!(
            Precision::resolve(PrecisionChoice::Auto, cuda, false).label(),
            "fp32"
        );
        assert!(Precision::resolve(PrecisionChoice::Fp32, cuda, true).needs_loss_scale());
        assert_eq!(
            Precision::resolve(PrecisionChoice::Bf16, cuda, true).label(),
            "bf16"
        );
        // Inference: float32 on the CPU is channels-last; CUDA inference has no loss scale to
        // keep, so `train.amp` plays no part.
        let cpu_infer = Precision::for_inference(PrecisionChoice::Fp32, cpu);
        assert_eq!((cpu_infer.label(), cpu_infer.channels_last), ("fp32", true));
        assert_eq!(
            Precision::for_inference(PrecisionChoice::Fp32, cuda),
            Precision::FP32
        );
        assert_eq!(
            Precision::for_inference(PrecisionChoice::Bf16, cpu),
            Precision::resolve(PrecisionChoice::Bf16, cpu, false)
        );
    }
}
