# Build: the release binary (thin LTO; fhirbolt stays in crates/cairn-fhir, compiled at opt-level 1).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libpq-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin cairn

# Run: a small Debian image with libpq, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/cairn --create-home cairn
COPY --from=build /src/target/release/cairn /usr/local/bin/cairn
USER cairn
WORKDIR /var/lib/cairn
ENV CAIRN_LISTEN=0.0.0.0:8080 \
    CAIRN_DATA_DIR=/var/lib/cairn \
    CAIRN_DATABASE_URL=sqlite:///var/lib/cairn/cairn.sqlite \
    CAIRN_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["cairn"]
CMD ["serve"]
