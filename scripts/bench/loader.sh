#!/usr/bin/env bash
# Input pipeline: xray's loader against torchvision's DataLoader (num_workers = cores), same
# Kermany files, same transforms (RandomResizedCrop 224 scale 0.8-1, flip, rotation 10,
# brightness/contrast 0.2, normalise), batch 32, alternating, on this machine. Prints medians
# and the ratio.
#
#   scripts/bench/loader.sh [N_IMAGES=2000] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
n=${1:-2000}
rounds=${2:-3}
data=../shared/datasets/pneumonia
[ -d "$data" ] || { echo "bench_loader: $data is absent" >&2; exit 1; }

torch_dir=$(scripts/setup/libtorch.sh)
py=$(scripts/bench/python.sh "torchvision==0.26.0")

list=$(mktemp)
trap 'rm -f "$list"' EXIT
find "$data" -name '*.jpeg' | sort | awk -v n="$n" 'NR <= n' > "$list"
echo "images: $(wc -l < "$list") Kermany JPEGs at 224 px; cores: $(nproc)" >&2

export LIBTORCH="$torch_dir" LIBTORCH_CXX11_ABI=1
cargo bench --bench loader --no-run -q
xs=(); ts=()
for ((r = 0; r < rounds; r++)); do
  xs+=("$(cargo bench -q --bench loader -- "$list" 1 | sed -n 's/.*=//p')")
  ts+=("$("$py" scripts/bench/loader_torchvision.py "$list" 1 | sed -n 's/.*=//p')")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mx=$(median "${xs[@]}"); mt=$(median "${ts[@]}")
printf '%-34s %10s  %s\n' "loader (decode+augment, 224 px)" "img/s" "rounds"
printf '%-34s %10.1f  %s\n' "xray" "$mx" "${xs[*]}"
printf '%-34s %10.1f  %s\n' "torchvision DataLoader" "$mt" "${ts[*]}"
awk -v a="$mx" -v b="$mt" 'BEGIN {printf "ratio xray / torchvision: %.2fx\n", a / b}'
