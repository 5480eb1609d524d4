#!/usr/bin/env bash
# The Kermany fine-tuning rows: `xray train --config configs/pneumonia.toml` (MobileNetV2 from
# ImageNet, two stages on cached activations) in fp32, in bf16 and in `auto`, against the same
# recipe in PyTorch (scripts/bench/finetune_torch.py) in fp32 and in bf16 (autocast,
# channels-last), on the whole patient split of ../shared/datasets/pneumonia, alternating, on
# this machine. Prints a markdown table: wall time of the whole run, the fine-tuning epochs'
# img/s (median of epochs 6-10, training steps only), peak memory (scripts/bench/measure.py).
#
#   scripts/bench/finetune.sh [ROUNDS=1]
# BENCH_FORCE_BF16=1 runs the bf16 rows on a CPU without bfloat16 instructions too (emulated:
# several times slower).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
rounds=${1:-1}
data=../shared/datasets/pneumonia
weights=../shared/weights/mobilenet_v2_imagenet.safetensors
[ -d "$data" ] && [ -f "$weights" ] || { echo "finetune: needs $data and $weights" >&2; exit 1; }
started=$(date +%s)
say() { echo "[finetune $(($(date +%s) - started))s] $*" >&2; }
torch_dir=$(scripts/setup/libtorch.sh)
py=$(scripts/bench/python.sh "torchvision==0.26.0" safetensors)
export LIBTORCH="$torch_dir" LIBTORCH_CXX11_ABI=1
cargo build --release -q
xray=target/release/xray
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

say "splitting $data"
"$xray" split "$data" --out "$work/split" >/dev/null 2>&1
bf16_hw=$("$py" -c "import torch; c = torch._C._cpu._get_cpu_capability(); print(int(bool(c.get('avx512_bf16') or c.get('amx_bf16'))))")
sides="xray/fp32 torch/fp32 xray/auto"
if [ "$bf16_hw" = 1 ] || [ "${BENCH_FORCE_BF16:-0}" = 1 ]; then
  sides="$sides xray/bf16 torch/bf16"
fi
declare -A wall rate mem chosen
for ((r = 1; r <= rounds; r++)); do
  for side in $sides; do
    say "round $r: $side"
    prec=${side#*/}
    if [ "${side%/*}" = xray ]; then
      rm -rf "$work/run"
      # A cache of its own: auto measures in this run, as on a user's first run.
      m=$(XRAY_CACHE_DIR="$work/cache-$r" XRAY_WEIGHTS_DIR=../shared/weights "$py" scripts/bench/measure.py --log "$work/log" \
        "$xray" train --config configs/pneumonia.toml --set "data.split=$work/split" \
        --set "train.precision=$prec" --out "$work/run")
      rates=$(sed -n 's/^epoch *\([0-9]*\)\/.* \([0-9.]*\) img\/s .*/\1 \2/p' "$work/log" | awk '$1 > 5 {print $2}')
      [ "$prec" = auto ] && chosen[$r]=$(sed -n 's/.*"train_precision": "\([a-z0-9]*\)".*/\1/p' "$work/run/model.json")
    else
      m=$(BENCH_PRECISION=$prec "$py" scripts/bench/measure.py --log "$work/log" \
        "$py" scripts/bench/finetune_torch.py "$work/split" "$data" "$weights")
      rates=$(sed -n 's/.*stage=finetune img_per_s=\([0-9.]*\).*/\1/p' "$work/log")
    fi
    [ "$(field rc <<<"$m")" = 0 ] || { cat "$work/log" >&2; exit 1; }
    wall[$side]+=" $(field wall_s <<<"$m")"
    # shellcheck disable=SC2086
    rate[$side]+=" $(median $rates)"
    mem[$side]+=" $(field peak_mib <<<"$m")"
  done
done

n_train=$(awk -F, 'NR > 1 && $4 == "train"' "$work/split/split.csv" | wc -l)
echo "| Kermany fine-tuning (configs/pneumonia.toml, $n_train training images) | whole run, s | fine-tuning img/s | peak memory, MiB | rounds (s; img/s; MiB) |"
echo "|---|---:|---:|---:|---|"
for side in $sides; do
  # shellcheck disable=SC2086
  w=$(median ${wall[$side]}); f=$(median ${rate[$side]}); mm=$(median ${mem[$side]})
  label=$side
  [ "$side" = xray/auto ] && label="xray/auto (chose ${chosen[*]})"
  echo "| $label | $(awk "BEGIN {printf \"%.0f\", $w}") | $f | $(awk "BEGIN {printf \"%.0f\", $mm}") |${wall[$side]};${rate[$side]};${mem[$side]} |"
done
echo
echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; xray $(git rev-parse --short HEAD); $(date -u +%Y-%m-%d). Command: \`scripts/bench/finetune.sh $rounds\`, $(($(date +%s) - started)) s."
