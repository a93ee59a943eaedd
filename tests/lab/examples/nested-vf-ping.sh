#!/bin/bash
# Example (not run by run-all: ~5 min of TCG inside TCG): a VF passed through
# with vfio-pci into an inner QEMU VM; inside, igbvf gets the admin MAC set
# through the PF, and the inner VM pings the PF across the VF and the port VLAN.
#   tests/lab/lab.sh run tests/lab/examples/nested-vf-ping.sh   (LAB_TIMEOUT=900)
set -u
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

PF=0000:00:02.0
pf_if=$(pci_netdev "$PF")
MAC=02:11:22:33:44:77
ip link set "$pf_if" up
check "create 1 VF" set_numvfs "$PF" 1
VF=$(vf_addr "$PF" 0)
check "vf 0 mac $MAC vlan 100" ip link set "$pf_if" vf 0 mac "$MAC" vlan 100
ip link add link "$pf_if" name "$pf_if.100" type vlan id 100
ip addr add 192.168.100.1/24 dev "$pf_if.100"
ip link set "$pf_if.100" up
check "bind $VF to vfio-pci" bind_driver "$VF" vfio-pci

# The inner VM: the lab's kernel, busybox and igbvf.ko in a tiny initramfs.
kver=$(uname -r)
w=$(mktemp -d)
mkdir -p "$w"/{bin,proc,sys,dev}
cp /bin/busybox "$w/bin/"
for c in sh mount ip insmod sleep cat ping poweroff ls grep head dmesg; do ln -s busybox "$w/bin/$c"; done
xz -dc "$LAB_KDIR/lib/modules/$kver/kernel/drivers/net/ethernet/intel/igbvf/igbvf.ko.xz" >"$w/igbvf.ko"
cat >"$w/init" <<'IN'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
insmod /igbvf.ko
i=0; while [ -z "$(ls /sys/class/net | grep -v '^lo$')" ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
ifc=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
echo "INNER-MAC $(cat /sys/class/net/$ifc/address)"
ip addr add 192.168.100.2/24 dev "$ifc"; ip link set "$ifc" up
i=0; while [ "$(cat /sys/class/net/$ifc/carrier 2>/dev/null)" != 1 ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
echo "INNER-CARRIER $(cat /sys/class/net/$ifc/carrier 2>/dev/null)"
if ping -c 3 -W 5 192.168.100.1; then echo INNER-PING-OK; else echo INNER-PING-FAIL; fi
poweroff -f
IN
chmod +x "$w/init"
(cd "$w" && find . | cpio -o -H newc --quiet | gzip -1) >"$w.gz"

t=$(now_ms)
out=$(timeout 600 qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 512 -smp 1 \
  -nodefaults -vga none -no-reboot -global q35-pcihost.pci-hole64-size=0 \
  -nographic -serial stdio -monitor none \
  -kernel "$LAB_KDIR/boot/vmlinuz-$kver" -initrd "$w.gz" -append "console=ttyS0 quiet panic=-1" \
  -device vfio-pci,host="$VF" 2>&1)
timing inner_vm "$t"
grep -a INNER <<<"$out" | sed 's/^/  /'
check_match "inner VM: igbvf has the admin MAC" "INNER-MAC $MAC" "$out"
check_match "inner VM: carrier" "INNER-CARRIER 1" "$out"
check_match "inner VM pings the PF across the VF (VLAN 100)" "INNER-PING-OK" "$out"
finish
