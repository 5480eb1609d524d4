#!/usr/bin/env bash
# Installs libtorch 2.11.0 (the PyPI wheel `torch==2.11.0`) into a cache folder outside the
# repository, shared by every checkout on this machine, and prints the LIBTORCH path.
#
#   scripts/setup/libtorch.sh            # install if needed, print the path of torch/
#   XRAY_TORCH_HOME=/x scripts/setup/libtorch.sh
#
# Idempotent: when the wanted version is already there it only checks and prints (well under a
# second). The wheel is CUDA-enabled and libtorch_cpu.so needs libcudart, so it is installed with
# its dependencies (about 4.7 GB, a couple of minutes the first time).
set -euo pipefail

TORCH_VERSION=2.11.0
home="${XRAY_TORCH_HOME:-$HOME/.cache/xray/torch-$TORCH_VERSION}"
venv="$home/venv"

log() { printf 'libtorch: %s\n' "$*" >&2; }

torch_dir() {
  # The site-packages folder of the venv, whatever the Python minor version.
  local d
  for d in "$venv"/lib/python3*/site-packages/torch; do
    [ -d "$d" ] && { printf '%s\n' "$d"; return 0; }
  done
  return 1
}

installed_version() {
  local d
  d=$(torch_dir) || return 1
  sed -n "s/^__version__ = '\([^']*\)'.*/\1/p" "$d/version.py" 2>/dev/null
}

is_ready() {
  local v d
  v=$(installed_version) || return 1
  d=$(torch_dir) || return 1
  [[ "$v" == "$TORCH_VERSION" || "$v" == "$TORCH_VERSION"+* ]] &&
    [ -f "$d/lib/libtorch_cpu.so" ] && [ -f "$home/.complete" ]
}

if is_ready; then
  torch_dir
  exit 0
fi

mkdir -p "$home"
exec 9>"$home/.lock"
if ! flock -w 1800 9; then
  log "timed out waiting for another install to finish (lock $home/.lock)"
  exit 1
fi
# Another process may have finished the install while we waited for the lock.
if is_ready; then
  torch_dir
  exit 0
fi

command -v python3 >/dev/null || { log "python3 is required to install the torch wheel"; exit 1; }
log "installing torch==$TORCH_VERSION into $home (first time only: about 4.7 GB, a few minutes)"
rm -f "$home/.complete"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q \
  "torch==$TORCH_VERSION" >&2; then
  log "error: could not install torch==$TORCH_VERSION from PyPI (is the package registry reachable?)"
  exit 1
fi

v=$(installed_version || true)
if [[ "$v" != "$TORCH_VERSION" && "$v" != "$TORCH_VERSION"+* ]]; then
  log "error: installed torch reports version '${v:-none}', expected $TORCH_VERSION"
  exit 1
fi
touch "$home/.complete"
log "torch $v ready"
torch_dir
