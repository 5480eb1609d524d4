"""PyTorch with xray's device-side input pipeline written in torch: the files decoded once
(PIL, resized to 224 as xray resizes before augmenting) into one uint8 tensor on the device,
then every batch gathered and augmented there with batched tensor ops: random resized crop
(scale 0.8-1, ratio 3/4-4/3), horizontal flip, rotation 10 as one affine grid + grid_sample,
brightness/contrast 0.2, ImageNet normalisation. Model, batch, AdamW, loss and precision are
train_torch.py's (common.Recipe); the GPU row "PyTorch, same augmentation on the GPU" of the
benchmarks.

    python train_torch_gpu_aug.py FILE_LIST ARCH EPOCHS

Environment as train_torch.py: BENCH_DEVICE (cpu), BENCH_AMP=1 (float16 autocast + GradScaler),
BENCH_PRECISION=bf16, BENCH_BATCH (32). Prints `torch_gpu_aug_img_per_s=N` per epoch (gather,
augment, forward, backward, step; the decoding before the first epoch is not counted).
"""
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common import Recipe, file_rows

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def decode(rows, device, size=224):
    pixels = torch.empty((len(rows), 3, size, size), dtype=torch.uint8, device=device)
    for i, (path, _) in enumerate(rows):
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
        pixels[i] = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(device)
    return pixels


def augment(x, gen):
    """The batch's random transforms, drawn on the device: theta maps output to input in
    normalised coordinates, as xray's Transform::theta (no shift or zoom in these benchmarks)."""
    b, dev = x.shape[0], x.device
    u = lambda lo, hi: torch.empty(b, device=dev).uniform_(lo, hi, generator=gen)
    area = u(0.8, 1.0)
    ratio = torch.exp(u(math.log(3 / 4), math.log(4 / 3)))
    cw, ch = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    cx, cy = u(-1, 1) * (1 - cw), u(-1, 1) * (1 - ch)
    angle = u(-10, 10) * math.pi / 180
    flip = torch.where(u(0, 1) < 0.5, -1.0, 1.0)
    sin, cos = angle.sin(), angle.cos()
    theta = torch.stack([
        torch.stack([flip * cw * cos, flip * cw * sin, flip * cx], 1),
        torch.stack([-ch * sin, ch * cos, cy], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x * u(0.8, 1.2).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * u(0.8, 1.2).view(b, 1, 1, 1) + mean).clamp(0, 1)


def main():
    rows = file_rows(sys.argv[1])
    arch, epochs = sys.argv[2], int(sys.argv[3])
    recipe = Recipe(arch)
    device = recipe.device
    gen = torch.Generator(device=device).manual_seed(0)
    pixels = decode(rows, device)
    labels = torch.tensor([l for _, l in rows], device=device)
    mean, std = MEAN.to(device), STD.to(device)

    def batches():
        order = torch.randperm(len(rows), device=device, generator=gen)
        for idx in order.split(recipe.batch):
            xs = augment(pixels[idx].float() / 255, gen)
            yield ((xs - mean) / std).contiguous(memory_format=recipe.layout), labels[idx]

    recipe.train(epochs, batches, "torch_gpu_aug_img_per_s")


if __name__ == "__main__":
    main()
