#!/bin/bash
# The DRA agent on real VFs (igb PF, igbvf VFs, vfio-pci, real IOMMU
# groups): the real `kata-sriov-k8s dra` binary, with `dra-kubelet` playing
# the kubelet over the real gRPC protocol (registration socket, GetInfo,
# NodePrepareResources / NodeUnprepareResources v1) and standing in for the
# API server (the ResourceClaim, the ResourceSlices). Prepare of a claim
# allocated to one VF: the VF on vfio-pci with the pool's PF-side settings
# (`ip -d link show` of the PF), the CDI spec naming the real /dev/vfio/N
# with its real numbers, the lease under the claim's UID; unprepare: the VF
# back on igbvf, the PF's `vf N` line as before, no CDI spec, no lease.
set -u
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

KS=$KS_BIN_DIR/kata-sriov
AGENT=$KS_BIN_DIR/kata-sriov-k8s
CLIENT=$KS_BIN_DIR/dra-kubelet
PF=0000:00:02.0
NVF=2
UID_=1ab0c0de-0000-4000-8000-00000000d2a1
W=/run/ks-dra
mkdir -p "$W"
export KATA_SRIOV_CONFIG=$W/config.toml KATA_SRIOV_LOG=$W/log
{ vlan100_pool "$PF"; echo "num_vfs = $NVF"; } >"$KATA_SRIOV_CONFIG"

for b in "$KS" "$AGENT" "$CLIENT"; do check "$(basename "$b") is built" test -x "$b" || finish; done
pf_if=$(pci_netdev "$PF")
ip link set "$pf_if" up

step "create VFs"
set_numvfs "$PF" "$NVF"
vf=$(vf_addr "$PF" 1)
wait_for 15 test -d "$SYS_PCI/$vf/net" || fail "$vf has no netdev"
vf_line() { ip -d link show "$pf_if" | grep -E "^ +vf $1 " | sed 's/ *$//'; }
before=$(vf_line 1)
info "vf 1 = $vf, group $(pci_group "$vf"), before: $before"
device=vf-$(tr ':.' '--' <<<"$vf")

step "the agent registers, publishes, prepares (kubelet and API server played by dra-kubelet)"
t=$(now_ms)
"$CLIENT" "$AGENT" "$KATA_SRIOV_CONFIG" "$W" node-1/vlan100 "$device" >"$W/client.out" 2>"$W/client.err" &
client=$!
wait_for 60 grep -qE '^(PREPARED|PREPARE_ERROR)' "$W/client.out" || fail "no prepare answer"
timing dra_start_to_prepared "$t"
out=$(cat "$W/client.out")
echo "$out"
check_match "registered as a v1 and v1beta1 DRA plugin" \
  '^REGISTERED kata-sriov.io .*/plugins/kata-sriov.io/dra.sock v1.DRAPlugin,v1beta1.DRAPlugin' "$out"
check_match "both VFs published in pool node-1/vlan100" "^SLICE node-1/vlan100 vf-0000-00-[^,]*,vf-0000-00-" "$out"
check_match "prepared $device" "^PREPARED node-1/vlan100 $device kata-sriov.io/vf=$UID_-$device" "$out"

group=$(pci_group "$vf")
check_eq "$vf driver" vfio-pci "$(pci_driver "$vf")"
line=$(vf_line 1)
info "vf 1 now: $line"
check_match "vf 1 VLAN 100" 'vlan 100' "$line"
check_match "vf 1 spoof checking on" 'spoof checking on' "$line"
check_match "vf 1 trust off" 'trust off' "$line"
spec=$W/cdi/kata-sriov-dra-$UID_.json
check "CDI spec written" test -f "$spec"
node=$(jq -c --arg p "/dev/vfio/$group" '.devices[0].containerEdits.deviceNodes[] | select(.path == $p)' "$spec")
info "CDI node: $node"
check_eq "CDI spec names /dev/vfio/$group with the real numbers" "$(cat "/sys/class/vfio/$group/dev")" \
  "$(jq -r '"\(.major):\(.minor)"' <<<"$node")"
check "/dev/vfio/$group exists" test -c "/dev/vfio/$group"
guest=$(jq -r '.devices[0].annotations["io.kata-sriov.guest-networks"] | fromjson | .[0]' "$spec")
mac=$(jq -r .mac <<<"$guest")
check_match "PF's vf 1 MAC is the guest description's ($mac)" "link/ether $mac" "$line"
check_eq "guest name and MTU from the claim's opaque config" "net1 1400" "$(jq -r '"\(.name) \(.mtu)"' <<<"$guest")"
check_match "status shows the lease under the claim's UID" "leased to $UID_" "$("$KS" status)"

step "unprepare (twice: idempotent)"
t=$(now_ms)
touch "$W/unprepare"
wait "$client"
rc=$?
timing dra_unprepare "$t"
grep -E '^(UNPREPARED|TIMING)' "$W/client.out"
check_eq "dra-kubelet exit status" 0 "$rc"
[ "$rc" = 0 ] || { cat "$W/client.err"; tail -n 30 "$W/agent.log"; }
out=$(cat "$W/client.out")
check_match "unprepared" '^UNPREPARED ok' "$out"
check_match "unprepared again" '^UNPREPARED_AGAIN ok' "$out"
wait_for 10 test "$(pci_driver "$vf")" = igbvf
check_eq "$vf back on igbvf" igbvf "$(pci_driver "$vf")"
check_eq "PF's vf 1 line equals the line before" "$before" "$(vf_line 1)"
check "CDI spec deleted" test ! -e "$spec"
check_eq "no lease left" 0 "$(ls /run/kata-sriov/leases | wc -l)"
finish
