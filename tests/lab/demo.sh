#!/usr/bin/env bash
# The no-hardware demo: boots the SR-IOV lab (QEMU, emulated igb SR-IOV NIC,
# virtual IOMMU) and walks through a VF's life with the real binaries:
# created, claimed and configured on the PF, bound to vfio-pci, handed to a
# container spec, used inside a VM, and returned with its original settings.
# Each step prints what kata-sriov did and then what the kernel reports.
#
#   tests/lab/demo.sh                               # engine + passthrough (~8 min on 2 cores)
#   DEMO_SCENARIOS="engine shim passthrough" tests/lab/demo.sh
#
# Run as root (it needs no sudo); installs what it needs (QEMU from bookworm-backports, the
# kernel) on the first run.
set -uo pipefail
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "demo: run as root: it boots a VM with QEMU and installs packages" >&2; exit 1; }
read -r -a SCENARIOS <<<"${DEMO_SCENARIOS:-engine passthrough}"

if [ -t 1 ] || [ -n "${DEMO_COLOR:-}" ]; then
  B=$'\033[1m' D=$'\033[2m' G=$'\033[32m' R=$'\033[31m' C=$'\033[36m' N=$'\033[0m'
else
  B='' D='' G='' R='' C='' N=''
fi
say() { printf '\n%s== %s%s\n' "$B" "$*" "$N"; }
# para TEXT: a paragraph of explanation, wrapped.
para() { printf '%s\n' "$*" | fold -s -w 78 | sed 's/^/   /'; }

# pretty: the scenario's output, made readable. Scenarios print "### step",
# "ok - check", "FAIL - check (what was seen)", "  > command" (in demo
# mode), "timing NAME MS", and indented details of what the kernel reports.
pretty() {
  while IFS= read -r l; do
    case $l in
      '') ;;
      '### '*) printf '\n%s-> %s%s\n' "$B" "${l#\#\#\# }" "$N" ;;
      'ok - '*) printf '   %s[ok]%s %s\n' "$G" "$N" "${l#ok - }" ;;
      'FAIL - '*) printf '   %s[FAILED]%s %s\n' "$R" "$N" "${l#FAIL - }" ;;
      '  > '*) printf '   %s$ %s%s\n' "$C" "${l#  > }" "$N" ;;
      'timing '*) read -r _ name ms _ <<<"$l"; printf '   %s(%s: %s ms)%s\n' "$D" "$name" "$ms" "$N" ;;
      'bench '*) printf '   %s%s%s\n' "$B" "$l" "$N" ;;
      'lab: '*) printf '%s%s%s\n' "$D" "$l" "$N" ;;
      'PASS: '*) printf '\n   %s%s%s\n' "$G$B" "$l" "$N" ;;
      'FAILED: '*) printf '\n   %s%s%s\n' "$R$B" "$l" "$N" ;;
      *) printf '   %s\n' "$l" ;;
    esac
  done
}

story() {
  case $1 in
    engine) para "Scenario 'engine': the engine on real VFs. 'kata-sriov setup' creates \
VFs on the emulated igb PF; a container runtime's precreate hook ('kata-sriov hook \
precreate', given the container's config.json) asks for a VF of pool vlan100: \
kata-sriov picks a free VF, sets its MAC, VLAN 100, spoofchk and trust through the \
PF (netlink), binds it to vfio-pci, and adds /dev/vfio/N to the spec. 'hook \
poststop' gives it back: igbvf again, the PF's settings as before. Then: a VF whose \
IOMMU group holds other devices is refused; more claims at once than VFs; and \
latency against a bare program doing the same kernel operations." ;;
    shim) para "Scenario 'shim': real containerd 1.6 and runc inside the lab VM, with \
containerd-shim-kata-sriov-v2 in front of runc's shim. 'ctr run' with the annotation \
io.kata-sriov.networks=vlan100 gets a VF: the container sees /dev/vfio/N; when it is \
removed the VF comes back. Then a pool with guest = \"dan\": the shim writes Kata's \
DAN file for the pod sandbox, and removes it with the sandbox." ;;
    passthrough) para "Scenario 'passthrough': what Kata does with the VF, done by a \
small launcher (tests/src/bin/vfio-launcher.rs). A claim asks for interface net1 \
with 192.168.100.2/24, a gateway and a route. The launcher reads the rewritten \
spec, finds the VF behind /dev/vfio/N and starts an inner VM with \
'-device vfio-pci,host=<VF>' and the guest description on its kernel command line. \
Inside, kata-sriov-guest names and addresses the VF; the inner VM pings the PF \
across the VF on VLAN 100. The inner VM is emulated inside an emulated VM: its boot \
takes a few minutes." ;;
    smoke) para "Scenario 'smoke': the lab itself, without kata-sriov: the kernel creates \
VFs, sets VF MAC/VLAN through the PF, binds vfio-pci, and a VF pings the PF." ;;
    *) para "Scenario '$1'." ;;
  esac
}

say "what you are about to see"
para "This machine has no SR-IOV network card. The lab boots a QEMU VM (software \
emulation) with an emulated Intel 82576 (igb) card, which implements SR-IOV: \
its physical function (PF, 0000:00:02.0, eth0) can create virtual functions \
(VFs, 0000:00:12.0, 0000:00:12.2, ...), each its own PCI device. A virtual IOMMU \
gives every VF its own IOMMU group, so the real Linux drivers (igb, igbvf, \
vfio-pci) behave as on a real host. kata-sriov's own binaries, built here, run \
inside that VM. Every '[ok]' line below is a check of what the kernel reports \
(ip -d link, sysfs, /dev/vfio), not of what kata-sriov prints."

say "preparing the lab (packages, kernel, initramfs)"
"$LAB_DIR/lab.sh" prepare || exit 1
say "building kata-sriov"
(cd "$REPO" && cargo build --workspace --bins) || exit 1
if [[ " ${SCENARIOS[*]} " == *" passthrough "* ]]; then
  say "building kata-sriov-guest (static, for the inner VM)"
  (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p kata-sriov-guest --target x86_64-unknown-linux-gnu) || exit 1
fi

results=() failed=0
for s in "${SCENARIOS[@]}"; do
  say "scenario $s"
  story "$s"
  t=$SECONDS
  LAB_TIMEOUT=${LAB_TIMEOUT:-$([ "$s" = passthrough ] && echo 900 || echo 600)} \
    KS_DEMO=1 "$LAB_DIR/lab.sh" run "$s" 2>&1 | pretty
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || failed=$((failed + 1))
  results+=("$(printf '%-12s %s  %d s' "$s" "$([ "$rc" = 0 ] && echo passed || echo "FAILED ($rc)")" $((SECONDS - t)))")
done

say "summary"
printf '   %s\n' "${results[@]}"
if [ "$failed" = 0 ]; then
  para "Every step above was checked against the kernel (ip -d link, sysfs, /dev/vfio). \
The runs' files (output, serial console, timings) are under tests/lab/.cache/runs/."
else
  para "$failed scenario(s) failed; the runs' files (output, serial console) are under tests/lab/.cache/runs/."
fi
[ "$failed" = 0 ]
