#!/bin/bash
# netdev mode and the Docker network driver on a real igbvf VF (issue 9's lab
# part): the VF keeps igbvf and its network interface moves into the container.
#  1. runc (Debian's), a bundle whose config.json has the createRuntime and
#     poststop hooks pointing at kata-sriov; the container has its own network
#     namespace (not a named one): inside, net1 has the requested address and
#     the generated MAC, the PF's vf line shows that MAC and VLAN 100, and the
#     container pings the PF's VLAN 100 address across the VF. After `runc
#     delete` (the namespace dies, the kernel hands the interface back, the
#     poststop hook renames it and releases) the interface is on the host
#     under its own name and the PF's vf line is as before.
#  2. dockerd (Debian's docker.io, own data root, exec root and socket) and
#     `kata-sriov docker-plugin` on /run/docker/plugins/kssriov.sock:
#     `docker network create -d kssriov -o pool=nd`, `docker run --rm --net
#     vfnet --ip ...` sees the VF as eth0 with the address and MAC and pings
#     the PF; afterwards the interface and the PF's vf line are as before.
# Every check reads what the kernel (or the filesystem) reports.
set -u
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

KS=$KS_BIN_DIR/kata-sriov
PF=0000:00:02.0
NVF=2
W=/run/ksnd
STATE=$W/state
PF_IP=192.168.100.1
RUNC_IP=192.168.100.3
DOCKER_IP=192.168.100.4
DRIVER=kssriov
PLUGIN_SOCK=/run/docker/plugins/$DRIVER.sock
demo() { [ -z "${KS_DEMO:-}" ] || echo "  > $*"; }
t_all=$(now_ms)

check "kata-sriov is built" test -x "$KS" || finish
check "runc, dockerd, docker are installed" command -v runc dockerd docker containerd || finish
mkdir -p "$W" "$(dirname "$PLUGIN_SOCK")"

step "the kata-sriov config: netdev pools on $PF, VLAN 100: nd (generated MAC), ndkeep (the VF keeps its MAC)"
export KATA_SRIOV_CONFIG=$W/config.toml
# Logs where the host keeps them (the run's directory).
OUT=${LAB_OUT_DIR:-$W}
export KATA_SRIOV_LOG=$OUT/kata-sriov.log
cat >"$KATA_SRIOV_CONFIG" <<EOF
state_dir = "$STATE"
[hook]
# A failed claim rolls back within seconds instead of runc's hook timeout.
release_wait = 5
[[pools]]
name = "nd"
pfs = ["$PF"]
mode = "netdev"
vlan = 100
mac = "generate"
[[pools]]
name = "ndkeep"
pfs = ["$PF"]
mode = "netdev"
vlan = 100
mac = "keep"
EOF
[ -z "${KS_DEMO:-}" ] || sed 's/^/  | /' "$KATA_SRIOV_CONFIG"

step "the PF: $NVF VFs on igbvf, a VLAN 100 address ($PF_IP) on the PF"
pf_if=$(pci_netdev "$PF")
ip link set "$pf_if" up
check "write $NVF to sriov_numvfs" set_numvfs "$PF" "$NVF"
declare -A before host_name host_mac
vf_line() { ip -d link show "$pf_if" | grep -E "^ +vf $1 " | sed 's/ *$//'; }
for i in $(seq 0 $((NVF - 1))); do
  a=$(vf_addr "$PF" "$i")
  wait_for 20 test -n "$(pci_netdev "$a")" || fail "VF $i ($a) has no netdev"
  check_eq "VF $i ($a) on igbvf" igbvf "$(pci_driver "$a")"
  host_name[$i]=$(pci_netdev "$a")
  host_mac[$i]=$(cat "/sys/class/net/${host_name[$i]}/address")
  before[$i]=$(vf_line "$i")
  info "vf $i = $a, netdev ${host_name[$i]} (${host_mac[$i]}); PF line: ${before[$i]}"
done
ip link add link "$pf_if" name "$pf_if.100" type vlan id 100
ip addr add "$PF_IP/24" dev "$pf_if.100"
ip link set "$pf_if.100" up
info "$(ip -br addr show "$pf_if.100")"
leases() { find "$STATE/leases" -maxdepth 1 -name "*.json" 2>/dev/null | wc -l; }
# vf_held: the index of the first VF of $PF whose interface is not on the host.
vf_held() {
  local i
  for i in $(seq 0 $((NVF - 1))); do
    [ -z "$(pci_netdev "$(vf_addr "$PF" "$i")")" ] && { echo "$i"; return 0; }
  done
  return 1
}
# back_home I: VF I's interface is on the host under its own name.
back_home() { [ "$(pci_netdev "$(vf_addr "$PF" "$1")")" = "${host_name[$1]}" ]; }

