#!/usr/bin/env bash
# The GPU check, prepared as one script for a lent GPU machine (no Rust and no network there;
# its python3 holds PyTorch 2.11.0+cu130 and torchvision). Build here, carry the binary and a
# Kermany subset, run it there:
#
#   scripts/experiments/gpu_check.sh DATA_DIR [OUT_DIR]     (DATA_DIR: NORMAL/ and PNEUMONIA/ JPEGs)
#
# 1. correctness on CUDA with AMP, on a synth set: train (smoke config, float16 autocast),
#    eval, the Grad-CAM check against the known boxes, predict on CUDA against the CPU;
# 2. a run killed with SIGKILL mid-training resumes on CUDA;
# 3. training throughput from JPEGs, ResNet18 and MobileNetV2 from scratch, 224 px, batch 64,
#    AMP (ResNet18 also float32 and bfloat16): `xray train` with its device pipeline (the
#    default on CUDA) and with the CPU loader (`data.on_device = false`), against
#    scripts/bench/train_torch.py (a DataLoader) and scripts/bench/train_torch_gpu_aug.py
#    (PyTorch with the same augmentation on the GPU), alternating (the last epoch's img/s);
#    and the GPU's GEMM ceiling in float32 and bfloat16;
# 4. inference over the test images on CUDA: xray predict against scripts/bench/predict_torch.py.
# XRAY_BASE_BIN=OTHER_BINARY adds a column: the same training runs with another build (an A/B
# of a change on the same machine, in the same call).
# Writes OUT_DIR/gpu_check.log and OUT_DIR/summary.md (also printed at the end), and samples
# the GPU's utilisation into OUT_DIR/gpu_util.csv.
#
# DESIGN.md, libtorch: the binary finds the machine's own torch through LD_LIBRARY_PATH, and
# loads libtorch_cuda.so itself (torch_ext::cuda::cuda_available).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
data=${1:?usage: scripts/experiments/gpu_check.sh DATA_DIR [OUT_DIR]}
out=${2:-${OUT:-/tmp/xray-gpu}}
x=$(realpath "${XRAY_BIN:-target/release/xray}")
py=${PYTHON:-python3}
epochs=${GPU_EPOCHS:-2}
dev=${GPU_DEVICE:-cuda} # GPU_DEVICE=cpu: a dry run of the script itself on a CPU machine
mkdir -p "$out"
work=$(mktemp -d)
log="$out/gpu_check.log"
summary="$out/summary.md"
: >"$summary"
started=$(date +%s)
say() { echo "[gpu $(($(date +%s) - started))s] $*" | tee -a "$log" >&2; }
row() { echo "$*" | tee -a "$summary" >&2; }
xr() { "$x" "$@" 2>&1 | tee -a "$log"; return "${PIPESTATUS[0]}"; }
img_s() { sed -n 's/.* \([0-9.]*\) img\/s .*/\1/p' "$1" | tail -1; }
torch_lib="$("$py" -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

row "## GPU check ($(date -u +%F))"
row "- machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo no GPU), $(nproc) cores, device $dev; torch $("$py" -c 'import torch, torchvision; print(torch.__version__, "torchvision", torchvision.__version__)')"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 >"$out/gpu_util.csv" 2>/dev/null &
smi=$!
trap 'kill $smi 2>/dev/null; rm -rf "$work"' EXIT

# --- 1. correctness on CUDA + AMP (synth)
say "synth, split, train on CUDA with AMP"
xr synth --out "$work/synth" --per-class 300 --size 128 >/dev/null
xr split "$work/synth" --out "$work/synth-split" >/dev/null
xr train --config configs/smoke.toml --set "data.split=$work/synth-split" --set device=$dev \
  --set train.amp=true --set train.epochs=8 --out "$work/synth-run" >"$work/synth-train.log"
