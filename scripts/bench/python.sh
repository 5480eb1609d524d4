#!/usr/bin/env bash
# Prints the Python of the torch 2.11.0 venv that scripts/setup/libtorch.sh made, after installing
# the given packages into it when they are missing (e.g. torchvision==0.26.0 safetensors).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
torch_dir=$(scripts/setup/libtorch.sh)
venv=$(cd "$torch_dir/../../../.." && pwd)
py="$venv/bin/python"
for pkg in "$@"; do
  mod=${pkg%%=*}
  if ! "$py" -c "import $mod" 2>/dev/null; then
    echo "installing $pkg into $venv" >&2
    "$py" -m pip install -q --disable-pip-version-check "$pkg" >&2
  fi
done
echo "$py"
