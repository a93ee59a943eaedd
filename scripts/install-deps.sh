#!/usr/bin/env bash
# Installs what the tests and the lab need on a fresh Debian bookworm machine
# that has only the Rust toolchain: containerd, runc, docker.io, iproute2,
# busybox, debootstrap (for the forky root of scripts/forky-root.sh),
# and QEMU >= 8.0 (igb) from bookworm-backports, plus what
# tests/lab/lab.sh uses to build its initramfs (cpio, xz, kmod). Safe to re-run:
# it only runs apt-get when something is missing.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install-deps: run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

# bookworm-backports from the same archive (mirror, proxy) and with the same
# key as the machine's own bookworm source.
src=/etc/apt/sources.list.d/bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  . "$(dirname "$0")/debian-archive.sh"
  debian_archive
  added_source=1
  {
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\n' "$DEBIAN_URI"
    [ -z "$DEBIAN_SIGNED_BY" ] || printf 'Signed-By: %s\n' "$DEBIAN_SIGNED_BY"
  } >"$src.tmp"
  mv "$src.tmp" "$src"
fi

need=()
for p in containerd runc docker.io iproute2 busybox-static cpio kmod xz-utils gzip pciutils jq containernetworking-plugins \
  util-linux procps e2fsprogs debootstrap; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
qemu_ok=
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
  v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
  if [ "${v:-0}" -ge 8 ] && qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'; then
    qemu_ok=1
  fi
fi
if [ ${#need[@]} -gt 0 ] || [ -z "$qemu_ok" ] || [ -n "${added_source:-}" ]; then
  apt-get update -q
fi
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi
if [ -z "$qemu_ok" ]; then
  apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
fi
