# Container image for moat. NOTE: written without a Docker engine and NOT BUILT here; build and test it before relying on it.
#
#   docker build -t moat .
#   docker run --rm -p 8080:8080 moat                      # serves conf/container.yaml (moat's own answers on 0.0.0.0)
#   docker run --rm -p 8080:8080 -v $PWD/my.yaml:/etc/moat/moat.yaml moat run -c /etc/moat/moat.yaml
#   docker compose -f deploy/compose.yaml up --build       # Redis, two moat sharing limits, a demo upstream
#
# The image holds /usr/local/bin/moat and /usr/local/bin/moat-demo-upstream (examples/upstream:
# the demo target deploy/compose.yaml runs), and conf/ as /etc/moat/.
#
# Stopping: `docker stop` sends SIGTERM, which stops moat fast. For a graceful drain
# (finish in-flight requests, Pingora's graceful shutdown), send SIGQUIT first:
#   docker kill --signal=QUIT <container>
# The config's listeners must bind 0.0.0.0 (not 127.0.0.1) to be reachable through -p;
# the admin listener may stay on 127.0.0.1:9901, which is all the HEALTHCHECK needs.

############################ builder ############################
FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build

# Dependency layer: compile every dependency against stub sources, so that editing
# src/ does not rebuild them. Every target that Cargo.toml names explicitly needs a
# stub here (currently src/lib.rs, src/main.rs, benches/router.rs, benches/auth.rs,
# benches/limits.rs, benches/limits_redis.rs, benches/framing.rs, benches/chain.rs and the
# workspace member plugins/stamp), and so does every example the real build builds
# (examples/upstream: building an example also builds the dev-dependencies).
COPY Cargo.toml Cargo.lock ./
COPY plugins/stamp/Cargo.toml plugins/stamp/Cargo.toml
RUN mkdir -p src benches examples \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > examples/upstream.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/router.rs \
 && echo 'fn main() {}' > benches/auth.rs \
 && echo 'fn main() {}' > benches/limits.rs \
 && echo 'fn main() {}' > benches/limits_redis.rs \
 && echo 'fn main() {}' > benches/framing.rs \
 && echo 'fn main() {}' > benches/chain.rs \
 && mkdir -p plugins/stamp/src && echo 'fn main() {}' > plugins/stamp/src/main.rs \
 && cargo build --release --locked --bin moat --example upstream \
 && rm -rf src benches examples plugins/stamp/src

# The real build. COPY keeps the files' old mtimes, which can look older than the
# stub build's outputs: drop the stubs' fingerprints (the crate's and the example's) so
# cargo rebuilds them.
COPY src ./src
COPY docs ./docs
COPY plugins ./plugins
COPY benches ./benches
COPY examples ./examples
RUN rm -rf target/release/.fingerprint/moat-* target/release/deps/moat-* target/release/deps/libmoat-* \
        target/release/.fingerprint/upstream-* target/release/examples/upstream* \
 && cargo build --release --locked --bin moat --example upstream \
 && install -m 0755 target/release/moat /usr/local/bin/moat \
 && install -m 0755 target/release/examples/upstream /usr/local/bin/moat-demo-upstream

############################ runtime ############################
FROM debian:bookworm-slim
# libssl3: moat links OpenSSL dynamically; curl: only for the HEALTHCHECK below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system moat \
 && useradd --system --gid moat --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin moat

COPY --from=builder /usr/local/bin/moat /usr/local/bin/moat
COPY --from=builder /usr/local/bin/moat-demo-upstream /usr/local/bin/moat-demo-upstream
COPY conf/ /etc/moat/

USER moat
EXPOSE 8080 9901
# SIGTERM = fast stop (what `docker stop` sends); SIGQUIT = graceful shutdown, see above.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:9901/healthz || exit 1

ENTRYPOINT ["moat"]
CMD ["run", "-c", "/etc/moat/container.yaml"]
