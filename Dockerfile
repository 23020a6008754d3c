# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian as a non-root user.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin switchboard \
 && cp target/release/switchboard /usr/local/bin/switchboard

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin switchboard \
 && mkdir -p /data /etc/switchboard \
 && chown switchboard /data
COPY --from=build /usr/local/bin/switchboard /usr/local/bin/switchboard
COPY config /etc/switchboard
ENV SWITCHBOARD_CONFIG_DIR=/etc/switchboard \
    SWITCHBOARD_PROFILE=production \
    SWITCHBOARD_BIND=0.0.0.0:3000 \
    SWITCHBOARD_DATA_DIR=/data
USER switchboard
VOLUME ["/data"]
EXPOSE 3000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:3000/health || exit 1
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["serve"]