rc=$?
row "- synth train, CUDA + AMP, 8 epochs: exit $rc; $(grep -E '^(precision|data.on_device)' "$work/synth-train.log" | tr '\n' ';') last epoch: $(grep -i 'epoch' "$work/synth-train.log" | tail -1)"
xr eval --checkpoint "$work/synth-run" --device $dev >"$work/eval.log"
row "- eval on CUDA: exit $?; $(grep -i -E 'auc' "$work/eval.log" | head -2 | tr '\n' ' ')"
xr gradcam --checkpoint "$work/synth-run" --check "$work/synth" --limit 60 --method gradcam --device $dev >"$work/cam.log"
row "- gradcam --check on CUDA: exit $?"
sed -n '/heatmap check/,/report:/p' "$work/cam.log" | sed 's/^/    /' | tee -a "$summary" >&2
ls "$work/synth/opacity" | head -40 | sed "s|^|$work/synth/opacity/|" >"$work/some.txt"
mapfile -t some <"$work/some.txt"
"$x" predict --checkpoint "$work/synth-run" --device "$dev" --format csv "${some[@]}" >"$work/p-cuda.csv" 2>>"$log"
rc_c=$?
"$x" predict --checkpoint "$work/synth-run" --device cpu --format csv "${some[@]}" >"$work/p-cpu.csv" 2>>"$log"
row "- predict 40 images, CUDA (exit $rc_c) against CPU: $("$py" - "$work/p-cuda.csv" "$work/p-cpu.csv" <<'PY'
import csv, sys
a, b = (list(csv.DictReader(open(f))) for f in sys.argv[1:3])
col = [k for k in a[0] if k.startswith("p_") or k.startswith("prob")] if a else []
same = sum(r["label"] == s["label"] for r, s in zip(a, b))
diff = max((abs(float(r[k]) - float(s[k])) for r, s in zip(a, b) for k in col), default=float("nan"))
print(f"{len(a)} rows, {same} same labels, max probability difference {diff:.2e} (columns {col})")
PY
)"

# --- 2. SIGKILL mid-training, resume on CUDA
say "kill and resume on CUDA"
"$x" train --config configs/smoke.toml --set "data.split=$work/synth-split" --set device=$dev \
  --set train.amp=true --set train.epochs=6 --out "$work/killed" >"$work/killed.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  [ "$(wc -l 2>/dev/null <"$work/killed/metrics.csv" || echo 0)" -ge 3 ] && break
  sleep 0.1
done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
done_before=$(($(wc -l <"$work/killed/metrics.csv") - 1))
xr train --resume "$work/killed" >"$work/resume.log"
rc=$?
row "- killed after $done_before epoch(s), --resume: exit $rc, $(grep -c . "$work/killed/metrics.csv") lines in metrics.csv; $(grep -i resum "$work/resume.log" | head -1)"

# --- 3. training throughput, xray against PyTorch, alternating
say "Kermany split for throughput"
"$x" split "$data" --out "$work/k-split" >>"$log" 2>&1
awk -F, 'NR > 1 && $4 == "train" {print "'"$(realpath "$data")"'/" $1 "\t" ($2 == "PNEUMONIA")}' \
  "$work/k-split/split.csv" >"$work/train.tsv"
row "- Kermany subset: $(wc -l <"$work/train.tsv") training images, $epochs epochs a run (the last is timed), batch 64"
row "- GEMM ceiling on $dev: $("$py" - "$dev" <<'PY'
import sys, time, torch
dev = torch.device(sys.argv[1])
torch.backends.cuda.matmul.allow_tf32 = False
out = []
for name, dtype, n in [("float32", torch.float32, 8192 if dev.type == "cuda" else 1024),
                       ("bfloat16", torch.bfloat16, 8192 if dev.type == "cuda" else 512)]:
    a = torch.randn(n, n, device=dev, dtype=dtype)
    torch.mm(a, a)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        torch.mm(a, a)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out.append(f"{name} {5 * 2 * n**3 / (time.perf_counter() - start) / 1e12:.1f} TFLOP/s")
