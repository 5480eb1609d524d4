//! What libtorch has and tch 0.24 does not expose, through the C++ shim in `shim.cpp` (built by
//! `build.rs` against the same libtorch): autocast on the CPU and bfloat16 autocast on CUDA,
//! the fused AdamW/Adam/SGD kernels, multi-tensor gradient clipping, channels-last tensors and
//! parameters, hardtanh with its bounds, and whether the CPU computes in bfloat16 ([`auto_precision`]: whether it pays).
//!
//! Each call returns libtorch's error as an [`anyhow::Error`] instead of aborting.

pub mod auto_precision;
pub mod cuda;

use std::ffi::{c_char, CStr};

use anyhow::{bail, Result};
use tch::{Device, Tensor};

/// tch's opaque tensor handle (an `at::Tensor*` on the C++ side).
type CTensor = *mut torch_sys::C_tensor;

extern "C" {
    fn xray_free(message: *mut c_char);
    fn xray_cpu_has_bf16() -> bool;
    fn xray_autocast_enter(cuda: i32, bf16: bool, was: *mut bool) -> *mut c_char;
    fn xray_autocast_exit(cuda: i32, was: bool) -> *mut c_char;
    fn xray_autocast_enabled(cuda: i32) -> bool;
    fn xray_fused_adam(
        params: *const CTensor,
        grads: *const CTensor,
        exp_avgs: *const CTensor,
        exp_avg_sqs: *const CTensor,
        steps: *const CTensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: bool,
    ) -> *mut c_char;
    fn xray_fused_sgd(
        params: *const CTensor,
        grads: *const CTensor,
        momentum_buffers: *const CTensor,
        n: usize,
        lr: f64,
        weight_decay: f64,
        momentum: f64,
        nesterov: bool,
        first_step: bool,
    ) -> *mut c_char;
    fn xray_clip_grad_norm(
        grads: *const CTensor,
        n: usize,
        max_norm: f64,
        total: *mut CTensor,
    ) -> *mut c_char;
    fn xray_channels_last_(t: CTensor) -> *mut c_char;
    fn xray_channels_last(t: CTensor, out: *mut CTensor) -> *mut c_char;
    fn xray_is_channels_last(t: CTensor) -> bool;
    fn xray_hardtanh_(t: CTensor, lo: f64, hi: f64) -> *mut c_char;
}

/// Turns the shim's return value into a result, freeing the message.
fn check(message: *mut c_char) -> Result<()> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the shim.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { xray_free(message) };
    bail!(
        "libtorch: {}",
        text.lines().next().unwrap_or("unknown error")
    )
}

/// The shim mutates tensors through shared handles, as libtorch's own in-place ops do.
fn handle(t: &Tensor) -> CTensor {
    t.as_ptr() as CTensor
}

fn handles(ts: &[&Tensor]) -> Vec<CTensor> {
    ts.iter().map(|t| handle(t)).collect()
}

/// Whether this CPU runs bfloat16 arithmetic in hardware (AVX512-BF16 or AMX-BF16, as
/// libtorch's cpuinfo reads them); AMX is enabled for the process when present. Read once.
pub fn cpu_has_bf16() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: no arguments; the shim catches every exception.
    *HAS.get_or_init(|| unsafe { xray_cpu_has_bf16() })
}

/// The lower precision of an autocast region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autocast {
    /// bfloat16 (CPU or CUDA): no loss scaling needed.
    BFloat16,
    /// float16 (CUDA only): needs a loss scale.
    Float16,
}

/// Runs `f` with autocast on `device` in `precision`: matrix products and convolutions in the
/// lower precision, reductions, softmax and losses in float32, as `torch.autocast` does. `None`
/// runs `f` as it is.
pub fn autocast<T>(
    device: Device,
    precision: Option<Autocast>,
    f: impl FnOnce() -> T,
) -> Result<T> {
    let Some(precision) = precision else {
        return Ok(f());
    };
    let cuda = i32::from(device.is_cuda());
    let mut was = false;
    // SAFETY: plain values and a pointer to a local bool.
    check(unsafe { xray_autocast_enter(cuda, precision == Autocast::BFloat16, &mut was) })?;
    struct Exit(i32, bool);
    impl Drop for Exit {
        fn drop(&mut self) {
            // SAFETY: plain values; an error here (none is known) leaves autocast as it was.
            let _ = check(unsafe { xray_autocast_exit(self.0, self.1) });
        }
    }
    let _exit = Exit(cuda, was);
    Ok(f())
}

