#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need,
# then runs fmt/clippy checks, the unit and end-to-end tests (real netlink in
# network namespaces, real containerd + runc, real dockerd; and the engines
# people run today, containerd 2.1, Docker 28 and podman 5.8, from a Debian
# forky root that scripts/forky-root.sh builds and caches), and the SR-IOV
# lab (QEMU with an emulated igb NIC). Run as root on Debian bookworm (no
# sudo needed or used).
#   scripts/test.sh            everything
#   SKIP_LAB=1 scripts/test.sh without the lab
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root: the tests create network namespaces, run containerd and the lab" >&2; exit 1; }

step() { printf '\n==> %s\n' "$*"; }

step "installing dependencies"
scripts/install-deps.sh

step "forky root (containerd 2.1, Docker 28, podman 5.8; cached in ${KATA_SRIOV_CACHE:-/var/cache/kata-sriov})"
t=$SECONDS
scripts/forky-root.sh build
echo "forky root ready in $((SECONDS - t)) s"

step "cargo fmt --check, clippy"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building"
cargo build --workspace --locked

step "tests"
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"

if [ -z "${SKIP_LAB:-}" ] && [ -x tests/lab/run-all.sh ]; then
  step "SR-IOV lab"
  tests/lab/run-all.sh
fi
