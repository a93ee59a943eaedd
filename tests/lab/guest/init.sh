#!/bin/sh
# The lab VM's /init (busybox): reach the root and hand over to stage2.
# Root = this machine's / over 9p (read-only) under an overlay with a tmpfs
# upper; the run's directory on the host is the writable 9p share "labout",
# mounted at /run/lab, where lab.sh put the job file and stage2.sh.
# stage2.sh runs as PID 1 and powers the VM off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do
  insmod "/modules/$m" || echo "lab-init: insmod $m failed"
done
mkdir -p /mnt/lower /mnt/rw
p9=trans=virtio,version=9p2000.L,msize=512000
if ! mount -t 9p -o "$p9,ro,cache=loose" hostroot /mnt/lower; then
  echo "lab-init: cannot mount the host root"; poweroff -f
fi
mount -t tmpfs -o mode=0755 tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
if ! mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay /newroot; then
  echo "lab-init: cannot mount the overlay"; poweroff -f
fi
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir -p /newroot/run/lab
if ! mount -t 9p -o "$p9" labout /newroot/run/lab; then
  echo "lab-init: cannot mount the labout share"; poweroff -f
fi
# switch_root, not chroot: the kernel's usermode helpers (modprobe for
# "ip link add type vlan", etc.) run in PID 1's root. stage2 powers off.
exec switch_root /newroot /bin/bash /run/lab/stage2.sh
