// The few libtorch entry points xray needs that tch 0.24 does not expose: CPU (and bfloat16
// CUDA) autocast, the fused AdamW/Adam/SGD kernels, multi-tensor gradient clipping, channels-last
// parameters, hardtanh with its bounds, and the CPU's bfloat16 capability. Compiled by build.rs against the same libtorch
// headers as tch's own torch-sys; the Rust side is src/torch_ext/mod.rs.
//
// Tensors cross as `at::Tensor*` (tch's C_tensor). Every function catches C++ exceptions and
// returns NULL on success or a malloc'd message that the caller frees with xray_free.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/cpu/Utils.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

char *copy_message(const char *what) {
  size_t n = std::strlen(what);
  char *out = static_cast<char *>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, what, n + 1);
  return out;
}

template <typename F>
char *guarded(F f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error &e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return copy_message(e.what());
  }
}

std::vector<at::Tensor> list(at::Tensor **ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; i++) out.push_back(*ts[i]);
  return out;
}

at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

}  // namespace

extern "C" {

void xray_free(char *message) { std::free(message); }

// Whether the CPU has bfloat16 arithmetic (AVX512-BF16 or AMX-BF16); enables AMX when present.
bool xray_cpu_has_bf16() {
  try {
    auto caps = at::cpu::get_cpu_capabilities();
    auto flag = [&](const char *key) {
      auto it = caps.find(key);
      return it != caps.end() && it->second.isBool() && it->second.toBool();
    };
    bool amx = flag("amx_bf16") && at::cpu::init_amx();
    return flag("avx512_bf16") || amx;
  } catch (...) {
    return false;
  }
}

// Enters autocast on the CPU (cuda = 0) or CUDA (cuda = 1) with `bf16` (else float16) as the
// lower precision; `*was` receives whether it was already enabled, for xray_autocast_exit.
char *xray_autocast_enter(int cuda, bool bf16, bool *was) {
  return guarded([&] {
    auto type = device_type(cuda);
    *was = at::autocast::is_autocast_enabled(type);
    at::autocast::set_autocast_enabled(type, true);
    at::autocast::set_autocast_dtype(type, bf16 ? at::kBFloat16 : at::kHalf);
    at::autocast::increment_nesting();
  });
}

// Leaves autocast, restoring the enabled state `was`; the cast cache is cleared when the
// outermost region ends, as torch.autocast does.
char *xray_autocast_exit(int cuda, bool was) {
  return guarded([&] {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_type(cuda), was);
  });
}

// Whether autocast is on for the CPU (cuda = 0) or CUDA (cuda = 1) on this thread.
bool xray_autocast_enabled(int cuda) {
  try {
    return at::autocast::is_autocast_enabled(device_type(cuda));
  } catch (...) {
    return false;
  }
}

// One AdamW (decoupled = true) or Adam (L2 weight decay) step over n parameters in libtorch's
// fused kernel. `steps` are float32 scalars on the parameters' device, already incremented.
char *xray_fused_adam(at::Tensor **params, at::Tensor **grads, at::Tensor **exp_avgs,
                      at::Tensor **exp_avg_sqs, at::Tensor **steps, size_t n, double lr,
                      double beta1, double beta2, double weight_decay, double eps,
                      bool decoupled) {
  return guarded([&] {
    auto p = list(params, n), g = list(grads, n), m = list(exp_avgs, n),
         v = list(exp_avg_sqs, n), s = list(steps, n);
    if (decoupled)
      at::_fused_adamw_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, false, false);
    else
      at::_fused_adam_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, false, false);
  });
}

// One SGD step (momentum, Nesterov, L2 weight decay) over n parameters in the fused kernel.
char *xray_fused_sgd(at::Tensor **params, at::Tensor **grads, at::Tensor **momentum_buffers,
                     size_t n, double lr, double weight_decay, double momentum, bool nesterov,
                     bool first_step) {
  return guarded([&] {
    auto p = list(params, n), g = list(grads, n);
    std::vector<at::Tensor> b;
    if (momentum != 0.0) b = list(momentum_buffers, n);
    at::_fused_sgd_(p, g, b, weight_decay, momentum, lr, 0.0, nesterov, false, first_step);
  });
}

// Scales n gradients so that their global L2 norm is at most max_norm, without reading the
// device (torch.nn.utils.clip_grad_norm_'s foreach path); `*total` receives the norm before
// clipping as a new tensor.
char *xray_clip_grad_norm(at::Tensor **grads, size_t n, double max_norm, at::Tensor **total) {
  return guarded([&] {
    auto g = list(grads, n);
    auto norms = at::_foreach_norm(g, 2);
    auto all = at::linalg_vector_norm(at::stack(norms), 2);
    auto coef = at::clamp_max(max_norm / (all + 1e-6), 1.0);
    at::_foreach_mul_(g, coef);
    *total = new at::Tensor(all);
  });
}

// Makes a 4-d tensor (a parameter included, in place of its data) channels-last.
char *xray_channels_last_(at::Tensor *t) {
  return guarded([&] {
    if (t->dim() == 4) t->set_data(t->contiguous(at::MemoryFormat::ChannelsLast));
  });
}

// A channels-last copy (or view) of a 4-d tensor.
char *xray_channels_last(at::Tensor *t, at::Tensor **out) {
  return guarded([&] {
    *out = new at::Tensor(t->dim() == 4 ? t->contiguous(at::MemoryFormat::ChannelsLast) : *t);
  });
}

// hardtanh in place, clamping to [lo, hi] (ReLU6 is [0, 6]). Unlike clamp_, whose backward
// needs the input (so autograd keeps a copy of it) and runs three unvectorised bfloat16 kernels
// (>=, <=, where), its backward works from the output in one vectorised kernel.
char *xray_hardtanh_(at::Tensor *t, double lo, double hi) {
  return guarded([&] { at::hardtanh_(*t, lo, hi); });
}

// Whether the tensor is laid out channels-last.
bool xray_is_channels_last(at::Tensor *t) {
  return t->dim() == 4 && t->is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // extern "C"
