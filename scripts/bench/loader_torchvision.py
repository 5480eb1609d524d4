"""torchvision's DataLoader on the same files and transforms as benches/loader.rs.

    python loader_torchvision.py FILE_LIST [ROUNDS]

Prints one `torchvision_loader_img_per_s=N` line per round.
"""
import os
import sys
import time

import torch
from torch.utils.data import DataLoader

from common import Files, train_transform


def main():
    paths = [l.strip() for l in open(sys.argv[1]) if l.strip()]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    transform = train_transform()
    workers = os.cpu_count() or 1
    for _ in range(rounds):
        loader = DataLoader(Files([(p, 0) for p in paths], transform), batch_size=32, shuffle=True, num_workers=workers)
        start = time.perf_counter()
        n = 0
        for images, _ in loader:
            n += images.shape[0]
        print(f"torchvision_loader_img_per_s={n / (time.perf_counter() - start):.1f}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
