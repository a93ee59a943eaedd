#!/bin/bash
# podman 5.8 with crun (both from the forky root of scripts/forky-root.sh,
# which must be built on the host) on real VFs, in the lab VM whose cgroup
# v2 crun needs (this machine's hybrid cgroup v1 setup makes crun refuse):
# the hooks from `kata-sriov configure podman`, `podman run --runtime crun
# --annotation io.kata-sriov.networks=POOL` gets the VF's VFIO node through
# precreate (checked in the container and against sysfs), and after
# `podman rm` the lease is gone and the VF is back on igbvf.
set -u
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

KS=$KS_BIN_DIR/kata-sriov
FORKY=$KS_REPO/scripts/forky-root.sh
PF=0000:00:02.0
# Not under /run: the forky root gets its own /run (bound to $W/run here).
W=/var/tmp/ks
mkdir -p "$W/run" "$W/storage"
export KATA_SRIOV_CONFIG=$W/config.toml KATA_SRIOV_LOG=$W/log
printf '%s\n' "state_dir = \"$W/state\"" "[hook]" "binary = \"$KS\"" \
  "[[pools]]" 'name = "crun"' "pfs = [\"$PF\"]" 'mac = "keep"' "num_vfs = 2" >"$KATA_SRIOV_CONFIG"

check "kata-sriov binary is built" test -x "$KS" || finish
check "the forky root is built" test -f "$("$FORKY" path)/.kata-sriov-root" || finish
check_eq "cgroup v2" cgroup2fs "$(stat -fc %T /sys/fs/cgroup)"
ip link set "$(pci_netdev "$PF")" up
check "kata-sriov setup" "$KS" setup || finish
check "configure podman" "$KS" configure podman --file "$W/hooks.d"

# podman of the forky root, its state under $W (shared by the invocations).
fpodman() {
  "$FORKY" run --bind "$W" --bind "$W/run:/run" --bind "$KATA_SRIOV_CONFIG:/etc/kata-sriov/config.toml" -- \
    podman --root "$W/storage" --runroot /run/containers/storage --storage-driver vfs \
    --cgroup-manager cgroupfs --events-backend file --runtime crun --hooks-dir "$W/hooks.d" "$@"
}
leases() { ls "$W/state/leases" 2>/dev/null | sed -n 's/\.json$//p'; }

step "image"
mkdir -p "$W/rootfs/bin" "$W/rootfs/dev" "$W/rootfs/proc" "$W/rootfs/sys"
cp /bin/busybox "$W/rootfs/bin/"
for a in sh ls sleep echo; do ln -sf busybox "$W/rootfs/bin/$a"; done
tar -C "$W/rootfs" -cf "$W/bb.tar" .
check "podman import" fpodman import "$W/bb.tar" localhost/ks-bb:1 || finish
info "podman $(fpodman version --format '{{.Client.Version}}' 2>&1); $("$FORKY" run -- crun --version 2>&1 | head -n1)"

step "podman run --runtime crun with the request"
t=$(now_ms)
id=$(fpodman run -d --network none --annotation io.kata-sriov.networks=crun localhost/ks-bb:1 \
  sh -c 'ls -l /dev/vfio/; echo READY; exec sleep 300' 2>"$W/run.err")
check "podman run -d (crun)" test -n "$id" || { info "$(cat "$W/run.err")"; info "$(cat "$W/log" 2>/dev/null)"; finish; }
logs=""
for _ in $(seq 1 120); do
  logs=$(fpodman logs "$id" 2>&1)
  case $logs in *READY*) break ;; esac
  sleep 1
done
timing podman_crun_claim_start "$t"
info "$logs"
vf=$(leases)
check_eq "one lease" 1 "$(leases | grep -c .)"
check_eq "VF on vfio-pci" vfio-pci "$(pci_driver "$vf")"
g=$(pci_group "$vf")
check_match "the container sees /dev/vfio/$g" " $g\$" "$logs"
check_match "and /dev/vfio/vfio" " vfio\$" "$logs"
check_match "the runtime was crun" crun "$(fpodman inspect --format '{{.OCIRuntime}}' "$id" 2>&1)"

step "podman rm"
t=$(now_ms)
check "podman rm -f" fpodman rm -f -t 0 "$id"
for _ in $(seq 1 60); do [ -z "$(leases)" ] && break; sleep 1; done
timing podman_crun_release "$t"
check_eq "no lease" "" "$(leases)"
check_eq "VF back on igbvf" igbvf "$(pci_driver "$vf")"
finish
