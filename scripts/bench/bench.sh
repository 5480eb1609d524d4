#!/usr/bin/env bash
# xray against the equivalent PyTorch/torchvision scripts, alternating, on this machine, with
# the same threads (all cores), files, transforms and weights. Prints a markdown table of
# medians and ratios (also written to target/bench/results.md):
#   - training throughput end to end from Kermany JPEGs (decode, augment, forward, backward,
#     AdamW step), ResNet18 and MobileNetV2 from scratch, 224 px, batch 32: `xray train`
#     against scripts/bench/train_torch.py (a DataLoader with one worker per core);
#   - cold `predict` of one image, process start to printed answer: `xray predict` against
#     scripts/bench/predict_torch.py, with the MobileNetV2 run the training bench just made;
#   - inference throughput over a folder of 500 Kermany images, same two programs, both at
#     xray's CPU batch of 8 (PREDICT_BATCH; the script's own default is 32);
#   - peak memory of each (scripts/bench/measure.py: resident set of the process, or the
#     proportional set size summed over it and its workers, whichever is larger);
#   - the compute ceiling: measured GEMM GFLOP/s (float32 and bfloat16) against the FLOPs of
#     a training step (scripts/bench/ceiling.py);
#   - the precision rows: xray `train.precision = "bf16"` against PyTorch's best CPU recipe
#     (bfloat16 autocast, channels-last; BENCH_PRECISION=bf16 train_torch.py), and xray with
#     `data.on_device = true` (the device pipeline, here on the CPU) against PyTorch float32.
#
#   scripts/bench/bench.sh [ROUNDS=3]
#   BENCH_ARCHS=densenet121 BENCH_PREDICT=0 BENCH_FINETUNE=0 scripts/bench/bench.sh 1
#                                 # the training rows of other torchvision architectures only
# Environment: BENCH_ARCHS ("resnet18 mobilenet_v2"), BENCH_PREDICT (1: the prediction rows,
# which use the MobileNetV2 run; 0 leaves them out), BENCH_TRAIN_IMAGES (160), BENCH_EPOCHS (2: the last epoch is timed, the first
# carries start-up costs), BENCH_FOLDER_IMAGES (500), BENCH_COLD_ROUNDS (5). On a CPU without
# bfloat16 instructions (AVX512-BF16 or AMX) bf16 runs about 10x slower on both sides, so its
# rows then train on BENCH_BF16_IMAGES (32) for BENCH_BF16_ROUNDS (1) round; with them, the
# fp32 settings. BENCH_XRAY_BASELINE=PATH (an xray binary of an earlier commit, named by
# BENCH_XRAY_BASELINE_REV) adds it to the prediction rounds, alternating, and rows of this
# build's speed against it. Where the CPU has bfloat16 instructions (or BENCH_FORCE_BF16=1),
# the folder is predicted in bf16 on both sides too. Then the Kermany fine-tuning rows
# (scripts/bench/finetune.sh; BENCH_FINETUNE=0 leaves them out).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
rounds=${1:-3}
n_train=${BENCH_TRAIN_IMAGES:-160}
epochs=${BENCH_EPOCHS:-2}
n_folder=${BENCH_FOLDER_IMAGES:-500}
cold_rounds=${BENCH_COLD_ROUNDS:-5}
archs=${BENCH_ARCHS:-"resnet18 mobilenet_v2"}
predict_rows_on=${BENCH_PREDICT:-1}
results=results.md
[ -z "${BENCH_ARCHS:-}" ] || results="results-${archs// /-}.md"
data=../shared/datasets/pneumonia
[ -d "$data" ] || { echo "bench: $data is absent (see ../shared/datasets/pneumonia/README.md)" >&2; exit 1; }
started=$(date +%s)
say() { echo "[bench $(($(date +%s) - started))s] $*" >&2; }

