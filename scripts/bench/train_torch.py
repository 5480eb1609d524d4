"""The PyTorch/torchvision training loop xray's is compared with: the same files, transforms
(RandomResizedCrop 224 scale 0.8-1, flip, rotation 10, brightness/contrast 0.2, normalise),
batch 32, AdamW lr 1e-3, cross-entropy, a DataLoader with one worker per core, the model
from scratch.

    python train_torch.py FILE_LIST ARCH EPOCHS

FILE_LIST: `path<TAB>label` lines. Prints `torch_train_img_per_s=N` per epoch (decode, augment,
forward, backward, step: the whole epoch's wall time).

BENCH_PRECISION=bf16: PyTorch's best CPU recipe, bfloat16 autocast with the model and inputs
channels-last (as xray's `train.precision = "bf16"`).

On a GPU (scripts/experiments/gpu_check.sh): BENCH_DEVICE=cuda, BENCH_AMP=1 (float16 autocast with a
GradScaler, as `train.amp`), BENCH_BATCH=N (default 32); the loader then pins memory.
"""
import os
import sys
import time

import torch
import torchvision
from torch.utils.data import DataLoader

from common import Files, train_transform


def main():
    rows = [(p, int(l)) for p, l in (line.rstrip("\n").split("\t") for line in open(sys.argv[1]))]
    arch, epochs = sys.argv[2], int(sys.argv[3])
    device = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
    amp = os.environ.get("BENCH_AMP") == "1" and device.type == "cuda"
    bf16 = os.environ.get("BENCH_PRECISION") == "bf16"
    layout = torch.channels_last if bf16 else torch.contiguous_format
    batch = int(os.environ.get("BENCH_BATCH", "32"))
    transform = train_transform()
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=2).to(device, memory_format=layout)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(enabled=amp)
    loader = DataLoader(Files(rows, transform), batch_size=batch, shuffle=True,
                        num_workers=os.cpu_count() or 1, persistent_workers=True,
                        pin_memory=device.type == "cuda")
    for _ in range(epochs):
        start = time.perf_counter()
        n = 0
        for xs, ys in loader:
            xs = xs.to(device, non_blocking=True, memory_format=layout)
            ys = ys.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16 if bf16 else torch.float16,
                                enabled=amp or bf16):
                loss = loss_fn(model(xs), ys)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            n += xs.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"torch_train_img_per_s={n / (time.perf_counter() - start):.2f}", flush=True)


if __name__ == "__main__":
    main()
