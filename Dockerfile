# syntax=docker/dockerfile:1.7
# Titan container image: titan-server, titan-operator and titanctl in one small,
# non-root runtime image. The default entrypoint is titan-server; the operator's
# Deployment runs /usr/local/bin/titan-operator instead.
#
#   docker build -t ghcr.io/titan-dev/titan:0.1.0 .
#
# VERSION must equal the workspace crate version (scripts/ci/check-packaging.sh
# checks it against Cargo.toml and the chart's appVersion).
ARG RUST_VERSION=1.95
ARG VERSION=0.1.0

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# protox compiles the protos in pure Rust, so no protoc is needed; ring needs the
# C compiler that the rust image already ships. The cache mounts keep the
# registry and target dir between builds; binaries are copied out of the mount.
# titanctl is copied when the workspace builds it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out/bin \
    && cp target/release/titan-server target/release/titan-operator /out/bin/ \
    && if [ -f target/release/titanctl ]; then cp target/release/titanctl /out/bin/; fi

# Debian slim rather than distroless: the operator starts titan-server through a
# small /bin/sh entry script (bootstrap-or-join from the ConfigMap), and the server
# derives its default advertised address from `hostname -f`. Nothing else is added.
FROM docker.io/library/debian:bookworm-slim AS runtime
ARG VERSION
LABEL org.opencontainers.image.title="titan" \
      org.opencontainers.image.description="Titan: Kubernetes-native replicated key-value database and its operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# uid/gid 65532 matches the runAsUser of the operator and server pods.
RUN groupadd --system --gid 65532 titan \
    && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/titan --shell /usr/sbin/nologin titan \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/titan
COPY --from=build /out/bin/ /usr/local/bin/
USER 65532:65532
# A writable, non-root-owned working dir; the operator mounts the data PVC itself.
WORKDIR /var/lib/titan
# 5001 peer/admin gRPC, 6001 plaintext client TCP, 7001 client gRPC, 8080 HTTP.
EXPOSE 5001 6001 7001 8080
ENTRYPOINT ["/usr/local/bin/titan-server"]