torch_dir=$(scripts/setup/libtorch.sh)
py=$(scripts/bench/python.sh "torchvision==0.26.0" safetensors)
export LIBTORCH="$torch_dir" LIBTORCH_CXX11_ABI=1
say "building xray (release)"
cargo build --release -q
xray=target/release/xray
out_dir=target/bench
mkdir -p "$out_dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

measure() { "$py" scripts/bench/measure.py "$@"; }
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
calc() { awk "BEGIN {printf \"$1\", $2}"; }

# --- data: N training images (half per class), plus a few for xray's validation and test
# splits (not timed: an epoch's img/s counts its training steps only), as NAME/ (the split)
# and NAME.tsv (the PyTorch side's file list).
make_split() {
  local n=$1 name=$2
  for class in NORMAL PNEUMONIA; do
    mkdir -p "$work/data-$name/$class"
    find "$data/$class" -name '*.jpeg' | sort | awk -v k=$((n / 2 + 16)) 'NR % 3 == 0 && ++c <= k' |
      while read -r f; do ln -s "$(realpath "$f")" "$work/data-$name/$class/"; done
  done
  # The folder holds links to ../shared, made here on purpose: followed.
  "$xray" split "$work/data-$name" --out "$work/$name" --group-regex '^(.*)$' --follow-external-links \
    --ratios "$(awk -v n="$n" 'BEGIN {t = n + 32; a = sprintf("%.4f", n / t); b = sprintf("%.4f", 16 / t); printf "%s,%s,%.4f", a, b, 1 - a - b}')" >/dev/null
  awk -F, 'NR > 1 && $4 == "train" {print "'"$work/data-$name"'/" $1 "\t" ($2 == "PNEUMONIA")}' \
    "$work/$name/split.csv" > "$work/$name.tsv"
}
make_split "$n_train" split
bf16_hw=$("$py" -c "import torch; c = torch._C._cpu._get_cpu_capability(); print(int(bool(c.get('avx512_bf16') or c.get('amx_bf16'))))")
if [ "$bf16_hw" = 1 ]; then
  n_bf16=$n_train bf16_rounds=$rounds
  cp "$work/split.tsv" "$work/split-bf16.tsv"; cp -r "$work/split" "$work/split-bf16"
else
  n_bf16=${BENCH_BF16_IMAGES:-32} bf16_rounds=${BENCH_BF16_ROUNDS:-1}
  make_split "$n_bf16" split-bf16
fi
mkdir -p "$work/folder"
find "$data" -name '*.jpeg' | sort | awk -v n="$n_folder" 'NR % 11 == 0 && ++k <= n' |
  while read -r f; do ln -s "$(realpath "$f")" "$work/folder/$(basename "$f")"; done
n_folder=$(ls "$work/folder" | wc -l)
one=$(find "$data/PNEUMONIA" -name '*.jpeg' | sort | awk 'NR == 1')

for arch in $archs; do
  scripts/bench/train_config.sh "$work/split" "$arch" "$epochs" 32 > "$work/$arch.toml"
  scripts/bench/train_config.sh "$work/split-bf16" "$arch" "$epochs" 32 > "$work/$arch-bf16.toml"
done

# --- the compute ceiling
say "GEMM and training-step FLOPs"
"$py" scripts/bench/ceiling.py $archs > "$work/ceiling.txt"
gemm=$(field gemm_gflops < "$work/ceiling.txt")
gemm_bf16=$(field gemm_bf16_gflops < "$work/ceiling.txt")

