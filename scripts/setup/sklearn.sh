#!/usr/bin/env bash
# Installs scikit-learn into the libtorch cache's venv (scripts/setup/libtorch.sh), so that the
# tests can check xray's multi-label metrics against scikit-learn's on the same predictions, and
# prints that venv's python.
#
#   scripts/setup/sklearn.sh
#
# Idempotent: when scikit-learn imports, it only prints the path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

SKLEARN_VERSION=1.9.1
torch_dir=$(scripts/setup/libtorch.sh)
python="$torch_dir/../../../../bin/python"
if ! "$python" -c "import sklearn" 2>/dev/null; then
  printf 'sklearn: installing scikit-learn %s into the libtorch venv\n' "$SKLEARN_VERSION" >&2
  "$python" -m pip install --quiet "scikit-learn==$SKLEARN_VERSION"
fi
printf '%s\n' "$python"
