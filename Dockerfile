# syntax=docker/dockerfile:1
# full_proxy, the tower-gemini gateway, as a small non-root image.
#
#   docker build -t tower-gemini .
#   docker run --rm -p 8080:8080 --env-file .env tower-gemini
#
# or `docker compose up -d` (gateway + Redis, see docker-compose.yml). Configuration is by
# environment variables only (README, "Configuration"); no flag is needed.

# --- build -----------------------------------------------------------------------------------
# Debian bookworm on both sides, so the binary's glibc matches the runtime image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The same command .ci/run proves on every run ("release build of full_proxy").
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --example full_proxy \
    && install -m 0755 target/release/examples/full_proxy /usr/local/bin/full_proxy

# --- run -------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# TLS roots are compiled in (webpki-roots), so the image needs no extra package; bash (already
# in the image) runs the health check.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /usr/local/bin/full_proxy /usr/local/bin/full_proxy
WORKDIR /app
USER 10001:10001
ENV LISTEN_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
EXPOSE 8080
# GET /health over bash's /dev/tcp (no curl in the image); the port follows LISTEN_ADDR.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${LISTEN_ADDR##*:} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/full_proxy"]
