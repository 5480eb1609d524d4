#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the browser tests when they are missing.
# Needs root (apt-get); without it the browser tests skip with a printed reason (and fail
# under CI=true, where they must run).
set -euo pipefail
command -v chromedriver >/dev/null && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "chromium: not root, not installing; browser tests will skip" >&2
    exit 0
fi
apt-get install -y chromium chromium-driver >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y chromium chromium-driver >/dev/null; }
