#!/usr/bin/env bash
# Prints the training config the benchmarks give xray, matching scripts/bench/train_torch.py:
# 224 px, AdamW lr 1e-3 wd 1e-4, no schedule, flip, rotation 10, brightness/contrast 0.2,
# random resized crop 0.8-1, ImageNet normalisation, from scratch.
#
#   scripts/bench/train_config.sh SPLIT_DIR ARCH EPOCHS BATCH [DEVICE=auto] [AMP=false]
set -euo pipefail
split=$1 arch=$2 epochs=$3 batch=$4 device=${5:-auto} amp=${6:-false}
cat <<TOML
name = "bench"
seed = 0
device = "$device"
[data]
split = "$split"
image_size = 224
channels = 3
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
cache = false
sampler = "shuffle"
[data.augment]
hflip = 0.5
rotation_degrees = 10.0
brightness = 0.2
contrast = 0.2
crop_scale = [0.8, 1.0]
[model]
arch = "$arch"
[train]
epochs = $epochs
batch_size = $batch
lr = 0.001
optimizer = "adamw"
weight_decay = 0.0001
scheduler = "none"
amp = $amp
TOML
