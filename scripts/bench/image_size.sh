#!/usr/bin/env bash
# The size of the container image the Dockerfile builds, and a check that its runtime stage is
# complete, on a machine without a container engine:
#   1. the payload the runtime stage copies: the release binary and the libtorch libraries that
#      ldd resolves under the libtorch folder (the Dockerfile's own selection);
#   2. with debootstrap (as root): a minimal Debian bookworm (minbase, then stripped of docs,
#      man pages and locales as the slim image is) with the payload installed as the
#      Dockerfile installs it; `xray --version` and `xray synth` run inside it with chroot,
#      and the folder's size is the image's size, uncompressed.
# Where docker runs, `docker build -t xray . && docker image ls xray` gives the real number.
#
#   scripts/bench/image_size.sh [ROOTFS_CACHE=/tmp/xray-bookworm-minbase]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
xray=$PWD/target/release/xray
[ -x "$xray" ] || { echo "image size: build first (make build)" >&2; exit 1; }
torch=$(scripts/setup/libtorch.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lib"
ldd "$xray" | awk -v t="$(dirname "$torch")" '$3 ~ "^"t { print $3 }' | xargs -I{} cp -L {} "$work/lib/"
mib() { du -sm "$1" | cut -f1; }
echo "## 1. Payload of the runtime stage"
echo "| file | MiB |"
echo "|---|---|"
printf '| xray | %s |\n' "$(mib "$xray")"
for f in "$work"/lib/*; do printf '| %s | %s |\n' "$(basename "$f")" "$(mib "$f")"; done
payload=$(( $(mib "$xray") + $(mib "$work/lib") ))
echo "payload: $payload MiB"

command -v debootstrap >/dev/null && [ "$(id -u)" = 0 ] || {
    echo "(no debootstrap or not root: the base image is not measured)"
    exit 0
}
base=${1:-/tmp/xray-bookworm-minbase}
if [ ! -x "$base/bin/bash" ]; then
    echo "debootstrap: a minimal bookworm into $base (a few minutes, once)" >&2
    debootstrap --variant=minbase bookworm "$base" http://deb.debian.org/debian >/dev/null
    rm -rf "$base"/var/cache/apt/archives/*.deb "$base"/var/lib/apt/lists/* \
        "$base"/usr/share/doc/* "$base"/usr/share/man/* "$base"/usr/share/locale/* \
        "$base"/usr/share/info/*
fi
root="$work/root"
cp -a "$base" "$root"
echo "## 2. The runtime stage rebuilt with debootstrap"
echo "base (bookworm minbase, docs/man/locales removed): $(mib "$root") MiB"
install -D "$xray" "$root/usr/local/bin/xray"
mkdir -p "$root/usr/local/lib/xray"
cp "$work"/lib/* "$root/usr/local/lib/xray/"
echo /usr/local/lib/xray > "$root/etc/ld.so.conf.d/xray.conf"
chroot "$root" ldconfig
chroot "$root" /usr/local/bin/xray --version
chroot "$root" /usr/local/bin/xray synth --out /tmp/s --per-class 2 --size 32 >/dev/null
echo "xray synth ran inside it"
echo "image, uncompressed: $(mib "$root") MiB"
