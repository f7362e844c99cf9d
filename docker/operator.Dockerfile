# portico-operator: a static-ish Rust binary on a distroless base, running as non-root.
# Build from the repository root: docker build -f docker/operator.Dockerfile -t portico-operator .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p portico-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portico-operator /usr/local/bin/portico-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/portico-operator"]