/// Whether an [`autocast`] region for `device`'s kind (CPU or CUDA) is open on this thread.
pub fn autocast_enabled(device: Device) -> bool {
    // SAFETY: a plain value in, a bool out; the shim catches every exception.
    unsafe { xray_autocast_enabled(i32::from(device.is_cuda())) }
}

/// One fused AdamW (`decoupled`) or Adam (L2 decay) update of every parameter, its first and
/// second moments and step count (`steps`, float32 scalars on the parameters' device, already
/// incremented for this step): libtorch's `_fused_adamw_`/`_fused_adam_`, a single kernel per
/// group on CUDA and one parallel loop on the CPU.
#[allow(clippy::too_many_arguments)]
pub fn fused_adam(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    steps: &[&Tensor],
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
    decoupled: bool,
) -> Result<()> {
    let n = params.len();
    assert!([grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()] == [n; 4]);
    if n == 0 {
        return Ok(());
    }
    let (p, g, m, v, s) = (
        handles(params),
        handles(grads),
        handles(exp_avgs),
        handles(exp_avg_sqs),
        handles(steps),
    );
    // SAFETY: five arrays of n live tensor handles, borrowed for the call.
    check(unsafe {
        xray_fused_adam(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            lr,
            betas.0,
            betas.1,
            weight_decay,
            eps,
            decoupled,
        )
    })
}

