# syntax=docker/dockerfile:1
# xray in a container. The build stage runs the README's own commands (scripts/setup/libtorch.sh
# puts libtorch 2.11.0 from the PyPI torch wheel into XRAY_TORCH_HOME; cargo builds the release
# binary). The runtime stage is Debian slim with the binary and only the libtorch libraries it
# links (found with ldd: libtorch_cpu, c10, gomp, and the two small CUDA runtime libraries that
# the wheel's libtorch_cpu names): no Python, no compiler, no wheel.
#
#   docker build -t xray .
#   docker run --rm -v "$PWD/checkpoints:/models:ro" -v "$PWD/scans:/scans:ro" xray \
#       predict --checkpoint /models/latest /scans
#   docker run --rm -p 8443:8443 ... xray serve --addr 0.0.0.0:8443 ...   (deploy/k8s/serve.yaml)
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV XRAY_TORCH_HOME=/opt/torch
RUN LIBTORCH="$(scripts/setup/libtorch.sh)" LIBTORCH_CXX11_ABI=1 cargo build --release --bin xray
RUN mkdir -p /out/lib \
    && cp target/release/xray /out/ \
    && ldd target/release/xray | awk '$3 ~ /^\/opt\/torch\// { print $3 }' \
        | xargs -I{} cp -L {} /out/lib/

FROM debian:bookworm-slim
COPY --from=build /out/xray /usr/local/bin/xray
COPY --from=build /out/lib/ /usr/local/lib/xray/
RUN echo /usr/local/lib/xray > /etc/ld.so.conf.d/xray.conf \
    && ldconfig \
    && useradd --system --uid 10001 --no-create-home xray \
    && xray --version
USER 10001
ENTRYPOINT ["xray"]
CMD ["--help"]
