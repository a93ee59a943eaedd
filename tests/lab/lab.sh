#!/usr/bin/env bash
# The SR-IOV lab: a QEMU VM (TCG, q35, intel-iommu, emulated igb with SR-IOV)
# booting Debian's bookworm-backports kernel, whose root is this machine's root
# over 9p (read-only) under an overlay with a tmpfs upper. Scenarios run inside
# as root and see this machine's files at the same paths. See README.md.
#
#   lab.sh prepare                 install deps, fetch the kernel, build the initramfs (idempotent)
#   lab.sh run SCENARIO [ARGS...]  boot, run scenarios/SCENARIO.sh ARGS as root, power off;
#                                  exit status = the scenario's (124 on timeout, 125 if it never ran)
#   lab.sh shell                   boot to an interactive bash on the serial console (Ctrl-a x quits)
#
# Environment: LAB_TIMEOUT (seconds, default 600), LAB_MEM (MiB, 2048), LAB_SMP (2),
# LAB_OUT (host directory for the run's files), KS_BIN_DIR (the project's binaries;
# default $CARGO_TARGET_DIR/debug or <repo>/target/debug); every KS_* variable is
# passed to the scenario.
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
CACHE=$LAB_DIR/.cache
KDIR=$CACHE/kernel
INITRD=$CACHE/initrd.gz
INITRD_STAMP=$CACHE/initrd.stamp

log() { printf 'lab: %s\n' "$*" >&2; }
die() { log "$*"; exit 125; }

kernel_version() {
  local d
  for d in "$KDIR"/lib/modules/*/; do [ -d "$d" ] && basename "$d" && return 0; done
  return 1
}

# The kernel: the package that bookworm-backports' linux-image-amd64 metapackage
# depends on (exactly that one, not a name pattern), extracted and depmod'ed.
fetch_kernel() {
  if [ -f "$KDIR/.ready" ] && [ -z "${LAB_REFRESH:-}" ]; then
    log "kernel: cached $(cat "$KDIR/.ready")"
    return 0
  fi
  local dl=$CACHE/dl meta dep pkg ver deb
  rm -rf "$dl" && mkdir -p "$dl"
  # apt's _apt user cannot write here: download as root without the sandbox warning.
  (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root -t bookworm-backports linux-image-amd64 >&2)
  meta=$(ls "$dl"/linux-image-amd64_*.deb)
  dep=$(dpkg-deb -f "$meta" Depends)
  # e.g. "linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)"
  pkg=$(sed -n 's/^\([^ ,|]*\) *(= *\([^)]*\)).*/\1/p' <<<"$dep")
  ver=$(sed -n 's/^\([^ ,|]*\) *(= *\([^)]*\)).*/\2/p' <<<"$dep")
  if [ -z "$pkg" ] || [ -z "$ver" ]; then die "kernel: cannot parse Depends of $meta: $dep"; fi
  if [ -f "$KDIR/.ready" ] && [ "$(cat "$KDIR/.ready")" = "$pkg=$ver" ]; then
    log "kernel: $pkg=$ver is current"; rm -rf "$dl"; return 0
  fi
  log "kernel: downloading $pkg=$ver"
  (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2)
  deb=$(ls "$dl/${pkg}"_*.deb)
  rm -rf "$KDIR" && mkdir -p "$KDIR"
  dpkg -x "$deb" "$KDIR"
  depmod -b "$KDIR" "$(kernel_version)"
  rm -rf "$dl"
  echo "$pkg=$ver" >"$KDIR/.ready"
  rm -f "$INITRD_STAMP"
}

