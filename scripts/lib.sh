# Shared by scripts/dev and scripts/test: installs what a fresh Debian 12 machine lacks.
# Sourced, not run.

need_root() {
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      exec sudo -E "$0" "$@"
    fi
    echo "$(basename "$0"): needs root (cgroups, user switching); run it as root" >&2
    exit 1
  fi
}

# Debian packages the build and the tests use:
#   build-essential pkg-config  C toolchain for ring (TLS crypto) and libc bindings
#   python3                     the reference scheduler test (tests/python)
#   curl ca-certificates        fetching rustup when no Rust toolchain is present
#   procps iproute2             process and network tools the tests and operators use
DEBIAN_PACKAGES="build-essential pkg-config python3 curl ca-certificates procps iproute2"

install_packages() {
  local missing=""
  for p in $DEBIAN_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
  fi
}

# Rust 1.95 or newer (edition 2024); the workspace's rust-version.
install_rust() {
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  if command -v cargo >/dev/null 2>&1; then
    local v
    v=$(cargo --version | awk '{print $2}')
    if [ "$(printf '%s\n1.95.0\n' "$v" | sort -V | head -n1)" = "1.95.0" ]; then
      return
    fi
    if command -v rustup >/dev/null 2>&1; then
      rustup toolchain install 1.95.0 --profile minimal --component clippy,rustfmt
      rustup default 1.95.0
      return
    fi
  fi
  echo "installing Rust with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain 1.95.0 --component clippy,rustfmt
  . "$HOME/.cargo/env"
}

setup() {
  install_packages
  install_rust
  cd "$(dirname "$0")/.."
}
