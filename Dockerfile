# syntax=docker/dockerfile:1
# Sigil's images: `docker build --target operator -t sigil-operator .` and
# `--target issuer -t sigil-issuer .` (the issuer image also runs the token
# agent sidecar). Both are one static-ish Rust binary on distroless, non-root.
#
# The compile step is exactly what CI runs (.ci/run: cargo build --release
# --locked for both binaries), so it is exercised on every change even though
# no Docker engine is available there.

FROM rust:1.95-bookworm AS build
# aws-lc-rs builds its C core with cmake.
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p sigil-operator -p sigil-issuer \
 && mkdir /out && cp target/release/operator target/release/issuer /out/

# glibc (aws-lc-rs links dynamically against it), nothing else: no shell.
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/operator /usr/local/bin/operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/operator"]

FROM gcr.io/distroless/cc-debian12:nonroot AS issuer
COPY --from=build /out/issuer /usr/local/bin/issuer
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/issuer"]
