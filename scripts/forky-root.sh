#!/usr/bin/env bash
# A Debian forky (testing) root with the engines people run today
# (containerd 2.1, runc, crun, Docker 28, podman 5.8), beside the bookworm
# host and without touching its packages (see ENGINES.md in the project's
# shared notes), and a way to run a command in it.
#
#   scripts/forky-root.sh build   builds the root unless it is cached; prints its path
#   scripts/forky-root.sh path    prints the path the current key gives (built or not)
#   scripts/forky-root.sh run [--bind PATH]... -- CMD [ARG]...
#                                 runs CMD in the root (exec: CMD gets this pid)
#
# The root is made with `debootstrap --variant=minbase` from the Debian
# archive this machine's apt sources use (scripts/debian-archive.sh; apt's
# http proxy too), cached in $KATA_SRIOV_CACHE (default
# /var/cache/kata-sriov) as forky-<key>, where the key hashes the suite, the
# package list and ROOT_FORMAT below: change any of them and the next build
# makes a new root (and removes the old ones). A build goes to a temporary
# directory renamed into place when complete, under a lock, so an
# interrupted or concurrent build never leaves a half root behind.
#
# `run` enters a private mount namespace (unshare -m) and chroots into an
# overlay of the cached root with a tmpfs upper layer, so whatever the
# command writes (/var/lib/docker, /etc ...) is gone when its namespace
# ends and the cache stays as built. Inside: /proc, /sys and /dev (with
# /dev/shm) of the host, an empty tmpfs /run, this checkout (and
# $CARGO_TARGET_DIR) at the same path, so the built binaries run there
# unchanged, plus each --bind PATH (same path) or --bind SRC:DST. Separate
# `run`s share only those: put sockets and state a daemon and its clients
# share under /dev/shm or a bound path.
#
# KATA_SRIOV_FORKY_ROOT, when set, names a ready root to use instead.
set -euo pipefail

ROOT_FORMAT=1
SUITE=forky
PACKAGES=containerd,runc,crun,docker.io,docker-cli,podman,iproute2,ca-certificates
# What `build` reports (and the stamp file records) from the new root.
VERSIONS_OF="containerd runc crun docker.io docker-cli podman"

here=$(cd "$(dirname "$0")" && pwd)
checkout=$(cd "$here/.." && pwd)
cache=${KATA_SRIOV_CACHE:-/var/cache/kata-sriov}

die() { echo "forky-root: $*" >&2; exit 1; }

key() {
  printf '%s\n%s\n%s\n' "$ROOT_FORMAT" "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12
}

root_path() {
  if [ -n "${KATA_SRIOV_FORKY_ROOT:-}" ]; then
    echo "$KATA_SRIOV_FORKY_ROOT"
  else
    echo "$cache/$SUITE-$(key)"
  fi
}