# --- training, alternating xray / PyTorch per architecture and round. Keys: ARCH (float32),
# ARCH/dev (xray with the device pipeline), ARCH/bf16 (both sides in bfloat16).
declare -A train_x train_t mem_x mem_t
xray_train() { # KEY CONFIG SETTING...
  local key=$1 config=$2; shift 2
  say "training round $r: $key, xray $*"
  rm -rf "$work/run-${key%%/*}"
  m=$(measure --log "$work/log" "$xray" train --config "$config" --out "$work/run-${key%%/*}" "$@")
  [ "$(field rc <<<"$m")" = 0 ] || { cat "$work/log" >&2; exit 1; }
  train_x[$key]+=" $(sed -n 's/.* \([0-9.]*\) img\/s .*/\1/p' "$work/log" | tail -1)"
  mem_x[$key]+=" $(field peak_mib <<<"$m")"
}
torch_train() { # KEY FILE_LIST ARCH [ENV...]
  local key=$1 list=$2 arch=$3; shift 3
  say "training round $r: $key, PyTorch $*"
  m=$(env "$@" "$py" scripts/bench/measure.py --log "$work/log" "$py" scripts/bench/train_torch.py "$list" "$arch" "$epochs")
  [ "$(field rc <<<"$m")" = 0 ] || { cat "$work/log" >&2; exit 1; }
  train_t[$key]+=" $(sed -n 's/.*=//p' "$work/log" | tail -1)"
  mem_t[$key]+=" $(field peak_mib <<<"$m")"
}
for ((r = 1; r <= rounds; r++)); do
  for arch in $archs; do
    xray_train "$arch" "$work/$arch.toml" --set train.precision=fp32
    torch_train "$arch" "$work/split.tsv" "$arch"
    xray_train "$arch/dev" "$work/$arch.toml" --set train.precision=fp32 --set data.on_device=true
    if ((r <= bf16_rounds)); then
      xray_train "$arch/bf16" "$work/$arch-bf16.toml" --set train.precision=bf16
      torch_train "$arch/bf16" "$work/split-bf16.tsv" "$arch" BENCH_PRECISION=bf16
    fi
  done
done

# --- prediction with the MobileNetV2 run just trained (the two must agree before being timed).
# The agreement check runs both sides in float32 (bfloat16's answers may differ from float32's
# on an image near the decision boundary); the rows say which precision each side runs. On a
# CPU with bfloat16 instructions (or with BENCH_FORCE_BF16=1) the folder is also predicted in
# bf16 on both sides.
declare -a xc xcm pc pcm xf xfm pf pfm bc bcm bf bfm xb xbm pb pbm
bf16_predict=0
base=${BENCH_XRAY_BASELINE:-}
base_rev=${BENCH_XRAY_BASELINE_REV:-baseline}
if [ "$predict_rows_on" = 1 ]; then
run="$work/run-mobilenet_v2"
xprec=(--precision fp32)
diff <("$xray" predict "${xprec[@]}" --checkpoint "$run" "$one" | cut -f2) \
     <("$py" scripts/bench/predict_torch.py "$run" "$one" | cut -f2) >/dev/null ||
  { echo "bench: xray and PyTorch disagree on $one" >&2; exit 1; }
{ [ "$bf16_hw" = 1 ] || [ "${BENCH_FORCE_BF16:-0}" = 1 ]; } && bf16_predict=1
say "cold predict, $cold_rounds rounds"
for ((r = 0; r < cold_rounds; r++)); do
  m=$(measure "$xray" predict "${xprec[@]}" --checkpoint "$run" "$one"); xc+=("$(field wall_s <<<"$m")"); xcm+=("$(field peak_mib <<<"$m")")
  m=$(measure "$py" scripts/bench/predict_torch.py "$run" "$one"); pc+=("$(field wall_s <<<"$m")"); pcm+=("$(field peak_mib <<<"$m")")
  if [ -n "$base" ]; then
    m=$(measure "$base" predict "${xprec[@]}" --checkpoint "$run" "$one"); bc+=("$(field wall_s <<<"$m")"); bcm+=("$(field peak_mib <<<"$m")")
  fi
