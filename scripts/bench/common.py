"""What the PyTorch sides of the benchmarks share: the image dataset, the training
transforms that match xray's augmentation in the benchmarks, and the training recipe."""
import os
import sys
import time

import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms


class Files(Dataset):
    """(path, label) rows read as RGB and transformed."""

    def __init__(self, rows, transform):
        self.rows = rows
        self.transform = transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        path, label = self.rows[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def train_transform():
    """RandomResizedCrop 224 (scale 0.8-1), flip, rotation 10, brightness/contrast 0.2,
    ImageNet normalisation."""
    return transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.8, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomRotation(10),
        transforms.ColorJitter(brightness=0.2, contrast=0.2),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])


def file_rows(path):
    """`path<TAB>label` lines as (path, int label) pairs."""
    return [(p, int(l)) for p, l in (line.rstrip("\n").split("\t") for line in open(path))]


class Recipe:
    """The training side every PyTorch training benchmark shares, set from the environment:
    BENCH_DEVICE (cpu), BENCH_AMP=1 (float16 autocast with a GradScaler, CUDA only),
    BENCH_PRECISION=bf16 (bfloat16 autocast, model and inputs channels-last), BENCH_BATCH (32).
    ARCH from torchvision from scratch (2 classes, seed 0), AdamW lr 1e-3 wd 1e-4,
    cross-entropy."""

    def __init__(self, arch):
        self.device = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
        self.amp = os.environ.get("BENCH_AMP") == "1" and self.device.type == "cuda"
        self.bf16 = os.environ.get("BENCH_PRECISION") == "bf16"
        self.layout = torch.channels_last if self.bf16 else torch.contiguous_format
        self.batch = int(os.environ.get("BENCH_BATCH", "32"))
        torch.manual_seed(0)
        self.model = getattr(torchvision.models, arch)(num_classes=2).to(
            self.device, memory_format=self.layout)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=1e-4)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.scaler = torch.amp.GradScaler(enabled=self.amp)

    def step(self, xs, ys):
        """One optimiser step on a batch already on the device; returns its size."""
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type,
                            dtype=torch.bfloat16 if self.bf16 else torch.float16,
                            enabled=self.amp or self.bf16):
            loss = self.loss_fn(self.model(xs), ys)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return xs.shape[0]

    def train(self, epochs, batches, name):
        """Runs `epochs` epochs of `batches()` (an iterable of device batches per call), printing
        `NAME=images per second` after each (the whole epoch's wall time)."""
        for _ in range(epochs):
            start = time.perf_counter()
            n = sum(self.step(xs, ys) for xs, ys in batches())
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            print(f"{name}={n / (time.perf_counter() - start):.2f}", flush=True)
