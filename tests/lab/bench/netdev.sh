#!/bin/bash
# netdev mode against the CNI host-device plugin (Debian
# containernetworking-plugins) on a real igbvf VF: both as processes move the
# VF's interface into a fresh network namespace (renamed net1, the same static
# address and gateway) and back, alternated round by round (bench-netdev
# --real). The pool keeps the MAC and sets nothing on the PF, like
# host-device. bench-netdev checks the address and route in the namespace
# after each attach and the interface back on the host after each detach.
set -u
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

KS=$KS_BIN_DIR/kata-sriov
PF=0000:00:02.0
W=/run/ksndb
mkdir -p "$W"

check "kata-sriov and bench-netdev are built" test -x "$KS" -a -x "$KS_BIN_DIR/bench-netdev" || finish
check "the CNI host-device plugin is installed" test -x /usr/lib/cni/host-device || finish
pf_if=$(pci_netdev "$PF")
ip link set "$pf_if" up
set_numvfs "$PF" 1
vf=$(vf_addr "$PF" 0)
wait_for 15 test -d "$SYS_PCI/$vf/net" || fail "$vf has no netdev"
vf_if=$(pci_netdev "$vf")
info "VF 0 = $vf, netdev $vf_if"
cat >"$W/config.toml" <<EOF2
state_dir = "$W/state"
[[pools]]
name = "nd"
pfs = ["$PF"]
mode = "netdev"
mac = "keep"
EOF2

step "netdev mode vs CNI host-device, ${NETDEV_BENCH_ROUNDS:-10} alternated rounds"
out=$("$KS_BIN_DIR/bench-netdev" --real "$W/config.toml" "$vf_if" --rounds "${NETDEV_BENCH_ROUNDS:-10}" 2>&1)
rc=$?
echo "$out"
check_eq "bench-netdev exit status" 0 "$rc"
check "VF back on the host as $vf_if" ip link show dev "$vf_if"
ratio=$(sed -n 's/.*ratio kata-sriov \/ host-device: //p' <<<"$out")
echo "bench netdev_vs_host_device $ratio"
[ -z "${LAB_OUT_DIR:-}" ] || echo "bench netdev_vs_host_device $ratio" >>"$LAB_OUT_DIR/timings.txt"
finish
