#!/bin/bash
# The device plugin (`kata-sriov-k8s device-plugin`) on real VFs, with a
# stand-in kubelet over the real gRPC protocol (`lab-kubelet`, an example
# of kata-sriov-k8s): registration, the device list (real health), Allocate
# of the first device: the VF on vfio-pci, the pool's VLAN on the PF's
# `vf N` line, a CDI spec of kind kata-sriov.io/vlan100 naming the VF's real
# /dev/vfio node; then the pod leaves PodResources and the VF comes back
# (igbvf, the PF's `vf N` line as before, no spec). Every check reads what
# the kernel or the filesystem reports.
set -u
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

K8S=$KS_BIN_DIR/kata-sriov-k8s
KUBELET=$KS_BIN_DIR/examples/lab-kubelet
PF=0000:00:02.0
NVF=2
W=/run/ksdp
CDI=$W/cdi
check "kata-sriov-k8s is built" test -x "$K8S" || finish
check "lab-kubelet is built (cargo build -p kata-sriov-k8s --example lab-kubelet)" test -x "$KUBELET" || finish
mkdir -p "$W/dp"
pf_if=$(pci_netdev "$PF")
ip link set "$pf_if" up

export KATA_SRIOV_CONFIG=$W/config.toml
{
  echo "state_dir = \"$W/state\""
  vlan100_pool "$PF"
} >"$KATA_SRIOV_CONFIG"

step "create $NVF VFs on $PF"
make_vfs "$PF" "$NVF"
declare -A before
for i in $(seq 0 $((NVF - 1))); do before[$i]=$(vf_line_of "$pf_if" "$i"); done

step "the stand-in kubelet, then the plugin"
touch "$W/hold"
"$KUBELET" "$W/dp" "$W/pr.sock" "$W/hold" 30 >"$W/kubelet.json" 2>"$W/kubelet.log" &
KUB=$!
t=$(now_ms)
"$K8S" device-plugin --plugin-dir "$W/dp" --pod-resources-socket "$W/pr.sock" \
  --cdi-dir "$CDI" --rescan-seconds 1 --reconcile-seconds 1 --release-grace-seconds 0 \
  2>"$W/plugin.log" &
DP=$!
cleanup() { kill "$DP" "$KUB" 2>/dev/null; wait "$DP" "$KUB" 2>/dev/null; }
trap cleanup EXIT
check "registered and allocated" wait_for 60 test -s "$W/kubelet.json" ||
  { tail -n 20 "$W/plugin.log" "$W/kubelet.log"; finish; }
timing register_allocate "$t"
out=$(cat "$W/kubelet.json")
echo "$out" | jq .
check_eq "resource name" "kata-sriov.io/vlan100" "$(jq -r .registered.resource <<<"$out")"
check_eq "endpoint" "kata-sriov-vlan100.sock" "$(jq -r .registered.endpoint <<<"$out")"
check_eq "devices listed: both VFs, healthy" "$(vf_addr "$PF" 0) Healthy $(vf_addr "$PF" 1) Healthy" \
  "$(jq -r '[.devices[] | .id, .health] | join(" ")' <<<"$out")"
vf=$(jq -r .allocate.id <<<"$out")
i=0
[ "$vf" = "$(vf_addr "$PF" 1)" ] && i=1
g=$(pci_group "$vf")

step "Allocate: $vf (VF $i) for pod lab/p1"
check_eq "CDI name" "kata-sriov.io/vlan100=$vf" "$(jq -r '.allocate.cdi[0]' <<<"$out")"
check_eq "device nodes" "/dev/vfio/vfio /dev/vfio/$g" "$(jq -r '[.allocate.devices[].container] | join(" ")' <<<"$out")"
check_eq "$vf is on vfio-pci" vfio-pci "$(pci_driver "$vf")"
check_match "the PF's vf $i line has VLAN 100" "vlan 100" "$(vf_line_of "$pf_if" "$i")"
spec=$CDI/kata-sriov-dp-vlan100-${vf//:/_}.json
check "CDI spec $spec exists" test -f "$spec"
check_eq "CDI kind = resource name" "kata-sriov.io/vlan100" "$(jq -r .kind "$spec")"
check_eq "CDI device name = device ID" "$vf" "$(jq -r '.devices[0].name' "$spec")"
real="$((16#$(stat -c %t "/dev/vfio/$g"))) $((16#$(stat -c %T "/dev/vfio/$g")))"
check_eq "CDI node /dev/vfio/$g has the real numbers" "/dev/vfio/$g $real" \
  "$(jq -r --arg p "/dev/vfio/$g" '.devices[0].containerEdits.deviceNodes[] | select(.path == $p) | "\(.path) \(.major) \(.minor)"' "$spec")"
status_says() { "$KS_BIN_DIR/kata-sriov" status | grep -q -- "$1"; }
check "kata-sriov status shows the owner and, from PodResources, the pod" \
  wait_for 10 status_says "leased to k8s-dp/vlan100/$vf .* for pod lab/p1"

step "the pod leaves PodResources: the VF comes back"
sleep 3
check_eq "still held while the pod lists it" vfio-pci "$(pci_driver "$vf")"
t=$(now_ms)
rm "$W/hold"
driver_is() { [ "$(pci_driver "$1")" = "$2" ]; }
check "released: $vf back on igbvf" wait_for 30 driver_is "$vf" igbvf
timing release_after_pod_gone "$t"
check_eq "the PF's vf $i line as before" "${before[$i]}" "$(vf_line_of "$pf_if" "$i")"
check "CDI spec deleted" test ! -e "$spec"
check_eq "no lease left" 0 "$(find "$W/state/leases" -name '*.json' 2>/dev/null | wc -l)"
finish
