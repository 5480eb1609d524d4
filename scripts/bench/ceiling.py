"""The machine's compute ceiling for training: measured float32 GEMM GFLOP/s (torch.mm through
the same libtorch 2.11 build xray links), the FLOPs of one training step per image for each
architecture at 224 px (the forward pass counted by torch.utils.flop_counter, times 3: the
backward pass costs about twice the forward; the counter's own backward count ignores groups
and overcounts MobileNetV2's depthwise convolutions twentyfold), and the step alone on random
tensors (no decoding, no augmentation) in images per second.

    python ceiling.py ARCH...
Prints `gemm_gflops=N gemm_bf16_gflops=N` (the bfloat16 GEMM: fast only where the CPU has
AVX512-BF16 or AMX) then, per ARCH, `ARCH gflop_per_img=N ceiling_img_s=N step_img_s=N`.
"""
import os
import sys
import time

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def gemm_gflops(n=2048, reps=10, dtype=torch.float32):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / median(times) / 1e9


def step(model, opt, xs, ys):
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(xs), ys).backward()
    opt.step()


def main():
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    gflops = gemm_gflops()
    bf16 = gemm_gflops(n=1024, reps=3, dtype=torch.bfloat16)
    print(f"gemm_gflops={gflops:.1f} gemm_bf16_gflops={bf16:.1f}", flush=True)
    batch = 32
    for arch in sys.argv[1:]:
        model = getattr(torchvision.models, arch)(num_classes=2).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        xs, ys = torch.randn(batch, 3, 224, 224), torch.randint(0, 2, (batch,))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(xs)
        per_img = 3 * counter.get_total_flops() / batch / 1e9
        step(model, opt, xs, ys)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            step(model, opt, xs, ys)
            times.append(time.perf_counter() - start)
        print(f"{arch} gflop_per_img={per_img:.2f} ceiling_img_s={gflops / per_img:.1f} "
              f"step_img_s={batch / median(times):.1f}", flush=True)


if __name__ == "__main__":
    main()
