# elb in a container. It cannot be built on the development machines (no
# image registry there); the steps are those of `cargo xtask setup` and
# `cargo xtask dist`, which are tested.
#
#   docker build -t elb .
#   docker run --privileged --net host -v /sys/fs/bpf:/sys/fs/bpf \
#       elb run --name ELB --listen 0.0.0.0:80 --etcd 127.0.0.1:2379 --xdp-iface eth0
#
# --net host: elb's listeners and XDP are the host's. -v /sys/fs/bpf: the
# pinned maps and links outlive the container, so a new container adopts
# the running data plane (without it, a restart loses them: see README).

# --- build: the pinned toolchains (rust-toolchain.toml files) ---
FROM debian:trixie AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        ca-certificates curl build-essential pkg-config git \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
# Stable (rust-toolchain.toml), the eBPF nightly and bpf-linker against the
# nightly's own LLVM (see TOOLCHAIN notes in xtask/src/setup.rs).
RUN cargo xtask setup
RUN cargo xtask dist

# --- runtime: the binary and the default configuration ---
FROM debian:trixie-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/dist/elb/bin/elb /usr/local/bin/elb
COPY --from=build /src/target/dist/elb/etc/elb /etc/elb
ENTRYPOINT ["/usr/local/bin/elb"]
CMD ["run", "--help"]
