# syntax=docker/dockerfile:1
# weft-control, the control plane, and weftctl (package weftctl):
# statically linked binaries (musl) in an empty image, run as a non-root
# user. The Deployment runs
#   command: ["/weft-control"], args: ["--source", "kubernetes"]
# and `kubectl exec` can run `/weftctl status` there (no shell).
# Build from the repository's root:
#   docker build -f docker/weft-control.Dockerfile -t weft-control:0.1.0 .

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
 && cargo build --release --locked --target "$triple" -p weft-control -p weftctl --bins \
 && mkdir -p /out \
 && cp "target/$triple/release/weft-control" "target/$triple/release/weftctl" /out/

FROM scratch
COPY --from=build /out/weft-control /weft-control
COPY --from=build /out/weftctl /weftctl
# Public roots, for an OTLP collector or API server behind a public CA (the
# mesh and in-cluster API trust come from their own bundles).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# The same UID and GID as k8s/base/control-plane.yaml's securityContext.
USER 65532:65532
ENTRYPOINT ["/weft-control"]
