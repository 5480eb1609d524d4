"""torchvision's DataLoader on the same files and transforms as benches/loader.rs.

    python loader_torchvision.py FILE_LIST [ROUNDS]

Prints one `torchvision_loader_img_per_s=N` line per round.
"""
import os
import sys
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class Files(Dataset):
    def __init__(self, paths, transform):
        self.paths = paths
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), 0


def main():
    paths = [l.strip() for l in open(sys.argv[1]) if l.strip()]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(224, scale=(0.8, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(10),
            transforms.ColorJitter(brightness=0.2, contrast=0.2),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    workers = os.cpu_count() or 1
    for _ in range(rounds):
        loader = DataLoader(Files(paths, transform), batch_size=32, shuffle=True, num_workers=workers)
        start = time.perf_counter()
        n = 0
        for images, _ in loader:
            n += images.shape[0]
        print(f"torchvision_loader_img_per_s={n / (time.perf_counter() - start):.1f}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
