#!/usr/bin/env bash
# TPE against random search on synth data: configs/tune_synth.toml (simple_cnn, 64 px, a
# 5-key space), TRIALS trials each, for each seed, on one freshly written synth dataset.
# Prints the best validation AUC of each search (complete trials) and the means.
#
#   scripts/tune_compare.sh [TRIALS=12] [SEEDS="0 1 2"]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
trials=${1:-12}
seeds=${2:-"0 1 2"}
export LIBTORCH="$(scripts/libtorch.sh)" LIBTORCH_CXX11_ABI=1
cargo build --release -q
xray=target/release/xray
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$xray" synth --out "$work/data" --per-class 400 --size 64 --seed 1 >/dev/null
"$xray" split "$work/data" --out "$work/split" >/dev/null

best() { awk -F, 'NR > 1 && $2 == "complete" && $3 > b {b = $3} END {printf "%.4f", b}' "$1"; }
printf '%-6s %10s %10s\n' seed random tpe
declare -A sum
for seed in $seeds; do
  row=""
  for strategy in random tpe; do
    out="$work/$strategy-$seed"
    start=$(date +%s)
    "$xray" tune --config configs/tune_synth.toml --set "data.split=$work/split" \
      --strategy "$strategy" --trials "$trials" --seed "$seed" --out "$out" >/dev/null 2>"$work/log" ||
      { cat "$work/log" >&2; exit 1; }
    b=$(best "$out/trials.csv")
    sum[$strategy]=$(awk -v a="${sum[$strategy]:-0}" -v b="$b" 'BEGIN {print a + b}')
    row+=$(printf ' %10s' "$b")
    echo "seed $seed $strategy: best $b, $(awk -F, 'NR > 1 && $2 == "pruned"' "$out/trials.csv" | wc -l) pruned, $(($(date +%s) - start)) s" >&2
  done
  printf '%-6s%s\n' "$seed" "$row"
done
n=$(wc -w <<<"$seeds")
printf '%-6s %10.4f %10.4f\n' mean "$(awk -v s="${sum[random]}" -v n="$n" 'BEGIN {print s / n}')" \
  "$(awk -v s="${sum[tpe]}" -v n="$n" 'BEGIN {print s / n}')"