done
say "folder of $n_folder images, $rounds rounds"
for ((r = 0; r < rounds; r++)); do
  m=$(measure "$xray" predict "${xprec[@]}" --checkpoint "$run" "$work/folder"); xf+=("$(field wall_s <<<"$m")"); xfm+=("$(field peak_mib <<<"$m")")
  m=$(PREDICT_BATCH=8 measure "$py" scripts/bench/predict_torch.py "$run" "$work/folder"); pf+=("$(field wall_s <<<"$m")"); pfm+=("$(field peak_mib <<<"$m")")
  if [ -n "$base" ]; then
    m=$(measure "$base" predict "${xprec[@]}" --checkpoint "$run" "$work/folder"); bf+=("$(field wall_s <<<"$m")"); bfm+=("$(field peak_mib <<<"$m")")
  fi
  if [ "$bf16_predict" = 1 ]; then
    m=$(measure "$xray" predict --precision bf16 --checkpoint "$run" "$work/folder"); xb+=("$(field wall_s <<<"$m")"); xbm+=("$(field peak_mib <<<"$m")")
    m=$(PREDICT_BATCH=8 PREDICT_PRECISION=bf16 measure "$py" scripts/bench/predict_torch.py "$run" "$work/folder"); pb+=("$(field wall_s <<<"$m")"); pbm+=("$(field peak_mib <<<"$m")")
  fi
done
fi

