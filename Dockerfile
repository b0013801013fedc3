# syntax=docker/dockerfile:1.7
# The container images of the MCP gateway, one target each (BuildKit):
#   docker build --target gateway-service    -t mcp-gateway/gateway-service:0.1.0 .
#   docker build --target gateway-management -t mcp-gateway/gateway-management:0.1.0 .
#   docker build --target mcp-example-server -t mcp-gateway/mcp-example-server:0.1.0 .
# One builder stage compiles the three release binaries; each runtime stage is distroless
# (glibc, libssl for rediss://, CA certificates, tzdata; no shell, no package manager) and runs
# as the nonroot user (65532). Linted by hadolint (cargo xtask deploy check); no container engine
# has built them in this repository's CI.

ARG RUST_VERSION=1.95.0
ARG VERSION=0.1.0
ARG REVISION=unknown

# The full (not -slim) image has libssl-dev and pkg-config, which the Redis client's TLS
# (rediss://) links against, and the same Debian 12 as the runtime image.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and the target directory are BuildKit caches; the binaries are copied out of the
# cache in the same step, since a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p gateway-service -p gateway-management -p mcp-example-server \
 && mkdir -p /out \
 && cp target/release/gateway-service target/release/gateway-management \
       target/release/mcp-example-server /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.source="https://github.com/mcp-gateway-rs/mcp-gateway" \
      org.opencontainers.image.url="https://github.com/mcp-gateway-rs/mcp-gateway" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="mcp-gateway-rs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
USER 65532:65532

FROM runtime AS gateway-service
LABEL org.opencontainers.image.title="gateway-service" \
      org.opencontainers.image.description="MCP gateway data plane: session-aware reverse proxy for MCP servers"
COPY --from=build /out/gateway-service /usr/local/bin/gateway-service
# Data plane and admin (/healthz, /readyz, /metrics) listeners; loopback-only by default, so
# the image listens on every address.
ENV MCP_GATEWAY_LISTEN=0.0.0.0:8080 \
    MCP_GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 \
    MCP_GATEWAY_DATA_DIR=/var/lib/mcp-gateway
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/gateway-service"]

FROM runtime AS gateway-management
LABEL org.opencontainers.image.title="gateway-management" \
      org.opencontainers.image.description="MCP gateway control plane: management API and Kubernetes controller"
COPY --from=build /out/gateway-management /usr/local/bin/gateway-management
ENV MCP_GATEWAY_LISTEN=0.0.0.0:8080 \
    MCP_GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 \
    MCP_GATEWAY_DATA_DIR=/var/lib/mcp-gateway \
    MCP_GATEWAY_RUNTIME=kubernetes
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/gateway-management"]

FROM runtime AS mcp-example-server
LABEL org.opencontainers.image.title="mcp-example-server" \
      org.opencontainers.image.description="Example MCP server (streamable HTTP and HTTP+SSE) for trying the gateway"
COPY --from=build /out/mcp-example-server /usr/local/bin/mcp-example-server
ENV HOST=0.0.0.0 \
    PORT=8000
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/mcp-example-server"]
