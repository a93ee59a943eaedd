#!/bin/bash
# Passthrough, standing in for Kata (issue 7, item 7): a VF claimed through
# `kata-sriov hook precreate` with a name, an address, a gateway and a route
# is passed into an inner QEMU VM by tests/src/bin/vfio-launcher.rs, which
# reads the rewritten spec, maps /dev/vfio/N to the VF's PCI address and puts
# the guest annotation on the inner kernel's command line. Inside, the static
# kata-sriov-guest configures the VF (`--cmdline`); the inner VM prints what
# its kernel reports and pings the PF's VLAN 100 address across the VF.
# Then `hook poststop` releases the VF and the PF's vf line is as before.
# The inner VM runs on KVM inside the lab VM where it can (seconds), else on
# TCG inside TCG (minutes); see README.
# lab-timeout: 1500
set -u
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

KS=$KS_BIN_DIR/kata-sriov
LAUNCHER=$KS_BIN_DIR/vfio-launcher
GUEST=${KS_GUEST_BIN:-$LAB_REPO/target/x86_64-unknown-linux-gnu/release/kata-sriov-guest}
PF=0000:00:02.0
W=/run/ksp
PF_IP=192.168.100.1
REQ='[{"pool":"vlan100","name":"net1","ips":["192.168.100.2/24"],"gateway":"192.168.100.1","routes":[{"dst":"10.99.0.0/16","via":"192.168.100.1"}]}]'
# The inner VM runs on KVM when the lab's vCPU offers it (QEMU's TCG emulates
# AMD SVM with nested paging for `-cpu max`, and kvm_amd loads on it): about
# 10 s from start to its /init. Otherwise (or if KVM fails to start it) it
# falls back to TCG inside TCG: 100-330 s to its /init depending on the machine.
INNER_ACCEL=${KS_PASSTHROUGH_INNER_ACCEL:-auto} # auto, kvm or tcg
INNER_TIMEOUT=${KS_PASSTHROUGH_INNER_TIMEOUT:-}
demo() { [ -z "${KS_DEMO:-}" ] || echo "  > $*"; }

check "kata-sriov is built" test -x "$KS" || finish
check "vfio-launcher is built" test -x "$LAUNCHER" || finish
check "static kata-sriov-guest is built ($GUEST)" test -x "$GUEST" || {
  info 'build it: RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p kata-sriov-guest --target x86_64-unknown-linux-gnu'
  finish
}
mkdir -p "$W"
export KATA_SRIOV_CONFIG=$W/config.toml
cat >"$KATA_SRIOV_CONFIG" <<EOC
[hook]
binary = "$KS"
$(vlan100_pool "$PF")
EOC

