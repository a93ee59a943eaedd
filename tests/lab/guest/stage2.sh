#!/bin/bash
# Stage 2 of the lab VM: PID 1 after /init's switch_root into this machine's
# root (9p + overlay). Finishes the system setup, loads the drivers, runs the job
# (a scenario, or a shell) and leaves the exit status in /run/lab/status.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
export LAB_OUT_DIR=/run/lab LAB_IN_VM=1
# shellcheck source=/dev/null
. /run/lab/job

t_stage2=$(cut -d' ' -f1 /proc/uptime)
echo "$t_stage2" >/run/lab/ready
# The tmpfs mounts below would hide a checkout that lives under one of them
# (CI may clone into /tmp): bind what the job needs aside, then back.
keep=()
for p in "$LAB_REPO" "${LAB_KDIR:-}" "${KS_BIN_DIR:-}"; do
  [ -n "$p" ] && [ -d "$p" ] && keep+=("$p")
done
for i in "${!keep[@]}"; do
  mkdir -p "/mnt/lab-keep/$i" && mount --bind "${keep[$i]}" "/mnt/lab-keep/$i"
done
for d in /tmp /var/tmp /var/lib/containerd /var/lib/docker /dev/shm; do
  mkdir -p "$d" && mount -t tmpfs -o mode=1777 tmpfs "$d"
done
for i in "${!keep[@]}"; do
  p=${keep[$i]}
  if [ ! -d "$p" ]; then
    mkdir -p "$p" && mount --bind "/mnt/lab-keep/$i" "$p"
  fi
done
chmod 0711 /var/lib/containerd /var/lib/docker
mkdir -p /dev/pts /dev/mqueue && mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
ln -sf pts/ptmx /dev/ptmx 2>/dev/null || true
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true

# The Debian kernel's modules, with the host's own kmod.
kver=$(uname -r)
mkdir -p "/lib/modules/$kver"
mount --bind "$LAB_KDIR/lib/modules/$kver" "/lib/modules/$kver"
t_mod=$(cut -d' ' -f1 /proc/uptime)
modprobe -a igb igbvf vfio vfio_iommu_type1 vfio-pci veth bridge tun 8021q 2>&1 | sed 's/^/lab-stage2: /'
hostname lab
ip link set lo up

t_ready=$(cut -d' ' -f1 /proc/uptime)
echo "lab-stage2: ready at ${t_ready} s (stage2 began at ${t_stage2} s, modprobe at ${t_mod} s)" >/dev/console

case $LAB_MODE in
  run)
    cd "$LAB_REPO" || exit 1
    rc=0
    bash "${LAB_ARGS[@]}" </dev/null 2>&1 | tee -a /run/lab/output.log >/dev/console
    rc=${PIPESTATUS[0]}
    t_end=$(cut -d' ' -f1 /proc/uptime)
    echo "boot ${t_ready} s, scenario $(awk -v a="$t_ready" -v b="$t_end" 'BEGIN{printf "%.1f", b-a}') s (guest clock)" >/run/lab/timings
    echo "$rc" >/run/lab/status
    ;;
  shell)
    cd "$LAB_REPO" || true
    echo "lab: shell in the lab VM; 'poweroff -f' or exit to stop" >/dev/console
    setsid -c bash -l </dev/ttyS0 >/dev/ttyS0 2>&1
    echo 0 >/run/lab/status
    ;;
esac
sync
umount /run/lab 2>/dev/null
echo o >/proc/sysrq-trigger
sleep 30
