"""The PyTorch/torchvision training loop xray's is compared with: the same files, transforms
(RandomResizedCrop 224 scale 0.8-1, flip, rotation 10, brightness/contrast 0.2, normalise),
batch 32, AdamW lr 1e-3, cross-entropy, a DataLoader with one worker per core, the model
from scratch.

    python train_torch.py FILE_LIST ARCH EPOCHS

FILE_LIST: `path<TAB>label` lines. Prints `torch_train_img_per_s=N` per epoch (decode, augment,
forward, backward, step: the whole epoch's wall time).
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
    transform = train_transform()
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = DataLoader(Files(rows, transform), batch_size=32, shuffle=True,
                        num_workers=os.cpu_count() or 1, persistent_workers=True)
    for _ in range(epochs):
        start = time.perf_counter()
        n = 0
        for xs, ys in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xs), ys)
            loss.backward()
            opt.step()
            n += xs.shape[0]
        print(f"torch_train_img_per_s={n / (time.perf_counter() - start):.2f}", flush=True)


if __name__ == "__main__":
    main()
