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
#   python3-venv python3-dev    the pymesos venv (scripts/pyclient-venv.sh): `python3 -m venv`,
#                               and Python.h for http-parser's C extension
#   curl ca-certificates        fetching rustup when no Rust toolchain is present
#   procps iproute2             process and network tools the tests and operators use
#   qemu-system-x86             the VM suite (tests/tests/vm.rs): boots Debian's kernel under TCG
#   busybox-static              the VM suite's guest userland (static, so no libraries to copy)
#   cpio                        packing the VM suite's initramfs
#   crun                        the OCI runtime `corral bench launch` compares against
DEBIAN_PACKAGES="build-essential pkg-config python3 python3-venv python3-dev curl ca-certificates \
procps iproute2 qemu-system-x86 busybox-static cpio crun clang libbpf-dev"

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

# Debian's current kernel image at .vm/vmlinuz (repo root), for the VM suite: the package that
# linux-image-amd64 depends on, downloaded into .vm/ (ignored by git), only ./boot/vmlinuz-*
# extracted (no modules needed: the guest uses what is built in). Does nothing when it is there.
fetch_vm_kernel() {
  local root dir pkg deb img
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  dir="$root/.vm"
  if [ -s "$dir/vmlinuz" ]; then
    return
  fi
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update
    pkg=$(apt-cache depends linux-image-amd64 \
      | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  if [ -z "$pkg" ]; then
    echo "fetch_vm_kernel: 'apt-cache depends linux-image-amd64' names no" \
      "linux-image-<version>-amd64 (run apt-get update?)" >&2
    return 1
  fi
  mkdir -p "$dir"
  deb=$(ls "$dir/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    echo "fetch_vm_kernel: downloading $pkg"
    # As root, not apt's sandbox user (which cannot write into the checkout).
    (cd "$dir" && apt-get download -o APT::Sandbox::User=root "$pkg")
    deb=$(ls "$dir/${pkg}"_*.deb | head -n1)
  fi
  img="boot/vmlinuz-${pkg#linux-image-}"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" --wildcards './boot/vmlinuz-*'
  if [ ! -s "$dir/$img" ]; then
    echo "fetch_vm_kernel: $deb has no ./$img" >&2
    return 1
  fi
  ln -sfn "$img" "$dir/vmlinuz"
  echo "fetch_vm_kernel: $dir/vmlinuz -> $img"
}

setup() {
  install_packages
  install_rust
  cd "$(dirname "$0")/.."
}
