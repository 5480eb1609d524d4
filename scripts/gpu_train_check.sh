#!/usr/bin/env bash
# One-epoch GPU check, prepared for a lent GPU machine (no Rust, no network there):
# ResNet18 from scratch, 224 px, batch 64, AMP, one epoch on the Kermany set; the epoch line
# prints img/s. Build here (make build), carry target/release/xray and the data, then run
#
#   scripts/gpu_train_check.sh DATA_DIR [OUT_DIR]
#
# DESIGN.md, libtorch: the binary finds the machine's own torch through LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data=${1:?usage: scripts/gpu_train_check.sh DATA_DIR [OUT_DIR]}
out=${2:-${OUT:-/tmp/xray-gpu}}
bin=${XRAY_BIN:-target/release/xray}
if ! ldd "$bin" | grep -q 'libtorch_cpu.so => /'; then
  LD_LIBRARY_PATH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
mkdir -p "$out"
"$bin" split "$data" --out "$out/split"
"$bin" train --config configs/pneumonia.toml \
  --set "data.split=$out/split" --set device=cuda \
  --set model.arch=resnet18 --set model.pretrained=none \
  --set train.freeze_epochs=0 --set train.unfreeze_stages=0 --set train.precompute_frozen=false \
  --set train.epochs=1 --set train.batch_size=64 --set train.amp=true \
  --set data.augment.hflip=0.5 --set data.augment.rotation_degrees=10 \
  --out "$out/run" 2>&1 | tee "$out/train.log"
