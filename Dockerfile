# syntax=docker/dockerfile:1
#
# The lxd-mutater controller image, for deploy/kubernetes:
#   docker build -t REGISTRY/lxd-mutater:TAG .
#
# NOT BUILT IN THIS REPOSITORY'S TESTS: the development machines have no Docker engine (or
# any other image builder), so no image has been built from this file here. What it runs
# is what `make install` runs (`cargo build --release --locked`), which the tests do build.
#
# Two stages: the Rust toolchain builds a release binary (Debian 12, like the runtime, so
# the glibc it links against matches); the runtime is distroless (glibc, CA certificates,
# no shell, no package manager) and runs as the unprivileged user 65532.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The whole workspace (crates/ is a member; benches/ and tests/ are named in Cargo.toml);
# .dockerignore keeps target/ and .git out of the context.
COPY . .
# The cache mounts (BuildKit) keep the registry and the build between builds; the binary
# is copied out of the cached target/ in the same step, since the cache is not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin lxd-mutater \
    && install -D -m 0755 target/release/lxd-mutater /out/lxd-mutater

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/lxd-mutater /usr/local/bin/lxd-mutater
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 65532:65532
# --listen (the Deployment passes 0.0.0.0:8080): /metrics, /healthz, /readyz.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/lxd-mutater"]
CMD ["--help"]
