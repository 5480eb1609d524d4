#!/usr/bin/env bash
# Does bfloat16 or the device pipeline move accuracy? Trains one config several ways on the
# same split (float32 with the CPU loader, `data.on_device = true`, `train.precision = "bf16"`)
# and prints each run's test ROC-AUC (`xray eval`) and its difference from the float32 run.
#
#   scripts/experiments/precision_accuracy.sh CONFIG OUT_DIR [VARIANT...] [-- --set K=V...]
# VARIANT: fp32 (always first), on_device, bf16 (default: all three). Settings after `--` apply
# to every run (e.g. `train.epochs=4`). Writes OUT_DIR/<variant>/ (run folders) and
# OUT_DIR/accuracy.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
config=${1:?usage: precision_accuracy.sh CONFIG OUT_DIR [VARIANT...] [-- --set K=V...]}
out=${2:?usage: precision_accuracy.sh CONFIG OUT_DIR [VARIANT...] [-- --set K=V...]}
shift 2
variants=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do variants+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
[ ${#variants[@]} -gt 0 ] || variants=(on_device bf16)
x=target/release/xray
mkdir -p "$out"
auc() { python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print(r['roc_auc'] if 'roc_auc' in r else r['auc'])" "$1"; }
table="$out/accuracy.md"
echo "| run | settings | test ROC-AUC | minus fp32 | train seconds |" > "$table"
echo "|---|---|---:|---:|---:|" >> "$table"
base=
for v in fp32 "${variants[@]}"; do
  [ "$v" = fp32 ] && [ -n "$base" ] && continue
  case $v in
    fp32) extra=(--set train.precision=fp32 --set data.on_device=false) ;;
    on_device) extra=(--set train.precision=fp32 --set data.on_device=true) ;;
    bf16) extra=(--set train.precision=bf16 --set data.on_device=false) ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
  rm -rf "${out:?}/${v:?}"
  echo "[accuracy] $v: training" >&2
  "$x" train --config "$config" "$@" "${extra[@]}" --out "$out/$v" 2> "$out/$v.log" || { tail "$out/$v.log" >&2; exit 1; }
  "$x" eval --checkpoint "$out/$v" --precision "$([ "$v" = bf16 ] && echo bf16 || echo fp32)" > "$out/$v-eval.log" 2>&1
  a=$(auc "$out/$v/eval-test/report.json")
  [ -n "$base" ] || base=$a
  secs=$(python3 -c "import json, sys; print(round(json.load(open(sys.argv[1]))['train_seconds']))" "$out/$v/model.json")
  echo "| $v | ${extra[*]} $* | $(printf %.4f "$a") | $(awk -v a="$a" -v b="$base" 'BEGIN {printf "%+.4f", a - b}') | $secs |" >> "$table"
done
cat "$table"
