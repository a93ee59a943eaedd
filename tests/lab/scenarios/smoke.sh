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
after=$(ip -d link show "$pf_if" | grep -E '^ +vf 0 ')
check_eq "vf 0 line equals the line before" "$before" "$after"

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