step "the inner VM's kernel and initramfs"
t=$(now_ms)
kver=$(uname -r)
kimg=$LAB_KDIR/boot/vmlinuz-$kver
# The bzImage's payload (zstd) as an ELF vmlinux: QEMU boots it through its
# PVH entry, which skips decompression inside the (slow) inner VM.
vmlinux=$W/vmlinux
off=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$kimg" | head -n1 | cut -d: -f1)
# (zstd exits 1 on the bzImage's trailing bytes after the frame: check the result instead.)
[ -z "$off" ] || tail -c +$((off + 1)) "$kimg" | zstd -dcq >"$vmlinux" 2>/dev/null
if [ -n "$off" ] && [ "$(head -c 4 "$vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
  inner_kernel=$vmlinux
else
  info "no zstd ELF payload in $kimg: booting the bzImage"
  inner_kernel=$kimg
fi
ir=$W/inner
mkdir -p "$ir"/{bin,proc,sys,dev}
cp /bin/busybox "$ir/bin/"
for c in sh mount insmod ip ping sed tr cut cat sleep poweroff ls grep; do ln -sf busybox "$ir/bin/$c"; done
cp "$GUEST" "$ir/bin/kata-sriov-guest"
strip "$ir/bin/kata-sriov-guest" 2>/dev/null || true
xz -dc "/lib/modules/$kver/kernel/drivers/net/ethernet/intel/igbvf/igbvf.ko.xz" >"$ir/igbvf.ko"
install -m 0755 "$LAB_REPO/tests/lab/guest-inner/init.sh" "$ir/init"
# Uncompressed: nothing to inflate inside the inner VM.
(cd "$ir" && find . | cpio -o -H newc --quiet) >"$W/inner.cpio"
timing inner_image "$t"
info "kernel $(basename "$inner_kernel") ($(du -h "$inner_kernel" | cut -f1)), initramfs $(du -h "$W/inner.cpio" | cut -f1): busybox, kata-sriov-guest, igbvf.ko"

step "the PF: one VF, and a VLAN 100 address on the PF for the VF to reach"
pf_if=$(pci_netdev "$PF")
ip link set "$pf_if" up
check "write 1 to sriov_numvfs" set_numvfs "$PF" 1
VF=$(vf_addr "$PF" 0)
wait_for 20 test -d "$SYS_PCI/$VF/net" || fail "$VF has no netdev"
vf_line() { ip -d link show "$pf_if" | grep -E "^ +vf $1 " | sed 's/ *$//'; }
before=$(vf_line 0)
info "vf 0 before: $before"
ip link add link "$pf_if" name "$pf_if.100" type vlan id 100
ip addr add "$PF_IP/24" dev "$pf_if.100"
ip link set "$pf_if.100" up
info "$pf_if.100: $(ip -br addr show "$pf_if.100")"

step "claim through kata-sriov hook precreate"
info "request (io.kata-sriov.networks): $REQ"
spec=$(jq -n --arg r "$REQ" '{ociVersion:"1.0.2",process:{args:["sh"]},root:{path:"rootfs"},
  annotations:{"io.kata-sriov.networks":$r},linux:{namespaces:[{type:"pid"}]}}')
demo "kata-sriov hook precreate < config.json > config.json.new"
t=$(now_ms)
if ! jq -c . <<<"$spec" | "$KS" hook precreate >"$W/config.json" 2>"$W/precreate.err"; then
  fail "precreate: $(cat "$W/precreate.err")"
  finish
fi
timing precreate_claim "$t"
owner=$(jq -r '.annotations["io.kata-sriov.owner"]' "$W/config.json")
gn=$(jq -r '.annotations["io.kata-sriov.guest-networks"]' "$W/config.json")
mac=$(jq -r '.[0].mac' <<<"$gn")
group=$(jq -r '.linux.devices[] | .path | select(test("^/dev/vfio/[0-9]+$"))' "$W/config.json" | sed 's|/dev/vfio/||')
info "guest annotation: $gn"
info "spec devices: $(jq -c '[.linux.devices[] | {path, major, minor}]' "$W/config.json")"
check_eq "the spec's /dev/vfio/$group is $VF's IOMMU group" "$(pci_group "$VF")" "$group"
check_eq "$VF driver" vfio-pci "$(pci_driver "$VF")"
line=$(vf_line 0)
info "ip -d link show $pf_if: $line"
check_match "PF's vf 0 has the guest annotation's MAC and VLAN 100" "link/ether $mac .*vlan 100" "$line"

step "vfio-launcher: spec -> inner QEMU with -device vfio-pci,host=$VF"
if [ "$INNER_ACCEL" != tcg ]; then
  modprobe kvm_amd 2>/dev/null || modprobe kvm_intel 2>/dev/null || true
  if [ -c /dev/kvm ]; then
    info "/dev/kvm: $(dmesg | grep -m1 -o 'kvm_amd: Nested Paging enabled\|kvm_intel.*' || echo present)"
  elif [ "$INNER_ACCEL" = kvm ]; then
    fail "KS_PASSTHROUGH_INNER_ACCEL=kvm but there is no /dev/kvm in the lab VM (vendor: $(grep -m1 -o 'AuthenticAMD\|GenuineIntel' /proc/cpuinfo))"
    finish
  else
    info "no /dev/kvm in the lab VM: the inner VM runs on TCG (minutes)"
    INNER_ACCEL=tcg
  fi
fi
inner_qemu() { # accel
  local cpu=max
  [ "$1" = kvm ] && cpu=host
  # shellcheck disable=SC2054 # commas are qemu's
  qemu=(qemu-system-x86_64 -machine q35,accel="$1" -cpu "$cpu" -m 256 -smp 1
    -nodefaults -vga none -no-reboot -display none -monitor none -serial stdio
    -global q35-pcihost.pci-hole64-size=0
    -kernel "$inner_kernel" -initrd "$W/inner.cpio"
    -append "console=ttyS0 quiet panic=-1 ${KS_PASSTHROUGH_INNER_APPEND:-} lab.ping=$PF_IP")
}
accel=$INNER_ACCEL
[ "$accel" = auto ] && accel=kvm
inner_qemu "$accel"
check "launcher's command passes $VF and the guest description" bash -c \
  "'$LAUNCHER' --dry-run '$W/config.json' -- ${qemu[*]@Q} | tee '$W/launch.txt' | grep -qx -- 'vfio-pci,host=$VF'"
cmdline=$(grep -A1 -x -- -append "$W/launch.txt" | tail -n1)
info "inner kernel command line: $cmdline"
b64=$(tr ' ' '\n' <<<"$cmdline" | sed -n 's/^kata_sriov.networks=//p')
check_eq "kata_sriov.networks= decodes to the guest annotation" "$gn" "$(base64 -d <<<"$b64")"
run_inner() { # accel: boots the inner VM through vfio-launcher, sets rc
  local limit=$INNER_TIMEOUT
  [ -n "$limit" ] || { [ "$1" = kvm ] && limit=120 || limit=900; }
  inner_qemu "$1"
  demo "vfio-launcher config.json -- qemu-system-x86_64 -machine q35,accel=$1 ... (boots the inner VM)"
  info "inner VM on $1 (timeout $limit s)"
  t=$(now_ms)
  timeout "$limit" "$LAUNCHER" "$W/config.json" -- "${qemu[@]}" </dev/null >"$W/inner.log" 2>&1
  rc=$?
  timing "inner_vm_$1" "$t"
}
run_inner "$accel"
if [ "$rc" != 0 ] && [ "$INNER_ACCEL" = auto ] && [ "$accel" = kvm ] && ! grep -aq '^INNER booted' "$W/inner.log"; then
  info "the inner VM did not start on KVM (exit $rc): $(tr -d '\r' <"$W/inner.log" | tail -n 3 | tr '\n' ' ')"
  info "retrying on TCG"
  run_inner tcg
fi
tr -d '\r' <"$W/inner.log" >"$W/inner.txt"
[ -z "${LAB_OUT_DIR:-}" ] || cp "$W/inner.txt" "$LAB_OUT_DIR/inner-console.log"
grep -a -E '^INNER |kata-sriov-guest' "$W/inner.txt" | sed 's/^/  | /'
check_eq "inner QEMU exit status" 0 "$rc"
in=$(grep -a '^INNER ' "$W/inner.txt")
b=$(sed -n 's/^INNER booted //p' <<<"$in"); c=$(sed -n 's/^INNER configured //p' <<<"$in")
info "inner VM (its own clock): init at ${b:-?} s, VF configured at ${c:-?} s"
check_match "kata-sriov-guest --cmdline exit 0" '^INNER guest-rc 0$' "$in"
check_match "inner: interface net1 with the claimed MAC $mac" "INNER link .*net1.*" "$in"
net1=$(grep -a -A1 -E '^INNER link [0-9]+: net1:' <<<"$in")
check_match "inner: net1 link/ether $mac" "link/ether $mac" "$net1"
check_match "inner: net1 is UP" 'net1: <[^>]*UP' "$net1"
check_match "inner: 192.168.100.2/24 on net1" 'INNER addr +inet 192\.168\.100\.2/24 .*net1' "$in"
check_match "inner: route 10.99.0.0/16 via 192.168.100.1 dev net1" 'INNER route 10\.99\.0\.0/16 via 192\.168\.100\.1 dev net1' "$in"
check_match "inner: default via 192.168.100.1 dev net1" 'INNER route default via 192\.168\.100\.1 dev net1' "$in"
check_match "inner VM pings the PF ($PF_IP) across the VF, VLAN 100" "^INNER ping-ok $PF_IP" "$in"

step "release through kata-sriov hook poststop"
release_by_poststop "$KS" "$owner" "$VF"
wait_for 10 test -d "$SYS_PCI/$VF/net"
after=$(vf_line 0)
info "vf 0 after: $after"
check_eq "PF's vf 0 line equals the line before the claim" "$before" "$after"
check_eq "no lease left" 0 "$(find /run/kata-sriov/leases -type f 2>/dev/null | wc -l)"
finish
