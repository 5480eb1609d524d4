#!/usr/bin/env bash
# Prediction speed and memory: `xray predict` against the equivalent PyTorch script
# (scripts/bench/predict_torch.py), same run folder, same images, alternating, on this machine.
#   - cold predict of one image: process start to printed answer;
#   - a folder of 500 Kermany images: images per second;
#   - peak resident memory of each.
#
#   scripts/bench_predict.sh [RUN_DIR=checkpoints/latest] [ROUNDS=5]
# RUN_DIR must be an architecture torchvision has (mobilenet_v2, resnet18).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
run=${1:-checkpoints/latest}
rounds=${2:-5}
data=../shared/datasets/pneumonia
[ -d "$data" ] || { echo "bench_predict: $data is absent" >&2; exit 1; }

torch_dir=$(scripts/libtorch.sh)
py=$(scripts/bench/python.sh "torchvision==0.26.0" safetensors)
export LIBTORCH="$torch_dir" LIBTORCH_CXX11_ABI=1
cargo build --release -q
xray=target/release/xray

one=$(find "$data/PNEUMONIA" -name '*.jpeg' | sort | awk 'NR == 1')
folder=$(mktemp -d)
trap 'rm -rf "$folder"' EXIT
find "$data" -name '*.jpeg' | sort | awk 'NR % 11 == 0 && ++k <= 500' | while read -r f; do
  ln -s "$(realpath "$f")" "$folder/$(basename "$f")"
done
n=$(ls "$folder" | wc -l)
echo "run: $run ($(sed -n 's/.*"arch": *"\([^"]*\)".*/\1/p' "$run/model.json")); one image: $one; folder: $n images; cores: $(nproc)" >&2

# The two must agree before they are timed.
diff <("$xray" predict --checkpoint "$run" "$one" | cut -f2) \
     <("$py" scripts/bench/predict_torch.py "$run" "$one" | cut -f2) >/dev/null ||
  { echo "bench_predict: xray and PyTorch disagree on $one" >&2; exit 1; }

measure() { "$py" scripts/bench/measure.py "$@"; }
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }
declare -a xc xcm pc pcm xf xfm pf pfm
"$xray" predict --checkpoint "$run" "$one" >/dev/null  # page cache warm for both
for ((r = 0; r < rounds; r++)); do
  m=$(measure "$xray" predict --checkpoint "$run" "$one"); xc+=("$(field wall_s <<<"$m")"); xcm+=("$(field peak_rss_mib <<<"$m")")
  m=$(measure "$py" scripts/bench/predict_torch.py "$run" "$one"); pc+=("$(field wall_s <<<"$m")"); pcm+=("$(field peak_rss_mib <<<"$m")")
done
for ((r = 0; r < (rounds + 1) / 2; r++)); do
  m=$(measure "$xray" predict --checkpoint "$run" "$folder"); xf+=("$(field wall_s <<<"$m")"); xfm+=("$(field peak_rss_mib <<<"$m")")
  m=$(measure "$py" scripts/bench/predict_torch.py "$run" "$folder"); pf+=("$(field wall_s <<<"$m")"); pfm+=("$(field peak_rss_mib <<<"$m")")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
a=$(median "${xc[@]}"); b=$(median "${pc[@]}"); am=$(median "${xcm[@]}"); bm=$(median "${pcm[@]}")
c=$(median "${xf[@]}"); d=$(median "${pf[@]}"); cm=$(median "${xfm[@]}"); dm=$(median "${pfm[@]}")
printf '%-28s %12s %12s %9s\n' "" "xray" "PyTorch" "ratio"
printf '%-28s %11.3fs %11.3fs %8.2fx\n' "cold predict, one image" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN{print b/a}')"
printf '%-28s %9.0f MiB %8.0f MiB %8.2fx\n' "  peak memory" "$am" "$bm" "$(awk -v a="$am" -v b="$bm" 'BEGIN{print a/b}')"
printf '%-28s %8.1f im/s %7.1f im/s %8.2fx\n' "folder of $n images" "$(awk -v t="$c" -v n="$n" 'BEGIN{print n/t}')" "$(awk -v t="$d" -v n="$n" 'BEGIN{print n/t}')" "$(awk -v a="$c" -v b="$d" 'BEGIN{print b/a}')"
printf '%-28s %9.0f MiB %8.0f MiB %8.2fx\n' "  peak memory" "$cm" "$dm" "$(awk -v a="$cm" -v b="$dm" 'BEGIN{print a/b}')"
echo "ratios: time as PyTorch / xray (higher is faster xray); memory as xray / PyTorch (lower is leaner)"
echo "rounds: cold xray ${xc[*]} | torch ${pc[*]}; folder xray ${xf[*]} | torch ${pf[*]}"