/// One fused SGD update (momentum buffers used when `momentum` is not 0; on the first step they
/// are set to the gradient, as torch.optim does).
#[allow(clippy::too_many_arguments)]
pub fn fused_sgd(
    params: &[&Tensor],
    grads: &[&Tensor],
    momentum_buffers: &[&Tensor],
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    nesterov: bool,
    first_step: bool,
) -> Result<()> {
    let n = params.len();
    assert!(grads.len() == n && (momentum == 0.0 || momentum_buffers.len() == n));
    if n == 0 {
        return Ok(());
    }
    let (p, g, b) = (handles(params), handles(grads), handles(momentum_buffers));
    // SAFETY: arrays of n live tensor handles, borrowed for the call.
    check(unsafe {
        xray_fused_sgd(
            p.as_ptr(),
            g.as_ptr(),
            b.as_ptr(),
            n,
            lr,
            weight_decay,
            momentum,
            nesterov,
            first_step,
        )
    })
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm`, on the device
/// and without reading it back; returns the norm before clipping (a scalar tensor).
pub fn clip_grad_norm(grads: &[&Tensor], max_norm: f64) -> Result<Tensor> {
    let g = handles(grads);
    let mut total: CTensor = std::ptr::null_mut();
    // SAFETY: an array of live handles; `total` receives a new tensor owned by the Tensor below.
    check(unsafe { xray_clip_grad_norm(g.as_ptr(), g.len(), max_norm, &mut total) })?;
    Ok(unsafe { Tensor::from_ptr(total) })
}

/// Makes a 4-d tensor channels-last in place (for a parameter: its data), leaving others as
/// they are.
pub fn make_channels_last(t: &Tensor) -> Result<()> {
    // SAFETY: a live tensor handle.
    check(unsafe { xray_channels_last_(handle(t)) })
}

/// A channels-last version of a 4-d tensor (the tensor itself when it already is one).
pub fn channels_last(t: &Tensor) -> Result<Tensor> {
    let mut out: CTensor = std::ptr::null_mut();
    // SAFETY: a live handle; `out` receives a new tensor owned by the Tensor below.
    check(unsafe { xray_channels_last(handle(t), &mut out) })?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Clamps `t` to `[lo, hi]` in place as libtorch's `hardtanh_` (tch 0.24 binds it only with its
/// default bounds). Its backward pass reads the output, not the input, in one vectorised
/// kernel: `clamp_`'s keeps a copy of the input and runs three scalar kernels, a quarter of a
/// bfloat16 MobileNetV2 training step.
pub fn hardtanh_(t: &Tensor, lo: f64, hi: f64) -> Result<()> {
    // SAFETY: a live tensor handle.
    check(unsafe { xray_hardtanh_(handle(t), lo, hi) })
}

/// Whether a tensor is a 4-d tensor laid out channels-last.
pub fn is_channels_last(t: &Tensor) -> bool {
    // SAFETY: a live tensor handle; the shim only reads it.
    unsafe { xray_is_channels_last(handle(t)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn cpu_autocast_runs_matmul_in_bf16_and_restores() {
        let a = Tensor::randn([8, 8], (Kind::Float, Device::Cpu));
        assert!(!autocast_enabled(Device::Cpu));
        let (inside, on) = autocast(Device::Cpu, Some(Autocast::BFloat16), || {
            (a.matmul(&a), autocast_enabled(Device::Cpu))
        })
        .unwrap();
        assert!(on && !autocast_enabled(Device::Cpu));
        assert_eq!(inside.kind(), Kind::BFloat16);
        // Reductions stay float32 under autocast; outside it matmul is float32 again.
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
        let none = autocast(Device::Cpu, None, || a.matmul(&a)).unwrap();
        assert_eq!(none.kind(), Kind::Float);
        let diff = (inside.to_kind(Kind::Float) - a.matmul(&a)).abs().max();
        assert!(diff.double_value(&[]) < 0.1, "bf16 matmul off by {diff}");
    }

    #[test]
    fn hardtanh_clamps_in_place_and_passes_gradient_inside_only() {
        for kind in [Kind::Float, Kind::BFloat16] {
            let x = Tensor::from_slice(&[-1.0f32, 0.5, 3.0, 7.0])
                .to_kind(kind)
                .set_requires_grad(true);
            // In place on a non-leaf, as a network's ReLU6 after its batch norm.
            let h = &x * 1.0;
            hardtanh_(&h, 0.0, 6.0).unwrap();
            let got: Vec<f32> = Vec::try_from(h.to_kind(Kind::Float)).unwrap();
            assert_eq!(got, [0.0, 0.5, 3.0, 6.0]);
            (h.to_kind(Kind::Float) * Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]))
                .sum(Kind::Float)
                .backward();
            let grad: Vec<f32> = Vec::try_from(x.grad().to_kind(Kind::Float)).unwrap();
            assert_eq!(grad, [0.0, 2.0, 3.0, 0.0], "{kind:?}");
        }
    }

    #[test]
    fn clip_scales_to_the_norm_without_reading() {
        let a = Tensor::from_slice(&[3.0f32, 0.0]);
        let b = Tensor::from_slice(&[4.0f32]);
        let total = clip_grad_norm(&[&a, &b], 1.0).unwrap();
        assert!((total.double_value(&[]) - 5.0).abs() < 1e-5);
        assert!((a.double_value(&[0]) - 0.6).abs() < 1e-5);
        assert!((b.double_value(&[0]) - 0.8).abs() < 1e-5);
        // Under the limit nothing changes.
        let c = Tensor::from_slice(&[0.3f32]);
        let _ = clip_grad_norm(&[&c], 1.0).unwrap();
        assert!((c.double_value(&[0]) - 0.3).abs() < 1e-6);
    }

    #[test]
    fn channels_last_keeps_values_and_changes_strides() {
        let t = Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, Device::Cpu)).view([2, 3, 4, 5]);
        let cl = channels_last(&t).unwrap();
        assert!(is_channels_last(&cl) && !is_channels_last(&t));
        assert_eq!(cl.stride(), vec![60, 1, 15, 3]);
        assert!(cl.equal(&t));
        make_channels_last(&t).unwrap();
        assert!(is_channels_last(&t));
    }

    #[test]
    fn errors_come_back_as_results() {
        // Integer parameters are refused by libtorch; the message arrives, nothing aborts.
        let p = Tensor::zeros([2], (Kind::Int64, Device::Cpu));
        let g = Tensor::zeros([2], (Kind::Int64, Device::Cpu));
        let s = Tensor::zeros([], (Kind::Float, Device::Cpu));
        let err = fused_adam(
            &[&p],
            &[&g],
            &[&p],
            &[&p],
            &[&s],
            0.1,
            (0.9, 0.999),
            0.0,
            1e-8,
            true,
        );
        let message = err.unwrap_err().to_string();
        assert!(message.starts_with("libtorch: "), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}
