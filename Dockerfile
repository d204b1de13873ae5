# Multi-stage build of the chatmesh node: build with the Rust toolchain, run on
# a slim Debian with only the binary (and curl for health checks).
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release -p chatmesh && cp target/release/chatmesh /chatmesh

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 chatmesh
COPY --from=build /chatmesh /usr/local/bin/chatmesh
USER chatmesh
ENV CHATMESH_HTTP__LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s --retries=10 CMD curl -fs http://127.0.0.1:8080/ready || exit 1
ENTRYPOINT ["/usr/local/bin/chatmesh"]
