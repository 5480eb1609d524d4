#!/usr/bin/env bash
# Installs what `make fuzz` needs: the nightly toolchain (cargo-fuzz builds with sanitizer
# flags only nightly takes) and cargo-fuzz, each only when missing.
set -euo pipefail
log() { printf 'fuzz setup: %s\n' "$*" >&2; }
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "installing the nightly toolchain (minimal profile)"
    rustup toolchain install nightly --profile minimal >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (a minute or two, once)"
    cargo install cargo-fuzz --locked --quiet
fi
