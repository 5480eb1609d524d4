"""The PyTorch/torchvision equivalent of `xray train --config configs/pneumonia.toml`, the
two-stage fine-tuning researchers run first: MobileNetV2 from ImageNet weights, 224 px,
batch 32, AdamW (lr 1e-3, weight decay 1e-4) with a cosine schedule per stage, balanced class
weights, dropout 0.2.

  1. the frozen stages' activations (features[0:14], eval mode) of the training and
     validation images computed once (`precompute_frozen`), and from them those of
     features[14:19];
  2. 5 epochs training the head alone on the pooled features (`freeze_epochs = 5`);
  3. 5 epochs fine-tuning features[14:19] and the head on the cached stage-14 activations at
     lr 3e-4 (`unfreeze_stages = 5`, `finetune_lr_factor = 0.3`);
  each epoch followed by a validation pass on the validation activations.

    python finetune_torch.py SPLIT_DIR DATA_DIR WEIGHTS [EPOCHS=10]

SPLIT_DIR: what `xray split` wrote (split.csv: path,label,...,split); DATA_DIR: the folder its
paths are relative to; WEIGHTS: mobilenet_v2_imagenet.safetensors (torchvision's names).
BENCH_PRECISION=bf16: bfloat16 autocast with the model and activations channels-last.
Prints `precompute_s=`, then per epoch `epoch=N stage=head|finetune img_per_s=` (training
steps only, as xray's log), then `total_s=`.
"""
import csv
import math
import os
import sys
import time

import torch
import torchvision
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from torchvision import transforms

from common import Files

FROM = 14  # the first fine-tuned stage of features[0:19]


def eval_transform():
    """xray's input without augmentation: shorter side to 224, centre crop, normalise."""
    return transforms.Compose([
        transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def main():
    split_dir, data_dir, weights = sys.argv[1:4]
    epochs = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    head_epochs = min(5, epochs)
    bf16 = os.environ.get("BENCH_PRECISION") == "bf16"
    layout = torch.channels_last if bf16 else torch.contiguous_format
    rows = {"train": [], "val": []}
    with open(os.path.join(split_dir, "split.csv")) as f:
        for r in csv.DictReader(f):
            if r["split"] in rows:
                rows[r["split"]].append((os.path.join(data_dir, r["path"]), r["label"]))
    classes = sorted({label for _, label in rows["train"]})
    for part in rows.values():
        part[:] = [(p, classes.index(label)) for p, label in part]
    torch.manual_seed(42)
    model = torchvision.models.mobilenet_v2(num_classes=len(classes), dropout=0.2)
    state = {k: v for k, v in load_file(weights).items() if not k.startswith("classifier")}
    model.load_state_dict(state, strict=False)
    model = model.to(memory_format=layout)
    started = time.perf_counter()

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    # 1. activations of the frozen stages, once.
    cached = {}
    with torch.no_grad(), autocast():
        model.eval()
        for name, part in rows.items():
            loader = DataLoader(Files(part, eval_transform()), batch_size=64, num_workers=os.cpu_count() or 1)
            reps, labels = [], []
            for xs, ys in loader:
                reps.append(model.features[:FROM](xs.to(memory_format=layout)).float())
                labels.append(ys)
            reps = torch.cat(reps)
            pooled = model.features[FROM:](reps).float().mean((2, 3))
            cached[name] = (reps, pooled, torch.cat(labels))
    print(f"precompute_s={time.perf_counter() - started:.2f}", flush=True)

    counts = torch.bincount(cached["train"][2], minlength=len(classes)).double()
    weight = (counts.sum() / (len(classes) * counts)).float()
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)

    def stage(name, params, lr, n_epochs, first_epoch, forward, inputs):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        steps = n_epochs * math.ceil(len(inputs[1]) / 32)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
        for e in range(n_epochs):
            t = time.perf_counter()
            order = torch.randperm(len(inputs[1]))
            for i in range(0, len(order), 32):
                idx = order[i:i + 32]
                opt.zero_grad(set_to_none=True)
                with autocast():
                    loss = loss_fn(forward(inputs[0][idx], True).float(), inputs[1][idx])
                loss.backward()
                opt.step()
                sched.step()
            rate = len(order) / (time.perf_counter() - t)
            with torch.no_grad(), autocast():
                val_x, val_y = val_inputs(name)
                val_loss = loss_fn(forward(val_x, False).float(), val_y)
            print(f"epoch={first_epoch + e} stage={name} img_per_s={rate:.1f} "
                  f"val_loss={float(val_loss):.4f}", flush=True)

    def val_inputs(name):
        reps, pooled, labels = cached["val"]
        return (pooled if name == "head" else reps.to(memory_format=layout)), labels

    # 2. the head on the pooled features.
    def head(x, train):
        model.classifier.train(train)
        return model.classifier(x)

    stage("head", model.classifier.parameters(), 1e-3, head_epochs, 1, head,
          (cached["train"][1], cached["train"][2]))

    # 3. features[14:19] and the head on the stage-14 activations.
    def finetune(x, train):
        model.features[FROM:].train(train)
        model.classifier.train(train)
        h = model.features[FROM:](x.to(memory_format=layout))
        return model.classifier(h.float().mean((2, 3)))

    params = list(model.features[FROM:].parameters()) + list(model.classifier.parameters())
    stage("finetune", params, 1e-3 * 0.3, epochs - head_epochs, head_epochs + 1, finetune,
          (cached["train"][0], cached["train"][2]))
    print(f"total_s={time.perf_counter() - started:.2f}", flush=True)


if __name__ == "__main__":
    main()
