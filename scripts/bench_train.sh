#!/usr/bin/env bash
# Training throughput end to end from Kermany JPEGs (decode, augment, forward, backward, step):
# `xray train` against scripts/bench/train_torch.py, same images, transforms, batch 32, AdamW,
# 224 px, from scratch, alternating on this machine. Each side trains EPOCHS epochs; the last
# epoch's images per second are compared (the first carries start-up costs).
#
#   scripts/bench_train.sh [ARCHS="resnet18 mobilenet_v2"] [N_IMAGES=320] [EPOCHS=2]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
archs=${1:-"resnet18 mobilenet_v2"}
n=${2:-320}
epochs=${3:-2}
data=../shared/datasets/pneumonia
[ -d "$data" ] || { echo "bench_train: $data is absent" >&2; exit 1; }
py=$(scripts/bench/python.sh "torchvision==0.26.0")
export LIBTORCH="$(scripts/libtorch.sh)" LIBTORCH_CXX11_ABI=1
cargo build --release -q
xray=target/release/xray

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# n training images, half of each class, plus a few for validation and test (xray's split
# needs them; they are not timed: the img/s of an epoch counts training steps only).
for class in NORMAL PNEUMONIA; do
  mkdir -p "$work/data/$class"
  find "$data/$class" -name '*.jpeg' | sort | awk -v k=$((n / 2 + 16)) 'NR % 3 == 0 && ++c <= k' |
    while read -r f; do ln -s "$(realpath "$f")" "$work/data/$class/"; done
done
"$xray" split "$work/data" --out "$work/split" --group-regex '^(.*)$' \
  --ratios "$(awk -v n="$n" 'BEGIN {t = n + 32; a = sprintf("%.4f", n / t); b = sprintf("%.4f", 16 / t); printf "%s,%s,%.4f", a, b, 1 - a - b}')" >/dev/null
awk -F, 'NR > 1 && $4 == "train" {print "'"$work"'/data/" $1 "\t" ($2 == "PNEUMONIA")}' \
  "$work/split/split.csv" > "$work/train.tsv"
echo "train images: $(wc -l < "$work/train.tsv"); cores: $(nproc); epochs: $epochs" >&2

printf '%-14s %14s %14s %8s\n' "model" "xray img/s" "PyTorch img/s" "ratio"
for arch in $archs; do
  cat > "$work/$arch.toml" <<TOML
name = "bench"
seed = 0
[data]
split = "$work/split"
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
batch_size = 32
lr = 0.001
optimizer = "adamw"
weight_decay = 0.0001
scheduler = "none"
TOML
  x=$("$xray" train --config "$work/$arch.toml" --out "$work/run-$arch" 2>&1 |
      sed -n 's/.* \([0-9.]*\) img\/s .*/\1/p' | tail -1)
  t=$("$py" scripts/bench/train_torch.py "$work/train.tsv" "$arch" "$epochs" | sed -n 's/.*=//p' | tail -1)
  printf '%-14s %14s %14s %7.2fx\n' "$arch" "$x" "$t" "$(awk -v a="$x" -v b="$t" 'BEGIN {print a / b}')"
done