# --- the table
{
  echo "| benchmark | xray | PyTorch | ratio | rounds (xray; PyTorch) |"
  echo "|---|---:|---:|---:|---|"
  row() { # LABEL XRAY_KEY TORCH_KEY
    # shellcheck disable=SC2086
    a=$(median ${train_x[$2]}); b=$(median ${train_t[$3]})
    # shellcheck disable=SC2086
    am=$(median ${mem_x[$2]}); bm=$(median ${mem_t[$3]})
    echo "| train $1, img/s | $a | $b | **$(calc %.2fx "$a / $b")** |${train_x[$2]};${train_t[$3]} |"
    echo "| train $1, peak memory | $(calc %.0f "$am") MiB | $(calc %.0f "$bm") MiB | $(calc %.2fx "$am / $bm") |${mem_x[$2]};${mem_t[$3]} |"
  }
  for arch in $archs; do
    row "$arch fp32" "$arch" "$arch"
    row "$arch fp32, xray data.on_device" "$arch/dev" "$arch"
    row "$arch bf16 (PyTorch: autocast + channels-last; $n_bf16 images, $bf16_rounds round(s))" "$arch/bf16" "$arch/bf16"
  done
  # predict_rows COLD_S COLD_MIB FOLDER_S FOLDER_MIB: each "xray rounds;other rounds", space-separated.
  # shellcheck disable=SC2086
  predict_rows() {
    local a b
    a=$(median ${1%;*}); b=$(median ${1#*;})
    echo "| cold predict, one image, fp32 | $(calc %.3f "$a") s | $(calc %.3f "$b") s | **$(calc %.2fx "$b / $a")** | $1 |"
    a=$(median ${2%;*}); b=$(median ${2#*;})
    echo "| cold predict, peak memory | $(calc %.0f "$a") MiB | $(calc %.0f "$b") MiB | $(calc %.2fx "$a / $b") | $2 |"
    a=$(median ${3%;*}); b=$(median ${3#*;})
    echo "| predict a folder of $n_folder images, fp32, img/s | $(calc %.1f "$n_folder / $a") | $(calc %.1f "$n_folder / $b") | **$(calc %.2fx "$b / $a")** | $3 (s) |"
    a=$(median ${4%;*}); b=$(median ${4#*;})
    echo "| predict a folder, peak memory | $(calc %.0f "$a") MiB | $(calc %.0f "$b") MiB | $(calc %.2fx "$a / $b") | $4 |"
  }
  [ "$predict_rows_on" = 0 ] ||
    predict_rows "${xc[*]}; ${pc[*]}" "${xcm[*]}; ${pcm[*]}" "${xf[*]}; ${pf[*]}" "${xfm[*]}; ${pfm[*]}"
  if [ "$bf16_predict" = 1 ]; then
    a=$(median "${xb[@]}"); b=$(median "${pb[@]}"); x32=$(median "${xf[@]}"); p32=$(median "${pf[@]}")
    am=$(median "${xbm[@]}"); bm=$(median "${pbm[@]}")
    echo "| predict a folder, both bf16 (PyTorch: autocast + channels-last), img/s | $(calc %.1f "$n_folder / $a") | $(calc %.1f "$n_folder / $b") | **$(calc %.2fx "$b / $a")** | ${xb[*]}; ${pb[*]} (s) |"
    echo "| predict a folder, bf16, peak memory | $(calc %.0f "$am") MiB | $(calc %.0f "$bm") MiB | $(calc %.2fx "$am / $bm") | ${xbm[*]}; ${pbm[*]} |"
    echo "| predict a folder, bf16 against fp32 on the same side (above 1: bf16 faster) | $(calc %.2fx "$x32 / $a") | $(calc %.2fx "$p32 / $b") | | |"
  fi
  if [ -n "$base" ] && [ "$predict_rows_on" = 1 ]; then
    echo
    echo "| this build against xray $base_rev | this build | xray $base_rev | ratio | rounds (this build; $base_rev) |"
    echo "|---|---:|---:|---:|---|"
    predict_rows "${xc[*]}; ${bc[*]}" "${xcm[*]}; ${bcm[*]}" "${xf[*]}; ${bf[*]}" "${xfm[*]}; ${bfm[*]}"
  fi
  echo
  echo "Ratios: speed as xray / PyTorch (above 1: xray faster); memory as xray / PyTorch (below 1: xray leaner)$([ -n "$base" ] && echo "; against xray $base_rev, the same with this build in place of xray and $base_rev in place of PyTorch")."
  echo
  echo "Compute ceiling: float32 GEMM (2048x2048, torch.mm on libtorch 2.11, $(nproc) threads) runs at $gemm GFLOP/s; bfloat16 GEMM (1024x1024) at $gemm_bf16 GFLOP/s (this CPU $([ "$bf16_hw" = 1 ] && echo has || echo "has no") AVX512-BF16/AMX)."
  echo
  echo "| model | GFLOP per training image | float32 ceiling img/s | float32 step alone img/s | xray float32 end to end, % of ceiling |"
  echo "|---|---:|---:|---:|---:|"
  for arch in $archs; do
    line=$(grep "^$arch " "$work/ceiling.txt")
    c=$(field ceiling_img_s <<<"$line")
    # shellcheck disable=SC2086
    x=$(median ${train_x[$arch]})
    echo "| $arch | $(field gflop_per_img <<<"$line") | $c | $(field step_img_s <<<"$line") | $(calc %.0f%% "100 * $x / $c") |"
  done
  echo
  echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB;" \
       "$(. /etc/os-release && echo "$PRETTY_NAME"); torch $("$py" -c 'import torch, torchvision; print(torch.__version__, "+ torchvision", torchvision.__version__)');" \
       "xray $(git rev-parse --short HEAD); $(date -u +%Y-%m-%d)."
  echo "Command: \`scripts/bench/bench.sh $rounds\` (training: $(wc -l < "$work/split.tsv") images, epoch $epochs of $epochs timed; $rounds rounds; cold predict $cold_rounds rounds), $(($(date +%s) - started)) s in all."
} | tee "$out_dir/$results"
# --- the Kermany fine-tuning rows (configs/pneumonia.toml against the same recipe in PyTorch):
# the whole dataset, several minutes a side; BENCH_FINETUNE=0 leaves them out.
if [ "${BENCH_FINETUNE:-1}" = 1 ]; then
  say "Kermany fine-tuning rows (scripts/bench/finetune.sh)"
  { echo; scripts/bench/finetune.sh 1; } | tee -a "$out_dir/$results"
fi
