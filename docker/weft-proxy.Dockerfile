# syntax=docker/dockerfile:1
# weft-proxy, the sidecar: one statically linked binary (musl) in an empty
# image, run as the proxy's UID. The injector runs it as
#   command: ["/weft-proxy"], args: ["run", ...]
# Build from the repository's root:
#   docker build -f docker/weft-proxy.Dockerfile -t weft-proxy:0.1.0 .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# ring compiles its C and assembly for the musl target with musl-gcc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
# No debug info and no symbols in the image (the workspace's release
# profile keeps line tables for backtraces on a developer's machine).
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    triple="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$triple" -p weft-proxy --bin weft-proxy \
 && mkdir -p /out \
 && cp "target/$triple/release/weft-proxy" /out/weft-proxy

FROM scratch
COPY --from=build /out/weft-proxy /weft-proxy
# The proxy's own UID: `weft-proxy init` leaves this UID's traffic alone.
USER 2420:2420
ENTRYPOINT ["/weft-proxy"]
CMD ["run"]
