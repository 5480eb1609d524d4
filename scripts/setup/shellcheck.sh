#!/usr/bin/env bash
# Installs Debian's shellcheck for `make lint` when it is missing. Needs root (apt-get);
# without it, and without shellcheck, `make lint` fails saying so.
set -euo pipefail
command -v shellcheck >/dev/null && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "shellcheck: missing and not root; install it (apt-get install shellcheck)" >&2
    exit 1
fi
apt-get install -y shellcheck >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y shellcheck >/dev/null; }
