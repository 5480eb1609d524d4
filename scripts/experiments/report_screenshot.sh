#!/usr/bin/env bash
# Renders an eval report in headless Chromium, checks that every picture loads and the console
# shows no error, and writes a full-page screenshot.
#   scripts/experiments/report_screenshot.sh RUN_DIR/eval-test/report.html [OUT.png]
# Needs Debian's chromium and chromium-driver (installed here with apt-get when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
report=$(realpath "${1:?usage: $0 REPORT.html [OUT.png]}")
shot=$(realpath -m "${2:-target/screenshots/report.png}")
scripts/setup/chromium.sh
XRAY_REPORT_HTML="$report" XRAY_SCREENSHOT="$shot" \
    LIBTORCH="$(scripts/setup/libtorch.sh)" LIBTORCH_CXX11_ABI=1 \
    cargo test --release --test integration -- --exact browser::eval_report_renders_in_chromium --nocapture
echo "screenshot: $shot"
