"""The PyTorch/torchvision equivalent of `xray predict`: the same run folder's weights
(model.safetensors in torchvision's names), the same preprocessing (shorter side to the input
size, centre crop, normalise), the temperature and threshold from model.json; prints
`path<TAB>label<TAB>probability%` per image.

    python predict_torch.py RUN_DIR INPUT...     (files or folders)
Folders are read with a DataLoader (batch 32, or $PREDICT_BATCH; one worker per core).
PREDICT_DEVICE=cuda runs the model on the GPU (scripts/experiments/gpu_check.sh).
PREDICT_PRECISION=bf16 runs it in bfloat16 autocast with the model and inputs channels-last
(PyTorch's CPU recipe, as `xray predict --precision bf16`).
"""
import json
import os
import sys

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms

run, inputs = sys.argv[1], sys.argv[2:]
card = json.load(open(os.path.join(run, "model.json")))
arch = card["arch"]
model = getattr(torchvision.models, arch)(num_classes=len(card["classes"]))
model.load_state_dict(load_file(os.path.join(run, "model.safetensors")))
device = torch.device(os.environ.get("PREDICT_DEVICE", "cpu"))
bf16 = os.environ.get("PREDICT_PRECISION") == "bf16"
layout = torch.channels_last if bf16 else torch.contiguous_format
model.to(device, memory_format=layout).eval()
size = card["image_size"]
mode = "L" if card["channels"] == 1 else "RGB"
tf = transforms.Compose([
    transforms.Resize(size),
    transforms.CenterCrop(size),
    transforms.ToTensor(),
    transforms.Normalize(card["mean"], card["std"]),
])

files = []
for p in inputs:
    if os.path.isdir(p):
        for root, _, names in os.walk(p):
            files += [os.path.join(root, n) for n in sorted(names)
                      if n.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))]
    else:
        files.append(p)


class Files(torch.utils.data.Dataset):
    def __len__(self):
        return len(files)

    def __getitem__(self, i):
        return tf(Image.open(files[i]).convert(mode))


loader = torch.utils.data.DataLoader(
    Files(), batch_size=int(os.environ.get("PREDICT_BATCH", "32")),
    num_workers=os.cpu_count() if len(files) > 1 else 0)
classes, t, threshold = card["classes"], card["temperature"], card["threshold"]
i = 0
with torch.inference_mode():
    for xs in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(xs.to(device, memory_format=layout)).float()
        probs = torch.softmax(logits / t, dim=1).cpu()
        for p in probs:
            if len(classes) == 2:
                k = 1 if p[1] >= threshold else 0
            else:
                k = int(p.argmax())
            print(f"{files[i]}\t{classes[k]}\t{100 * float(p[k]):.1f}%")
            i += 1
