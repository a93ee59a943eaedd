#!/bin/bash
# The shim with real containerd and runc on real VFs (issue 7, item 6; issue
# 10's lab part): Debian's containerd 1.6 with its own root, state and socket,
# containerd-shim-kata-sriov-v2 first on its PATH, runc's shim as the delegate.
#  1. A container asking for a vfio pool (VLAN 100, generated MAC) sees
#     /dev/vfio/N with the real node's numbers; while it runs the PF reports
#     the VF's MAC and VLAN and the VF is on vfio-pci; the delegate's
#     config.json has no host hook (the default: under Kata's runtime-rs any
#     host hook switches off the guest hooks); after `ctr run --rm` ends the
#     shim's delete has put the VF back on igbvf and the PF's `vf N` line is
#     as before.
#  2. A guest = "dan" pool: for a CRI sandbox, Kata's DAN file
#     <dir>/<sandbox-id>.json exists while it runs, names a VF on vfio-pci and
#     the MAC the PF has for it; after removal the file and the lease are gone.
# Every check reads what the kernel (or the filesystem) reports.
set -u
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

KS=$KS_BIN_DIR/kata-sriov
SHIM=$KS_BIN_DIR/containerd-shim-kata-sriov-v2
PF=0000:00:02.0
NVF=2
W=/run/kss
STATE=/run/kata-sriov
DANS=$W/dans
NS=lab
RUNTIME=io.containerd.kata-sriov.v2
demo() { [ -z "${KS_DEMO:-}" ] || echo "  > $*"; }

check "kata-sriov is built" test -x "$KS" || finish
check "containerd-shim-kata-sriov-v2 is built" test -x "$SHIM" || finish
check "containerd and runc's shim are installed" command -v containerd containerd-shim-runc-v2 ctr runc || finish
mkdir -p "$W/bin" "$DANS" "$W/x"
pf_if=$(pci_netdev "$PF")
ip link set "$pf_if" up

step "the kata-sriov config: a vfio pool and a dan pool on $PF, runc's shim as delegate, defaults otherwise (no host hook)"
export KATA_SRIOV_CONFIG=$W/config.toml
cat >"$KATA_SRIOV_CONFIG" <<EOF
state_dir = "$STATE"
[shim]
delegate = "containerd-shim-runc-v2"
[hook]
binary = "$KS"
[dan]
dir = "$DANS"
$(vlan100_pool "$PF")
[[pools]]
name = "dan100"
pfs = ["$PF"]
vlan = 100
mac = "generate"
guest = "dan"
EOF
[ -z "${KS_DEMO:-}" ] || sed 's/^/  | /' "$KATA_SRIOV_CONFIG"

step "create $NVF VFs on $PF"
check "write $NVF to sriov_numvfs" set_numvfs "$PF" "$NVF"
for i in $(seq 0 $((NVF - 1))); do
  wait_for 20 test -d "$SYS_PCI/$(vf_addr "$PF" "$i")/net" || fail "VF $i has no netdev"
done
vf_line() { ip -d link show "$pf_if" | grep -E "^ +vf $1 " | sed 's/ *$//'; }
declare -A before
for i in $(seq 0 $((NVF - 1))); do
  before[$i]=$(vf_line "$i")
  info "vf $i before: ${before[$i]}"
done
# vf_of_group N: index of the PF's VF in IOMMU group N.
vf_of_group() {
  local i
  for i in $(seq 0 $((NVF - 1))); do
    [ "$(pci_group "$(vf_addr "$PF" "$i")")" = "$1" ] && { echo "$i"; return 0; }
  done
  return 1
}
vf_of_addr() {
  local i
  for i in $(seq 0 $((NVF - 1))); do
    [ "$(vf_addr "$PF" "$i")" = "$1" ] && { echo "$i"; return 0; }
  done
  return 1
}
leases() { ls "$STATE/leases" 2>/dev/null | wc -l; }

step "start containerd (own root, state and socket; our shim first on PATH)"
ln -sf "$SHIM" "$W/bin/containerd-shim-kata-sriov-v2"
cat >"$W/containerd.toml" <<EOF
version = 2
root = "/var/lib/containerd/lab"
state = "$W/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$W/c.sock"
[ttrpc]
  address = "$W/c.sock.ttrpc"
EOF
t=$(now_ms)
PATH="$W/bin:$PATH" containerd --config "$W/containerd.toml" >"$W/containerd.log" 2>&1 &
CTD=$!
cleanup() { kill "$CTD" 2>/dev/null; wait "$CTD" 2>/dev/null; }
trap cleanup EXIT
ctr_() { ctr --address "$W/c.sock" --namespace "$NS" "$@"; }
check "containerd answers" wait_for 60 ctr_ version || { tail -20 "$W/containerd.log"; finish; }
timing containerd_up "$t"
info "shim lookup: $(PATH="$W/bin:$PATH" command -v containerd-shim-kata-sriov-v2) -> delegate $(command -v containerd-shim-runc-v2)"

