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

from torch.utils.data import DataLoader

from common import Files, Recipe, file_rows, train_transform


def main():
    rows = file_rows(sys.argv[1])
    arch, epochs = sys.argv[2], int(sys.argv[3])
    recipe = Recipe(arch)
    device, layout = recipe.device, recipe.layout
    loader = DataLoader(Files(rows, train_transform()), batch_size=recipe.batch, shuffle=True,
                        num_workers=os.cpu_count() or 1, persistent_workers=True,
                        pin_memory=device.type == "cuda")

    def batches():
        for xs, ys in loader:
            yield (xs.to(device, non_blocking=True, memory_format=layout),
                   ys.to(device, non_blocking=True))

    recipe.train(epochs, batches, "torch_train_img_per_s")


if __name__ == "__main__":
    main()
