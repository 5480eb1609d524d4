#!/usr/bin/env bash
# Runs each fuzz target of fuzz/ (libFuzzer, AddressSanitizer, nightly) for SECONDS from the
# seed corpora that crates/xray-codec's example fuzz_seeds writes, with a fixed seed, and
# prints executions and crashes per target. Exits non-zero on the first crash (its input is
# kept in fuzz/artifacts/TARGET/).
#
#   scripts/fuzz.sh [SECONDS]        # default 300 (make fuzz); CI runs it with 60
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-300}"
scripts/setup/fuzz.sh
cargo run --quiet --release -p xray-codec --example fuzz_seeds -- fuzz/corpus
for target in dicom_decode c_store_stream; do
    log="fuzz/artifacts/$target.log"
    mkdir -p "fuzz/artifacts/$target"
    echo "fuzz: $target for $seconds s"
    status=0
    # -malloc_limit_mb: one allocation over 1 GiB is a finding (a bomb the limits missed).
    cargo +nightly fuzz run --release "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -seed=1 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        -timeout=20 -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "fuzz: $target: ${runs:-?} executions, exit $status"
    if [ "$status" != 0 ]; then
        # The finding's kind and stack, without the input's bytes (kept under artifacts/).
        grep -m 60 -e ERROR -e '^    #[0-9]' -e 'panicked' -e 'artifacts/' "$log" || tail -20 "$log"
        exit "$status"
    fi
done