# The initramfs: static busybox, the modules needed to reach the root (9p over
# virtio, overlay), and init.sh. Everything else is loaded later with the
# host's own kmod from the extracted tree, bind-mounted at /lib/modules.
build_initrd() {
  local kver stamp tmp m f
  kver=$(kernel_version)
  stamp="$kver $(sha256sum "$LAB_DIR/guest/init.sh" /bin/busybox | sha256sum | cut -c1-16)"
  if [ -f "$INITRD" ] && [ "$(cat "$INITRD_STAMP" 2>/dev/null)" = "$stamp" ]; then
    log "initramfs: cached"
    return 0
  fi
  tmp=$(mktemp -d)
  mkdir -p "$tmp"/{bin,dev,proc,sys,mnt,modules,newroot}
  cp /bin/busybox "$tmp/bin/busybox"
  for f in sh mount umount mkdir insmod chroot poweroff cat echo sleep switch_root ls; do
    ln -s busybox "$tmp/bin/$f"
  done
  : >"$tmp/modules/order"
  for m in 9pnet_virtio 9p overlay; do
    modprobe -d "$KDIR" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
  done | awk '!seen[$0]++' | while read -r f; do
    local base
    base=$(basename "$f" .xz)
    xz -dc "$f" >"$tmp/modules/$base"
    echo "$base" >>"$tmp/modules/order"
  done
  install -m 0755 "$LAB_DIR/guest/init.sh" "$tmp/init"
  (cd "$tmp" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  echo "$stamp" >"$INITRD_STAMP"
  rm -rf "$tmp"
  log "initramfs: built ($(du -h "$INITRD" | cut -f1))"
}

cmd_prepare() {
  local t0=$SECONDS
  [ "$(id -u)" = 0 ] || die "prepare: run as root"
  "$REPO/scripts/install-deps.sh"
  mkdir -p "$CACHE"
  fetch_kernel
  build_initrd
  log "prepare: done in $((SECONDS - t0)) s"
}

# qemu arguments shared by run and shell.
# Topology (guest PCI addresses):
#   00:02.0 igb, the PF under test (user netdev); its VFs appear at 00:12.0, 00:12.2, ...
#   00:03.0 virtio-9p "hostroot" (ro), 00:04.0 virtio-9p "labout" (rw)
#   00:06.0 ioh3420 root port (no ACS) -> 01:00.0 igb, the "unsafe" PF: its VFs
#     (01:10.0, 01:10.2, ...) share one IOMMU group with the root port and the PF.
#   (A conventional pci-bridge is no use here: the guest groups everything behind it,
#   but an igb there has no extended config space, hence no SR-IOV capability.)
qemu_args() {
  local out=$1 kver
  kver=$(kernel_version)
  # shellcheck disable=SC2054 # commas are qemu's
  QEMU_ARGS=(
    -machine q35,accel="${LAB_ACCEL:-tcg}" -cpu max -m "${LAB_MEM:-2048}" -smp "${LAB_SMP:-2}"
    -no-reboot -nodefaults -vga none
    # No 64-bit PCI window: the guest then puts the VF BARs below 4 GiB. Above
    # 4 GiB (where it puts them otherwise, 0x1_0000_0000) the VFs' MMIO is not
    # decoded (reads 0, writes lost), so igbvf's mailbox never reaches the PF:
    # "PF still in reset state", random MAC, NO-CARRIER.
    -global q35-pcihost.pci-hole64-size=0
    -device intel-iommu,intremap=on,caching-mode=on
    -netdev user,id=n0 -device igb,netdev=n0,addr=02.0,mac=52:54:00:12:34:56
    -fsdev local,id=fs0,path=/,security_model=none,readonly=on,multidevs=remap
    -device virtio-9p-pci,fsdev=fs0,mount_tag=hostroot,addr=03.0
    -fsdev local,id=fs1,path="$out",security_model=none
    -device virtio-9p-pci,fsdev=fs1,mount_tag=labout,addr=04.0
    -device ioh3420,id=rp1,chassis=1,addr=06.0
    -netdev user,id=n1,restrict=on -device igb,netdev=n1,bus=rp1,addr=00.0,mac=52:54:00:12:34:57
    -kernel "$KDIR/boot/vmlinuz-$kver" -initrd "$INITRD"
    -append "console=ttyS0 intel_iommu=on panic=-1 quiet loglevel=4 lab.kver=$kver ${LAB_APPEND:-}"
  )
  # Extra qemu arguments for experiments (word-split).
  # shellcheck disable=SC2206
  [ -z "${LAB_QEMU_EXTRA:-}" ] || QEMU_ARGS+=($LAB_QEMU_EXTRA)
}

# Writes the job file the guest's stage2 reads: what to run, where, with which env.
write_job() {
  local out=$1 mode=$2; shift 2
  local bin=${KS_BIN_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/debug}}
  bin=${bin:-$REPO/target/debug}
  {
    printf 'LAB_MODE=%q\n' "$mode"
    printf 'export LAB_REPO=%q\n' "$REPO"
    printf 'export LAB_KDIR=%q\n' "$KDIR"
    printf 'LAB_ARGS=('; printf '%q ' "$@"; printf ')\n'
    printf 'export KS_BIN_DIR=%q\n' "$bin"
    printf 'export KS_REPO=%q\n' "$REPO"
    local v
    while IFS= read -r v; do
      [ "$v" = KS_BIN_DIR ] || [ "$v" = KS_REPO ] || printf 'export %s=%q\n' "$v" "${!v}"
    done < <(compgen -e | grep '^KS_' || true)
  } >"$out/job"
  install -m 0755 "$LAB_DIR/guest/stage2.sh" "$out/stage2.sh"
}