build() {
  local root tmp keyring=() script=/usr/share/debootstrap/scripts/sid
  root=$(root_path)
  if [ -f "$root/.kata-sriov-root" ]; then
    echo "$root"
    return
  fi
  [ -z "${KATA_SRIOV_FORKY_ROOT:-}" ] || die "KATA_SRIOV_FORKY_ROOT=$root is not a root made by this script (no $root/.kata-sriov-root)"
  [ "$(id -u)" = 0 ] || die "building the root needs root"
  command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/install-deps.sh installs it)"
  # bookworm's debootstrap has no script for forky; sid's makes any
  # testing/unstable suite.
  [ -f "$script" ] || die "$script is missing"
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9
  if [ -f "$root/.kata-sriov-root" ]; then
    echo "$root"
    return
  fi
  . "$here/debian-archive.sh"
  debian_archive
  [ -z "$DEBIAN_SIGNED_BY" ] || keyring=(--keyring="$DEBIAN_SIGNED_BY")
  # debootstrap does not read apt's configuration: pass its proxy on.
  local http_proxy_apt=
  eval "$(apt-config shell http_proxy_apt Acquire::http::Proxy)"
  if [ -n "$http_proxy_apt" ] && [ -z "${http_proxy:-}" ]; then
    export http_proxy=$http_proxy_apt
  fi
  rm -rf "$cache"/."$SUITE"-*.tmp
  tmp=$cache/.$SUITE-$(key).tmp
  echo "forky-root: building $root from $DEBIAN_URI ($SUITE: $PACKAGES)" >&2
  if ! debootstrap --variant=minbase "${keyring[@]}" --include="$PACKAGES" \
    "$SUITE" "$tmp" "$DEBIAN_URI" "$script" >"$cache/.build.log" 2>&1; then
    tail -n 30 "$cache/.build.log" >&2
    rm -rf "$tmp"
    die "debootstrap failed (log: $cache/.build.log)"
  fi
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_Packages
  # shellcheck disable=SC2086
  chroot "$tmp" dpkg-query -W -f '${Package} ${Version}\n' $VERSIONS_OF >"$tmp/.kata-sriov-versions" \
    || die "the new root lacks one of: $VERSIONS_OF"
  printf 'format=%s\nsuite=%s\npackages=%s\narchive=%s\n' \
    "$ROOT_FORMAT" "$SUITE" "$PACKAGES" "$DEBIAN_URI" >"$tmp/.kata-sriov-root"
  mv -T "$tmp" "$root"
  # Roots of older keys are never used again.
  local old
  for old in "$cache/$SUITE"-*; do
    [ "$old" = "$root" ] || [ ! -f "$old/.kata-sriov-root" ] || rm -rf "$old"
  done
  cat "$root/.kata-sriov-versions" >&2
  echo "$root"
}

run() {
  local binds=()
  while [ $# -gt 0 ]; do
    case $1 in
      --bind) [ $# -ge 2 ] || die "--bind needs a path"; binds+=("$2"); shift 2 ;;
      --) shift; break ;;
      *) die "run: unknown option $1 (usage: run [--bind PATH|SRC:DST]... -- CMD [ARG]...)" ;;
    esac
  done
  [ $# -gt 0 ] || die "run: no command (usage: run [--bind PATH|SRC:DST]... -- CMD [ARG]...)"
  local root
  root=$(root_path)
  [ -f "$root/.kata-sriov-root" ] || die "no root at $root: run \`scripts/forky-root.sh build\` first"
  binds+=("$checkout")
  if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    binds+=("$(cd "$CARGO_TARGET_DIR" && pwd)")
  fi
  local b
  for b in "${binds[@]}"; do
    [ -e "${b%%:*}" ] || die "--bind ${b}: ${b%%:*} does not exist"
  done
  # The mount point of each namespace's tmpfs: one empty directory on the
  # host, covered privately in every namespace.
  mkdir -p "$cache/mnt"
  exec unshare -m --propagation private -- "$0" __enter "$root" "$cache/mnt" "${#binds[@]}" "${binds[@]}" "$@"
}

# In the new namespace: overlay, mounts, chroot.
enter() {
  local root=$1 w=$2 n=$3
  shift 3
  local binds=("${@:1:$n}")
  shift "$n"
  mount -t tmpfs -o mode=0755 kata-sriov-forky "$w"
  mkdir "$w/upper" "$w/work" "$w/root"
  mount -t overlay overlay -o "lowerdir=$root,upperdir=$w/upper,workdir=$w/work" "$w/root"
  local r=$w/root
  mount -t proc proc "$r/proc"
  mount --rbind /sys "$r/sys"
  mount --rbind /dev "$r/dev"
  mount -t tmpfs -o mode=0755 tmpfs "$r/run"
  local b src dst
  for b in "${binds[@]}"; do
    src=${b%%:*}
    dst=${b#*:}
    if [ -d "$src" ]; then mkdir -p "$r$dst"; else mkdir -p "$(dirname "$r$dst")"; touch "$r$dst"; fi
    mount --rbind "$src" "$r$dst"
  done
  # The root's own tools first; the caller's PATH (a directory with our
  # shim, say) after them.
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}
  exec chroot "$r" "$@"
}

case ${1:-} in
  build) build ;;
  path) root_path ;;
  run) shift; run "$@" ;;
  __enter) shift; enter "$@" ;;
  *) die "usage: $0 build | path | run [--bind PATH|SRC:DST]... -- CMD [ARG]..." ;;
esac
