#!/usr/bin/env bash
# Measures a trained run's out-of-distribution guard: AUROC of its score between the run's own
# test split and sets the model never saw (X-rays rotated 90 degrees or inverted, synth images
# at half exposure, scikit-image's sample photos, uniform noise), and each set's flag rate at
# the stored threshold. Everything is built offline; scikit-image and scikit-learn come from
# PyPI into a venv outside the repository.
#
#   scripts/experiments/ood_measure.sh RUN_DIR [OUT_DIR]     (default OUT_DIR target/ood-measure)
#
# docs/serve.md's table: RUN_DIR a configs/pneumonia.toml run on the Kermany split.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
run=${1:?usage: $0 RUN_DIR [OUT_DIR]}
out=${2:-target/ood-measure}
xray=${XRAY:-target/release/xray}
venv=${XRAY_OOD_VENV:-$HOME/.cache/xray/ood-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q scikit-image scikit-learn pillow
fi
py="$venv/bin/python"
mkdir -p "$out"
"$py" scripts/experiments/ood_sets.py build "$run" "$out" "$xray"
for set in "$out"/sets/*/; do
  name=$(basename "$set")
  "$xray" predict --checkpoint "$run" --format json "$set" > "$out/$name.jsonl"
done
"$py" scripts/experiments/ood_sets.py score "$out"