need_prepared() {
  if [ ! -f "$KDIR/.ready" ] || [ ! -f "$INITRD" ]; then die "not prepared: run '$0 prepare' first"; fi
}

cmd_run() {
  [ $# -ge 1 ] || die "usage: lab.sh run SCENARIO [ARGS...]"
  local name=$1; shift
  local script=$LAB_DIR/scenarios/$name.sh
  # A path (with a slash) runs that script instead: for experiments.
  if [[ $name == */* ]]; then script=$(realpath "$name"); name=$(basename "$name" .sh); fi
  [ -f "$script" ] || die "no scenario $script"
  need_prepared
  local out=${LAB_OUT:-$CACHE/runs/$name-$(date +%Y%m%d-%H%M%S)-$$}
  # Keep the 20 newest run directories.
  if [ -d "$CACHE/runs" ]; then
    # shellcheck disable=SC2012 # our own directory names
    { ls -1dt "$CACHE/runs"/*/ 2>/dev/null || true; } | tail -n +21 | xargs -r rm -rf
  fi
  mkdir -p "$out"
  write_job "$out" run "$script" "$@"
  qemu_args "$out"
  # A scenario may ask for a longer limit with a "# lab-timeout: N" line.
  local own
  own=$(sed -n 's/^# lab-timeout: \([0-9][0-9]*\)$/\1/p' "$script" | head -n1)
  local limit=${LAB_TIMEOUT:-${own:-600}} boot_limit=${LAB_BOOT_TIMEOUT:-60} tries=${LAB_BOOT_TRIES:-3}
  local t0=$SECONDS rc qpid tpid try=1
  while :; do
    rm -f "$out/ready" "$out/status"
    : >"$out/output.log"
    log "run $name: booting (try $try, timeout ${limit} s, files in $out)"
    timeout -k 10 "$limit" qemu-system-x86_64 "${QEMU_ARGS[@]}" \
      -display none -monitor none -serial file:"$out/console.log" </dev/null &
    qpid=$!
    # Boot watchdog: TCG with 2 vCPUs occasionally wedges a vCPU early in boot
    # (RCU stall, "timer wakeup didn't happen"); retry such a boot.
    local waited=0
    while [ ! -f "$out/ready" ] && kill -0 "$qpid" 2>/dev/null && [ "$waited" -lt "$boot_limit" ]; do
      sleep 1; waited=$((waited + 1))
    done
    if [ -f "$out/ready" ] || ! kill -0 "$qpid" 2>/dev/null; then
      break
    fi
    kill "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
    cp "$out/console.log" "$out/console.try$try.log"
    log "run $name: no stage2 after ${boot_limit} s (console in console.try$try.log)"
    try=$((try + 1))
    [ "$try" -le "$tries" ] || { log "run $name: giving up after $tries boots"; return 125; }
  done
  tail -n +1 -f --pid="$qpid" "$out/output.log" &
  tpid=$!
  rc=0; wait "$qpid" || rc=$?
  wait "$tpid" 2>/dev/null || true
  local elapsed=$((SECONDS - t0))
  if [ ! -f "$out/status" ]; then
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      log "run $name: TIMEOUT after ${limit} s; last console lines:"
      tail -n 30 "$out/console.log" >&2 || true
      return 124
    fi
    log "run $name: the scenario did not report a status (qemu exit $rc); last console lines:"
    tail -n 40 "$out/console.log" >&2 || true
    return 125
  fi
  local st; st=$(cat "$out/status")
  log "run $name: exit $st, ${elapsed} s wall ($(cat "$out/timings" 2>/dev/null || true))"
  return "$st"
}

cmd_shell() {
  need_prepared
  local out=${LAB_OUT:-$CACHE/runs/shell-$$}
  mkdir -p "$out"
  write_job "$out" shell
  qemu_args "$out"
  log "shell: booting (about half a minute); Ctrl-a x quits qemu; files in $out"
  exec qemu-system-x86_64 "${QEMU_ARGS[@]}" -nographic -serial mon:stdio
}

case ${1:-} in
  prepare) shift; cmd_prepare "$@" ;;
  run) shift; cmd_run "$@" ;;
  shell) shift; cmd_shell "$@" ;;
  *) echo "usage: $0 prepare | run SCENARIO [ARGS...] | shell" >&2; exit 2 ;;
esac
