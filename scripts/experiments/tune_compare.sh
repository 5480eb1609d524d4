#!/usr/bin/env bash
# TPE against random search on synth data: configs/tune_synth.toml (simple_cnn, 64 px, a
# 5-key space, 8 epochs a trial, median pruning), TRIALS trials per search, for each seed, on
# one freshly written synth dataset. A trial's values depend only on the trials before it, so
# the first 12 trials of a longer search are the 12-trial search: the table gives the best
# validation AUC (complete trials) after 12 trials and after all of them, and the means.
#
#   scripts/experiments/tune_compare.sh [TRIALS=24] [SEEDS="0 1 2"] [--set KEY=VALUE ...]
# STRATEGIES="tpe" runs one side only (the other's columns print "-"): a trial's result does not
# depend on timing, so an earlier run's random column stands.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
trials=${1:-24}
seeds=${2:-"0 1 2"}
shift $(($# < 2 ? $# : 2))
LIBTORCH="$(scripts/setup/libtorch.sh)"
export LIBTORCH LIBTORCH_CXX11_ABI=1
cargo build --release -q
xray=target/release/xray
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$xray" synth --out "$work/data" --per-class 400 --size 64 --seed 1 >/dev/null
"$xray" split "$work/data" --out "$work/split" >/dev/null

# best CSV N: the best val_auc among complete trials numbered below N.
best() { awk -F, -v n="$2" 'NR > 1 && $1 < n && $2 == "complete" && $3 > b {b = $3} END {printf "%.4f", b}' "$1"; }
printf '%-6s %12s %12s %12s %12s\n' seed "random@12" "tpe@12" "random@$trials" "tpe@$trials"
declare -A sum
for seed in $seeds; do
  declare -A b=([random@12]=- [tpe@12]=- [random@$trials]=- [tpe@$trials]=-)
  for strategy in ${STRATEGIES:-random tpe}; do
    out="$work/$strategy-$seed"
    start=$(date +%s)
    "$xray" tune --config configs/tune_synth.toml --set "data.split=$work/split" "$@" \
      --strategy "$strategy" --trials "$trials" --seed "$seed" --out "$out" >/dev/null 2>"$work/log" ||
      { cat "$work/log" >&2; exit 1; }
    for n in $(printf "%s\n" 12 "$trials" | sort -un); do
      b[$strategy@$n]=$(best "$out/trials.csv" "$n")
      sum[$strategy@$n]=$(awk -v a="${sum[$strategy@$n]:-0}" -v b="${b[$strategy@$n]}" 'BEGIN {print a + b}')
    done
    echo "seed $seed $strategy: $(awk -F, 'NR > 1 && $2 == "pruned"' "$out/trials.csv" | wc -l) pruned, $(($(date +%s) - start)) s" >&2
    cp "$out/trials.csv" "${TUNE_COMPARE_KEEP:-$work}/$strategy-$seed.csv" 2>/dev/null || true
  done
  printf '%-6s %12s %12s %12s %12s\n' "$seed" "${b[random@12]}" "${b[tpe@12]}" "${b[random@$trials]}" "${b[tpe@$trials]}"
done
n=$(wc -w <<<"$seeds")
mean() { [ -n "${sum[$1]:-}" ] && awk -v s="${sum[$1]}" -v n="$n" 'BEGIN {printf "%.4f", s / n}' || echo -; }
printf '%-6s %12s %12s %12s %12s\n' mean "$(mean random@12)" "$(mean tpe@12)" "$(mean "random@$trials")" "$(mean "tpe@$trials")"
