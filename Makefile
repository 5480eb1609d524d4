# The two commands of the README, each doing its own set-up on a fresh machine:
#   make demo   synth -> split -> train -> eval -> predict on the CPU
#   make test   the whole test suite (installs Chromium for the browser tests)
# libtorch 2.11.0 comes from the PyPI torch wheel, installed once into
# $XRAY_TORCH_HOME (default ~/.cache/xray/torch-2.11.0) by scripts/libtorch.sh.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
# LIBTORCH for torch-sys; the build script sets an rpath, so the binary needs no LD_LIBRARY_PATH.
TORCH_ENV = LIBTORCH="$$(scripts/libtorch.sh)" LIBTORCH_CXX11_ABI=1

.PHONY: demo test build lint libtorch clean-runs

demo: build
	target/release/xray demo

test: libtorch
	scripts/chromium.sh
	$(TORCH_ENV) $(CARGO) test --release

build: libtorch
	$(TORCH_ENV) $(CARGO) build --release

lint: libtorch
	$(CARGO) fmt --check
	$(TORCH_ENV) $(CARGO) clippy --release --all-targets -- -D warnings

libtorch:
	@scripts/libtorch.sh >/dev/null

clean-runs:
	rm -rf checkpoints/demo-* checkpoints/latest datasets/synth datasets/synth-split