# The container's root: static busybox.
R=$W/rootfs
mkdir -p "$R"/{bin,dev,proc,sys,tmp,etc,x}
cp /bin/busybox "$R/bin/busybox"
for c in sh ls cat stat sleep echo test tr; do ln -sf busybox "$R/bin/$c"; done

# run_bg ID OUTFILE [ctr run options...]: a container that prints what it
# sees, then waits until /x/ID.go appears (the bind-mounted $W/x).
run_bg() {
  local id=$1 out=$2; shift 2
  rm -f "$W/x/$id.go"
  ctr_ run --rm --runtime "$RUNTIME" "$@" \
    --mount "type=bind,src=$W/x,dst=/x,options=rbind:rw" --rootfs "$R" "$id" \
    /bin/sh -c 'echo "IN devs: $(ls /dev/vfio 2>/dev/null | tr "\n" " ")"
      for d in /dev/vfio/*; do [ -e "$d" ] && echo "IN node $d $(stat -c "%t:%T %F" "$d")"; done
      echo IN-READY; while [ ! -e /x/'"$id"'.go ]; do sleep 0.2; done; echo IN-DONE' \
    >"$out" 2>&1 &
}

# ready_or_finish WHAT OUTFILE: waits for run_bg's IN-READY in OUTFILE; if it
# does not come, fails with what the container printed and containerd's log,
# and finishes.
ready_or_finish() {
  wait_for 60 grep -q IN-READY "$2" && return 0
  fail "$1 did not start: $(cat "$2")"
  tail -30 "$W/containerd.log"
  finish
}

step "a container asking for pool vlan100 through containerd-shim-kata-sriov-v2"
demo "ctr run --rm --runtime $RUNTIME --annotation io.kata-sriov.networks=vlan100 --rootfs $R c1 sh -c ..."
t=$(now_ms)
run_bg c1 "$W/c1.out" --annotation io.kata-sriov.networks=vlan100
CPID=$!
ready_or_finish "container c1" "$W/c1.out"
timing ctr_run_until_ready "$t"
sed 's/^/  | /' "$W/c1.out"
devs=$(sed -n 's/^IN devs: //p' "$W/c1.out")
group=$(tr ' ' '\n' <<<"$devs" | grep -E '^[0-9]+$' | head -n1)
check "the container sees /dev/vfio/N and /dev/vfio/vfio" test -n "$group" -a -n "$(grep -w vfio <<<"$devs")"
idx=$(vf_of_group "$group") || idx=""
check "/dev/vfio/$group is the IOMMU group of a VF of $PF" test -n "$idx" || finish
vf=$(vf_addr "$PF" "$idx")
info "claimed VF $idx = $vf, IOMMU group $group"
real=$(cat "/sys/class/vfio/$group/dev")
in_hex=$(sed -n "s|^IN node /dev/vfio/$group \([0-9a-f]*:[0-9a-f]*\) .*|\1|p" "$W/c1.out")
in_dec=$(printf '%d:%d' "0x${in_hex%%:*}" "0x${in_hex##*:}")
check_eq "container's /dev/vfio/$group major:minor = the real node's (/sys/class/vfio/$group/dev)" "$real" "$in_dec"
check_match "container's /dev/vfio/$group is a character device" "character special" "$(grep "node /dev/vfio/$group " "$W/c1.out")"
check_eq "$vf driver while the container runs" vfio-pci "$(pci_driver "$vf")"
line=$(vf_line "$idx")
info "ip -d link show $pf_if: $line"
owner=$NS/c1
lease_mac=$("$KS" status --json 2>/dev/null | jq -r --arg o "$owner" '.leases[] | select(.owner == $o) | .mac // empty' 2>/dev/null)
check_match "PF's vf $idx has a generated (locally administered) MAC" 'link/ether [0-9a-f][26ae]:' "$line"
check_match "PF's vf $idx has VLAN 100" 'vlan 100' "$line"
check_match "PF's vf $idx spoof checking on, trust off" 'spoof checking on.*trust off' "$line"
st=$("$KS" status)
check_match "kata-sriov status shows the lease of $owner" "leased to $owner" "$st"
[ -z "$lease_mac" ] || check_match "the MAC kata-sriov recorded is the PF's" "link/ether $lease_mac" "$line"
spec=$W/state/io.containerd.runtime.v2.task/$NS/c1/config.json
check "the delegate's config.json is there" test -f "$spec"
check "the delegate's config.json has no host hook (the shim adds none by default)" \
  bash -c "! grep -Eq '\"(prestart|createRuntime|createContainer|startContainer|poststart|poststop)\"' '$spec'"

step "the container exits; ctr run --rm removes it (the shim's delete releases the VF when the delegate exits)"
t=$(now_ms)
touch "$W/x/c1.go"
wait "$CPID"; rc=$?
check_eq "ctr run exit status" 0 "$rc"
check "container said IN-DONE" grep -q IN-DONE "$W/c1.out"
wait_for 20 test "$(pci_driver "$vf")" = igbvf
timing ctr_rm_until_igbvf "$t"
check_eq "$vf back on igbvf" igbvf "$(pci_driver "$vf")"
wait_for 10 test -d "$SYS_PCI/$vf/net"
after=$(vf_line "$idx")
info "vf $idx after: $after"
check_eq "PF's vf $idx line equals the line before the claim" "${before[$idx]}" "$after"
check_eq "no lease left" 0 "$(leases)"
check "/dev/vfio/$group gone" wait_for 5 test ! -e "/dev/vfio/$group"
check "the shim's delete released it" wait_for 5 grep -q 'delete: released' "$STATE/kata-sriov.log"
grep -i 'releas' "$STATE/kata-sriov.log" 2>/dev/null | tail -n 4 | cut -c1-200 | sed 's/^/  log: /'

step "a failed claim: an unknown pool is refused at start, nothing claimed"
err=$(ctr_ run --rm --runtime "$RUNTIME" --annotation io.kata-sriov.networks=nosuch --rootfs "$R" c2 /bin/true 2>&1) &&
  fail "container with an unknown pool ran"
info "ctr: $err"
check_match "ctr reports kata-sriov's refusal" 'kata-sriov.*nosuch' "$err"
check_eq "no lease" 0 "$(leases)"
for i in $(seq 0 $((NVF - 1))); do
  check_eq "VF $i on igbvf" igbvf "$(pci_driver "$(vf_addr "$PF" "$i")")"
done

step "DAN: a CRI sandbox asking for the guest = \"dan\" pool dan100"
# A sandbox's id is its CRI sandbox id (kata-sriov refuses a spec naming
# another sandbox).
SID=sandbox-$$
demo "ctr run --rm --runtime $RUNTIME --annotation io.kata-sriov.networks=dan100 --annotation io.kubernetes.cri.container-type=sandbox --annotation io.kubernetes.cri.sandbox-id=$SID ..."
t=$(now_ms)
run_bg "$SID" "$W/s1.out" --annotation io.kata-sriov.networks=dan100 \
  --annotation io.kubernetes.cri.container-type=sandbox --annotation "io.kubernetes.cri.sandbox-id=$SID"
CPID=$!
ready_or_finish "sandbox s1" "$W/s1.out"
timing dan_run_until_ready "$t"
f=$DANS/$SID.json
check "DAN file $f exists" test -f "$f"
[ -f "$f" ] && jq -c . "$f" | sed 's/^/  | /'
dvf=$(jq -r '.devices[0].device.pci_device_id' "$f" 2>/dev/null)
dmac=$(jq -r '.devices[0].guest_mac' "$f" 2>/dev/null)
check_eq "DAN device type" vfio "$(jq -r '.devices[0].device.type' "$f" 2>/dev/null)"
didx=$(vf_of_addr "$dvf") || didx=""
check "DAN file names a VF of $PF ($dvf)" test -n "$didx" || finish
check_eq "$dvf driver" vfio-pci "$(pci_driver "$dvf")"
dline=$(vf_line "$didx")
info "ip -d link show $pf_if: $dline"
check_match "DAN guest_mac $dmac is the PF's MAC for vf $didx" "link/ether $dmac " "$dline"
check_match "PF's vf $didx has VLAN 100" 'vlan 100' "$dline"
check_match "the DAN sandbox's spec has no /dev/vfio device" "^IN devs: *$" "$(grep '^IN devs' "$W/s1.out")"
check_eq "one lease" 1 "$(leases)"

step "the sandbox is removed: DAN file and lease gone"
t=$(now_ms)
touch "$W/x/$SID.go"
wait "$CPID"; rc=$?
check_eq "ctr run exit status" 0 "$rc"
wait_for 20 test "$(pci_driver "$dvf")" = igbvf
timing dan_rm_until_igbvf "$t"
check "DAN file gone" test ! -e "$f"
check_eq "no lease left" 0 "$(leases)"
check_eq "$dvf back on igbvf" igbvf "$(pci_driver "$dvf")"
wait_for 10 test -d "$SYS_PCI/$dvf/net"
check_eq "PF's vf $didx line equals the line before" "${before[$didx]}" "$(vf_line "$didx")"

grep -E 'WARN|ERRO|level=error' "$W/containerd.log" | grep -v 'failed to load plugin\|skip loading plugin' | tail -n 5 | sed 's/^/  containerd: /'
finish
