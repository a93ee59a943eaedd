#!/bin/sh
# /init of the inner VM of the passthrough scenario (busybox, static
# kata-sriov-guest, igbvf.ko; no udev, no root file system). It loads igbvf
# for the passed-through VF, lets kata-sriov-guest configure it from
# kata_sriov.networks= on the kernel command line, prints what the kernel
# reports (links, addresses, routes), pings lab.ping=<address> if given,
# and powers off. Every line for the outer scenario starts with "INNER ".
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
say() { echo "INNER $*"; }
up=$(cut -d' ' -f1 /proc/uptime)
say "booted $up"
insmod /igbvf.ko
/bin/kata-sriov-guest --cmdline --wait 60
say "guest-rc $?"
say "configured $(cut -d' ' -f1 /proc/uptime)"
ip link | sed 's/^/INNER link /'
ip addr | sed 's/^/INNER addr /'
ip route | sed 's/^/INNER route /'
target=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^lab\.ping=//p')
if [ -n "$target" ]; then
  # The link needs a moment for carrier after it is brought up.
  i=0
  while ! ping -c 1 -W 2 "$target" >/dev/null 2>&1 && [ $i -lt 10 ]; do i=$((i + 1)); done
  out=$(ping -c 3 -W 5 "$target" 2>&1); rc=$?
  echo "$out" | sed 's/^/INNER ping /'
  if [ $rc = 0 ]; then say "ping-ok $target"; else say "ping-fail $target"; fi
fi
say "done $(cut -d' ' -f1 /proc/uptime)"
# reboot, not poweroff: works without ACPI too (QEMU runs with -no-reboot and exits)
reboot -f