# A busybox root for both parts.
R=$W/rootfs
mkdir -p "$R"/{bin,dev,proc,sys,tmp,etc}
cp /bin/busybox "$R/bin/busybox"
for c in sh ip ping sleep cat echo ls seq true; do ln -sf busybox "$R/bin/$c"; done
# What a container runs: its addresses, wait for carrier on IF, ping the PF.
inner_script() {
  cat <<EOF
ip addr show $1; ip route show
n=0; while [ "\$(cat /sys/class/net/$1/carrier 2>/dev/null)" != 1 ] && [ \$n -lt 150 ]; do sleep 0.1; n=\$((n+1)); done
echo "CARRIER \$(cat /sys/class/net/$1/carrier 2>/dev/null) after \$n"
if ping -c 3 -W 5 $PF_IP; then echo PING-OK; else echo PING-FAIL; fi
EOF
}

# expect_mac POOL LINE: the MAC the PF's vf line shows, checked against the pool.
pf_mac_of() { sed -nE 's#.*link/ether ([0-9a-f:]+).*#\1#p' <<<"$1"; }
check_pf_line() {
  local pool=$1 idx=$2 line=$3
  info "ip -d link show $pf_if: $line"
  if [ "$pool" = nd ]; then
    check_match "[$pool] PF's vf $idx has a generated (locally administered) MAC" 'link/ether [0-9a-f][26ae]:' "$line"
  else
    check_match "[$pool] PF's vf $idx keeps the VF's MAC (${host_mac[$idx]})" "link/ether ${host_mac[$idx]} " "$line"
  fi
  check_match "[$pool] PF's vf $idx has VLAN 100" 'vlan 100' "$line"
}
# after_release POOL IDX: the interface is home and the PF's vf line as before.
after_release() {
  local pool=$1 idx=$2 vf
  vf=$(vf_addr "$PF" "$idx")
  check "[$pool] VF $idx's interface is on the host under its own name (${host_name[$idx]})" wait_for 10 back_home "$idx"
  check_eq "[$pool] VF $idx still on igbvf" igbvf "$(pci_driver "$vf")"
  check_eq "[$pool] no lease left" 0 "$(leases)"
  local after
  after=$(vf_line "$idx")
  info "vf $idx after: $after"
  check_eq "[$pool] PF's vf $idx line equals the line before" "${before[$idx]}" "$after"
  check_eq "[$pool] ${host_name[$idx]}'s own MAC is the one it had before" "${host_mac[$idx]}" \
    "$(cat "/sys/class/net/${host_name[$idx]}/address" 2>/dev/null)"
}

########################################################################
RUNC_ROOT=$W/runc
runc_() { runc --root "$RUNC_ROOT" "$@"; }
CIDS=""
cleanup() {
  local c
  for c in $CIDS; do runc_ delete --force "$c" >/dev/null 2>&1; done
  [ -z "${DOCKERD:-}" ] || { kill "$DOCKERD" 2>/dev/null; wait "$DOCKERD" 2>/dev/null; }
  [ -z "${PLUGIN:-}" ] || { kill "$PLUGIN" 2>/dev/null; wait "$PLUGIN" 2>/dev/null; }
  cp "$W"/runc-*.out "$W/plugin.out" "$W/docker/dockerd.log" "$OUT/" 2>/dev/null
}
trap cleanup EXIT
HENV=$(jq -nc --arg c "$KATA_SRIOV_CONFIG" --arg l "$KATA_SRIOV_LOG" '["KATA_SRIOV_CONFIG=" + $c, "KATA_SRIOV_LOG=" + $l]')

