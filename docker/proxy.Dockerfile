# portico-proxy: the data plane (sidecar and gateway modes), running as non-root.
# Build from the repository root: docker build -f docker/proxy.Dockerfile -t portico-proxy .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p portico-proxy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portico-proxy /usr/local/bin/portico-proxy
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/portico-proxy"]
