#!/bin/bash
# Smoke: the lab's kernel does SR-IOV, VF settings, IOMMU groups and vfio-pci
# binding, checked through sysfs, /dev and iproute2 only (no project binaries).
set -u
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

PF=${SMOKE_PF:-0000:00:02.0}
UNSAFE_PF=${SMOKE_UNSAFE_PF:-0000:01:00.0}

step "PF $PF"
check "PF exists and is on igb" test "$(pci_driver "$PF")" = igb || finish
pf_if=$(pci_netdev "$PF")
info "PF netdev: $pf_if"
check_eq "sriov_totalvfs" 7 "$(cat "$SYS_PCI/$PF/sriov_totalvfs")"
ip link set "$pf_if" up

step "create 2 VFs"
t=$(now_ms)
check "write 2 to sriov_numvfs" set_numvfs "$PF" 2
timing create_2_vfs "$t"
check_eq "sriov_numvfs reads back" 2 "$(cat "$SYS_PCI/$PF/sriov_numvfs")"
vfs=()
for i in 0 1; do
  vf=$(vf_addr "$PF" "$i")
  vfs+=("$vf")
  check "virtfn$i -> $vf" test -n "$vf"
  check_eq "$vf physfn is the PF" "$PF" "$(basename "$(readlink "$SYS_PCI/$vf/physfn")")"
  wait_for 10 test -d "$SYS_PCI/$vf/net"
  check_eq "$vf driver" igbvf "$(pci_driver "$vf")"
  info "$vf netdev: $(pci_netdev "$vf"), IOMMU group $(pci_group "$vf"): $(pci_group_members "$vf")"
  check_eq "$vf alone in its IOMMU group" "$vf " "$(pci_group_members "$vf")"
done
VF0=${vfs[0]}

step "VF 0 settings through the PF (netlink, read back by the kernel)"
before=$(ip -d link show "$pf_if" | grep -E '^ +vf 0 ')
info "before: $before"
t=$(now_ms)
check "ip link set $pf_if vf 0 mac 02:11:22:33:44:55 vlan 100" ip link set "$pf_if" vf 0 mac 02:11:22:33:44:55 vlan 100
check "ip link set $pf_if vf 0 spoofchk on trust off" ip link set "$pf_if" vf 0 spoofchk on trust off
timing vf_settings "$t"
line=$(ip -d link show "$pf_if" | grep -E '^ +vf 0 ')
info "after:  $line"
check_match "vf 0 MAC" 'link/ether 02:11:22:33:44:55' "$line"
check_match "vf 0 VLAN" 'vlan 100' "$line"
check_match "vf 0 spoofchk" 'spoof checking on' "$line"
check_match "vf 0 trust" 'trust off' "$line"

step "bind VF 0 to vfio-pci"
group=$(pci_group "$VF0")
t=$(now_ms)
check "driver_override + unbind + drivers_probe" bind_driver "$VF0" vfio-pci
timing bind_vfio "$t"
check_eq "$VF0 driver" vfio-pci "$(pci_driver "$VF0")"
check "/dev/vfio/$group is a character device" test -c "/dev/vfio/$group"
info "$(ls -l "/dev/vfio/$group")"
check_eq "/dev/vfio/$group major:minor matches sysfs" \
  "$(cat "/sys/class/vfio/$group/dev")" \
  "$(printf '%d:%d' "0x$(stat -c %t "/dev/vfio/$group")" "0x$(stat -c %T "/dev/vfio/$group")")"

step "bind VF 0 back to igbvf and undo its settings"
t=$(now_ms)
check "clear driver_override + unbind + drivers_probe" bind_driver "$VF0" ""
timing bind_back "$t"
check_eq "$VF0 driver" igbvf "$(pci_driver "$VF0")"
check "/dev/vfio/$group gone" wait_for 5 test ! -e "/dev/vfio/$group"
check "VF netdev back" wait_for 10 test -d "$SYS_PCI/$VF0/net"
check "reset vf 0 (mac 0, vlan 0)" ip link set "$pf_if" vf 0 mac 00:00:00:00:00:00 vlan 0
t=$(now_ms)
check "reload igbvf on $VF0" bind_driver "$VF0" igbvf
check "VF 0 netdev back" wait_for 10 test -d "$SYS_PCI/$VF0/net"
timing reload_igbvf "$t"
after=$(ip -d link show "$pf_if" | grep -E '^ +vf 0 ')
info "after release: $after"
# igbvf picks a random MAC and tells the PF when the PF has none for the VF: the
# PF's line then shows that MAC, a new one after each reload. Compare the rest.
mask_mac() { sed -E 's#link/ether [0-9a-f:]+#link/ether MAC#' <<<"$1"; }
check_eq "vf 0 line equals the line before, MAC aside" "$(mask_mac "$before")" "$(mask_mac "$after")"

step "data path: VF 1 with an admin MAC and VLAN 100, in a netns, pings the PF"
VF1=${vfs[1]}
check "ip link set $pf_if vf 1 mac 02:11:22:33:44:66 vlan 100" ip link set "$pf_if" vf 1 mac 02:11:22:33:44:66 vlan 100
t=$(now_ms)
check "reload igbvf on $VF1" bind_driver "$VF1" igbvf
check "VF 1 netdev back" wait_for 10 test -d "$SYS_PCI/$VF1/net"
timing rebind_igbvf "$t"
vf_if=$(pci_netdev "$VF1")
check_eq "VF 1 netdev has the admin MAC" 02:11:22:33:44:66 "$(cat "/sys/class/net/$vf_if/address")"
ns=smoke-$$
ip netns add "$ns"
ip link add link "$pf_if" name "$pf_if.100" type vlan id 100
ip addr add 192.168.100.1/24 dev "$pf_if.100"
ip link set "$pf_if.100" up
ip link set "$vf_if" netns "$ns"
ip -n "$ns" addr add 192.168.100.2/24 dev "$vf_if"
ip -n "$ns" link set "$vf_if" up
check "VF 1 has carrier" wait_for 15 ip netns exec "$ns" grep -qx 1 "/sys/class/net/$vf_if/carrier"
t=$(now_ms)
check "ping VF 1 -> PF over VLAN 100" ip netns exec "$ns" busybox ping -c 3 -W 5 192.168.100.1
timing ping "$t"
ip -n "$ns" link set "$vf_if" netns 1
ip netns del "$ns"
ip link del "$pf_if.100"
check "reset vf 1" ip link set "$pf_if" vf 1 mac 00:00:00:00:00:00 vlan 0

step "an unsafe PF: $UNSAFE_PF behind a root port without ACS"
if [ -e "$SYS_PCI/$UNSAFE_PF/sriov_numvfs" ]; then
  check "write 1 to its sriov_numvfs" set_numvfs "$UNSAFE_PF" 1
  uvf=$(vf_addr "$UNSAFE_PF" 0)
  members=$(pci_group_members "$uvf")
  info "$uvf IOMMU group $(pci_group "$uvf"): $members"
  check_match "its VF shares the group with the PF" "$UNSAFE_PF" "$members"
  check "remove its VF" set_numvfs "$UNSAFE_PF" 0
else
  fail "$UNSAFE_PF has no SR-IOV"
fi

step "remove the VFs"
t=$(now_ms)
check "write 0 to sriov_numvfs" set_numvfs "$PF" 0
timing remove_vfs "$t"
check "virtfn0 gone" test ! -e "$SYS_PCI/$PF/virtfn0"
finish