# runc_case POOL: a runc container with both hooks asking POOL for net1.
runc_case() {
  local pool=$1 B=$W/bundle-$1 CID=$1-$$ out=$W/runc-$1.out t rc idx vf cpid line mac in_ns
  CIDS="$CIDS $CID"
  step "runc: a bundle with kata-sriov's createRuntime and poststop hooks, net1 $RUNC_IP/24 from pool $pool"
  mkdir -p "$B"
  local req="[{\"pool\":\"$pool\",\"name\":\"net1\",\"ips\":[\"$RUNC_IP/24\"]}]"
  local script
  script="$(inner_script net1)
echo READY; sleep 300"
  jq --arg ks "$KS" --arg root "$R" --argjson env "$HENV" --arg req "$req" --arg script "$script" '
    .process.terminal = false
    | .process.args = ["/bin/sh", "-c", $script]
    | .process.capabilities |= map_values(. + ["CAP_NET_RAW"])
    | .root = {path: $root, readonly: false}
    | .hooks = {
        createRuntime: [{path: $ks, args: ["kata-sriov", "hook", "create-runtime"], env: $env, timeout: 30}],
        poststop: [{path: $ks, args: ["kata-sriov", "hook", "poststop"], env: $env, timeout: 60}]}
    | .annotations = {"io.kata-sriov.networks": $req}' \
    "$LAB_REPO/tests/data/runc-config.json" >"$B/config.json"
  info "annotation io.kata-sriov.networks=$req; the container has its own network namespace"
  demo "runc create --bundle $B $CID"
  t=$(now_ms)
  # Not through `check`: the container inherits runc's stdout (a file here).
  runc_ create --bundle "$B" "$CID" >"$out" 2>&1 </dev/null; rc=$?
  timing "runc_create_$pool" "$t"
  check_eq "[$pool] runc create (createRuntime hook claims and moves the VF): exit status" 0 "$rc"
  if [ "$(runc_ state "$CID" 2>/dev/null | jq -r .status)" != created ]; then
    fail "[$pool] container not created: $(cat "$out")"
    info "after the failed create (runc ran the poststop hook):"
    idx=0
    after_release "$pool" "$idx"
    return 1
  fi
  check_eq "[$pool] one lease" 1 "$(leases)"
  idx=$(vf_held) || idx=""
  check "[$pool] a VF's interface left the host (its sysfs net/ is empty)" test -n "$idx" || return 1
  vf=$(vf_addr "$PF" "$idx")
  cpid=$(runc_ state "$CID" | jq -r .pid)
  info "claimed VF $idx = $vf (host netdev ${host_name[$idx]}); container pid $cpid"
  line=$(vf_line "$idx")
  check_pf_line "$pool" "$idx" "$line"
  mac=$(pf_mac_of "$line")
  in_ns=$(nsenter -t "$cpid" -n ip -d addr show net1 2>&1)
  info "nsenter -t $cpid -n ip -d addr show net1:"
  sed 's/^/  | /' <<<"$in_ns"
  check_match "[$pool] the container's namespace has net1 with $RUNC_IP/24" "inet $RUNC_IP/24" "$in_ns"
  check_match "[$pool] net1 has the PF's MAC for vf $idx ($mac)" "link/ether $mac " "$in_ns"
  check_match "[$pool] net1 is the VF (parentdev $vf)" "parentdev $vf" "$in_ns"

  demo "runc start $CID"
  t=$(now_ms)
  check "[$pool] runc start" runc_ start "$CID"
  wait_for 60 grep -q READY "$out" || fail "[$pool] container did not finish its checks"
  timing "runc_start_until_pinged_$pool" "$t"
  sed 's/^/  | /' "$out"
  local seen
  seen=$(cat "$out")
  check_match "[$pool] inside: net1 has $RUNC_IP/24" "inet $RUNC_IP/24 .*net1" "$seen"
  check_match "[$pool] inside: net1 has MAC $mac" "link/ether $mac" "$seen"
  check_match "[$pool] inside: net1 has carrier" '^CARRIER 1 ' "$seen"
  check_match "[$pool] inside: ping $PF_IP across the VF (VLAN 100 set by the PF)" '^PING-OK' "$seen"

  step "[$pool] runc kill + delete: the namespace dies, the poststop hook brings the interface home and releases"
  check "[$pool] runc kill" runc_ kill "$CID" KILL
  wait_for 20 test "$(runc_ state "$CID" 2>/dev/null | jq -r .status)" = stopped || fail "[$pool] container did not stop"
  demo "runc delete $CID"
  t=$(now_ms)
  check "[$pool] runc delete (poststop hook)" runc_ delete "$CID"
  timing "runc_delete_$pool" "$t"
  after_release "$pool" "$idx"
}

runc_case nd
runc_case ndkeep
grep -E 'create-runtime|poststop|releas|return' "$KATA_SRIOV_LOG" 2>/dev/null | tail -n 6 | cut -c1-220 | sed 's/^/  log: /'

