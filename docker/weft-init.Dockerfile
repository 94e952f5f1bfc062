# syntax=docker/dockerfile:1
# weft-init, the injected init container: the same static weft-proxy
# binary, with iptables (`weft-proxy init` runs iptables-restore and
# ip6tables-restore in the pod's network namespace). It runs as root with
# NET_ADMIN and NET_RAW only, as the injector asks:
#   command: ["/weft-proxy"], args: ["init", ...]
# Build from the repository's root:
#   docker build -f docker/weft-init.Dockerfile -t weft-init:0.1.0 .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    triple="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$triple" -p weft-proxy --bin weft-proxy \
 && mkdir -p /out \
 && cp "target/$triple/release/weft-proxy" /out/weft-proxy

FROM debian:bookworm-slim
# iptables 1.8.9 (the nf_tables backend by default; `--iptables
# iptables-legacy --ip6tables ip6tables-legacy` selects the legacy one).
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/weft-proxy /weft-proxy
USER 0:0
ENTRYPOINT ["/weft-proxy"]
CMD ["init"]
