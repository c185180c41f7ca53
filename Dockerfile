# One image holding both binaries, /usr/local/bin/planner and
# /usr/local/bin/worker, running as a non-root user on a minimal base.
#   docker build -t task-system:0.1.0 .
# The Helm chart in chart/ runs it (see chart/README.md).

# --- build ------------------------------------------------------------------
FROM rust:1.95-trixie AS build
# The worker's build script compiles the built-in add/mul op modules for this
# target and embeds them.
RUN rustup target add wasm32-unknown-unknown
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p planner -p worker \
    && install -D -m 0755 target/release/planner /out/planner \
    && install -D -m 0755 target/release/worker /out/worker

# --- run --------------------------------------------------------------------
# glibc and libgcc, nothing else (no shell); the same Debian release as the
# builder so the binaries find the glibc they were linked against.
FROM gcr.io/distroless/cc-debian13:nonroot
COPY --from=build /out/planner /out/worker /usr/local/bin/
# distroless's `nonroot` user; the chart's securityContext also requires it.
USER 65532:65532
# The planner's port; workers listen on 8080.
EXPOSE 3000 8080
ENTRYPOINT ["/usr/local/bin/planner"]
CMD ["serve"]