print(", ".join(out))
PY
)"
row ""
base=${XRAY_BASE_BIN:+$(realpath "$XRAY_BASE_BIN")}
row "| training, img/s | xray, device pipeline | xray, CPU loader | PyTorch, DataLoader | PyTorch, same augmentation on the GPU | xray / DataLoader | xray / GPU augmentation |${base:+ xray, base build |}"
row "|---|---:|---:|---:|---:|---:|---:|${base:+---:|}"
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN {if (b > 0) printf "%.2fx", a / b; else print "-"}'; }
for job in resnet18:amp mobilenet_v2:amp resnet18:fp32 resnet18:bf16; do
  arch=${job%%:*} precision=${job##*:}
  amp=$([ "$precision" = amp ] && echo true || echo false)
  scripts/bench/train_config.sh "$work/k-split" "$arch" "$epochs" 64 "$dev" "$amp" >"$work/$arch.toml"
  set_precision=(--set "train.precision=$([ "$precision" = bf16 ] && echo bf16 || echo fp32)")
  torch_env=("BENCH_DEVICE=$dev" "BENCH_AMP=$([ "$amp" = true ] && echo 1 || echo 0)" BENCH_BATCH=64
    "BENCH_PRECISION=$([ "$precision" = bf16 ] && echo bf16 || echo fp32)")
  say "train $arch $precision: xray, device pipeline"
  rm -rf "$work/run-$arch"
  xr train --config "$work/$arch.toml" "${set_precision[@]}" --set data.on_device=true --out "$work/run-$arch" >"$work/x.log"
  xs=$(img_s "$work/x.log")
  say "train $arch $precision: xray, CPU loader"
  rm -rf "$work/run-loader"
  xr train --config "$work/$arch.toml" "${set_precision[@]}" --set data.on_device=false --out "$work/run-loader" >"$work/l.log"
  ls=$(img_s "$work/l.log")
  say "train $arch $precision: PyTorch, DataLoader"
  ts=$(env "${torch_env[@]}" "$py" scripts/bench/train_torch.py "$work/train.tsv" "$arch" "$epochs" 2>>"$log" |
    tee -a "$log" | sed -n 's/.*=//p' | tail -1)
  say "train $arch $precision: PyTorch, augmentation on the GPU"
  gs=$(env "${torch_env[@]}" "$py" scripts/bench/train_torch_gpu_aug.py "$work/train.tsv" "$arch" "$epochs" 2>>"$log" |
    tee -a "$log" | sed -n 's/.*=//p' | tail -1)
  bs=
  if [ -n "$base" ]; then
    say "train $arch $precision: xray, base build"
    rm -rf "$work/run-base"
    "$base" train --config "$work/$arch.toml" --out "$work/run-base" >"$work/b.log" 2>&1
    cat "$work/b.log" >>"$log"
    bs=" $(img_s "$work/b.log") |"
  fi
  row "| $arch, $precision | ${xs:-failed} | ${ls:-failed} | ${ts:-failed} | ${gs:-failed} | $(ratio "$xs" "$ts") | $(ratio "$xs" "$gs") |$bs"
done

# --- 4. inference over the test images on CUDA (the MobileNetV2 run just trained)
awk -F, 'NR > 1 && $4 == "test" {print "'"$(realpath "$data")"'/" $1}' "$work/k-split/split.csv" >"$work/test.txt"
mkdir -p "$work/folder"
while read -r f; do ln -sf "$f" "$work/folder/"; done <"$work/test.txt"
n=$(ls "$work/folder" | wc -l)
run="$work/run-mobilenet_v2"
t0=$(date +%s.%N)
"$x" predict --checkpoint "$run" --device $dev "$work/folder" >"$work/px.txt" 2>>"$log"
rc=$?
t1=$(date +%s.%N)
PREDICT_DEVICE=$dev "$py" scripts/bench/predict_torch.py "$run" "$work/folder" >"$work/pt.txt" 2>>"$log"
t2=$(date +%s.%N)
agree=$(paste <(cut -f2 "$work/px.txt") <(cut -f2 "$work/pt.txt") | awk '$1 == $2' | wc -l)
row ""
row "- predict $n test images on CUDA, process start to last line: xray $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s (exit $rc), PyTorch $(awk -v a="$t1" -v b="$t2" 'BEGIN {printf "%.2f", b - a}') s; labels agree on $agree of $n"
row "- GPU utilisation samples: $(awk -F', ' '$2 > 0 {n++} END {print n+0}' "$out/gpu_util.csv") of $(wc -l <"$out/gpu_util.csv") above 0%, peak memory $(awk -F', ' '$3 > m {m = $3} END {print m+0}' "$out/gpu_util.csv") MiB"
say "done"
cat "$summary"
