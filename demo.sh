#!/usr/bin/env bash
# The Ambit demo: Istio's guestbook scenario on a cluster built from network
# namespaces, with the real CA and one real agent per node.
#
#   sudo ./demo.sh              # pauses 1.5 s between steps
#   sudo ./demo.sh --interactive  # waits for Enter between steps
#
# On a fresh Debian/Ubuntu machine it installs what is missing (iptables,
# iproute2, openssl, tcpdump, protoc, a C compiler, Rust), builds release
# binaries and runs `ambit-demo`, which tears everything down at the end and
# on Ctrl-C. Only namespaces it creates are touched; nothing leads out.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh needs root (network namespaces, iptables): sudo $0 $*" >&2
  exit 1
fi

need=()
for pair in iptables:iptables ip:iproute2 protoc:protobuf-compiler openssl:openssl \
            tcpdump:tcpdump cc:build-essential curl:curl pkill:procps; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# protoc needs the well-known types (google/protobuf/struct.proto) the CA API imports.
[ -f /usr/include/google/protobuf/struct.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing ${need[*]}..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends ca-certificates "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "Installing Rust (rustup, minimal profile)..."
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi

echo "Building release binaries (the first build takes a few minutes)..."
cargo build --release --locked -p ambit-agent -p ambit-ca -p ambit-tests --bins

target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
export AMBIT_BIN_DIR="$target/release"
exec "$AMBIT_BIN_DIR/ambit-demo" "$@"