########################################################################
step "Docker: dockerd (own data root, exec root, socket) and kata-sriov docker-plugin on $PLUGIN_SOCK"
D=$W/docker
mkdir -p "$D" /var/lib/docker/lab
t=$(now_ms)
demo "kata-sriov docker-plugin --socket $PLUGIN_SOCK &"
"$KS" docker-plugin --socket "$PLUGIN_SOCK" >"$W/plugin.out" 2>&1 &
PLUGIN=$!
dockerd --data-root /var/lib/docker/lab --exec-root "$D/x" --pidfile "$D/dockerd.pid" \
  -H "unix://$D/docker.sock" --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
  >"$D/dockerd.log" 2>&1 </dev/null &
DOCKERD=$!
docker_() { docker -H "unix://$D/docker.sock" "$@"; }
check "the plugin's socket exists" wait_for 20 test -S "$PLUGIN_SOCK"
if ! check "dockerd answers" wait_for 90 docker_ version; then
  tail -n 20 "$D/dockerd.log" | sed 's/^/  dockerd: /'
  finish
fi
timing dockerd_up "$t"
tar -C "$R" -cf "$W/bb.tar" .
check "docker import busybox rootfs" docker_ import "$W/bb.tar" ksbb:1

# docker_case POOL
docker_case() {
  local pool=$1 net=vf$1 t rc dout didx dline dmac probe
  step "Docker, pool $pool: docker network create -d $DRIVER -o pool=$pool; docker run --rm --net $net --ip $DOCKER_IP"
  demo "docker network create -d $DRIVER -o pool=$pool --subnet 192.168.100.0/24 --gateway $PF_IP $net"
  t=$(now_ms)
  check "[$pool] docker network create -d $DRIVER -o pool=$pool" \
    docker_ network create -d "$DRIVER" -o "pool=$pool" --subnet 192.168.100.0/24 --gateway "$PF_IP" "$net"
  timing "docker_network_create_$pool" "$t"
  # A probe on the host records the PF's vf line while the container runs.
  (
    for _ in $(seq 1 600); do
      if [ "$(leases)" = 1 ]; then
        i=$(vf_held) && { echo "IDX $i"; echo "LINE $(vf_line "$i")"; break; }
      fi
      sleep 0.1
    done
  ) >"$W/probe-$pool.out" 2>&1 &
  probe=$!
  local dscript
  dscript="$(inner_script eth0)"
  demo "docker run --rm --net $net --ip $DOCKER_IP ksbb:1 sh -c 'ip addr; ping -c 3 $PF_IP'"
  t=$(now_ms)
  dout=$(docker_ run --rm --net "$net" --ip "$DOCKER_IP" ksbb:1 sh -c "$dscript" 2>&1); rc=$?
  timing "docker_run_rm_$pool" "$t"
  kill "$probe" 2>/dev/null; wait "$probe" 2>/dev/null
  sed 's/^/  | /' <<<"$dout"
  check_eq "[$pool] docker run exit status" 0 "$rc"
  didx=$(sed -n 's/^IDX //p' "$W/probe-$pool.out")
  dline=$(sed -n 's/^LINE //p' "$W/probe-$pool.out")
  if [ "$rc" = 0 ] && check "[$pool] while it ran, one lease and a VF's interface off the host" test -n "$didx"; then
    info "VF $didx = $(vf_addr "$PF" "$didx") (host netdev ${host_name[$didx]})"
    check_pf_line "$pool" "$didx" "$dline"
    dmac=$(pf_mac_of "$dline")
    check_match "[$pool] inside: eth0 has $DOCKER_IP/24" "inet $DOCKER_IP/24 .*eth0" "$dout"
    check_match "[$pool] inside: eth0 has the PF's MAC for vf $didx ($dmac)" "link/ether $dmac" "$dout"
    check_match "[$pool] inside: eth0 has carrier" '^CARRIER 1 ' "$dout"
    check_match "[$pool] inside: ping $PF_IP across the VF" '^PING-OK' "$dout"
  else
    [ -n "$didx" ] || didx=0
    grep -iE 'error|warn' "$D/dockerd.log" | tail -n 5 | cut -c1-300 | sed 's/^/  dockerd: /'
  fi
  step "[$pool] after docker run --rm: the interface is home, the PF's vf line as before"
  after_release "$pool" "$didx"
  check "[$pool] docker network rm $net" docker_ network rm "$net"
}
docker_case nd
docker_case ndkeep
check "the plugin is still running" kill -0 "$PLUGIN"

ip link del "$pf_if.100"
timing netdev_scenario "$t_all"
finish
