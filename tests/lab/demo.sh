#!/usr/bin/env bash
# The no-hardware demo: boots the SR-IOV lab (QEMU, emulated igb SR-IOV NIC,
# virtual IOMMU) and walks through a VF's life with the real binaries:
# created, claimed and configured on the PF, bound to vfio-pci, handed to a
# container spec, used, and returned with its original settings. Each step
# prints what kata-sriov did and then what the kernel reports.
# Needs root; installs what it needs (QEMU from bookworm-backports, the
# kernel) on the first run. About 3 minutes on 2 cores.
set -euo pipefail
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "demo: run as root (sudo): it boots a VM with QEMU and installs packages" >&2; exit 1; }

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say "preparing the lab (packages, kernel, initramfs)"
"$LAB_DIR/lab.sh" prepare
say "building kata-sriov"
(cd "$REPO" && cargo build --workspace --bins)
say "booting the lab VM and running the demo inside it"
for s in ${DEMO_SCENARIOS:-engine}; do
  KS_DEMO=1 "$LAB_DIR/lab.sh" run "$s"
done
say "done: every step above was checked against the kernel (ip -d link, sysfs, /dev/vfio)"
