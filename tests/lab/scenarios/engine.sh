#!/bin/bash
# The engine on real VFs (igb PF, igbvf VFs, vfio-pci, real IOMMU groups):
# status, a claim through `kata-sriov hook precreate` with VLAN 100, spoofchk
# on, trust off and a generated MAC, release through `hook poststop`, IOMMU
# safety, concurrent claims, and (with KS_BENCH=1) claim/release latency
# against a floor program doing the same kernel operations. Every check reads what the
# kernel reports (ip -d link, sysfs, /dev), not what kata-sriov prints.
set -u
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

KS=$KS_BIN_DIR/kata-sriov
PF=0000:00:02.0
UNSAFE_PF=0000:01:00.0
NVF=4
W=/run/ks
mkdir -p "$W"
export KATA_SRIOV_CONFIG=$W/config.toml KATA_SRIOV_LOG=$W/log
cat >"$KATA_SRIOV_CONFIG" <<EOF
[hook]
binary = "$KS"
$(vlan100_pool "$PF")
num_vfs = $NVF
[[pools]]
name = "unsafe"
pfs = ["$UNSAFE_PF"]
mac = "keep"
num_vfs = 2
EOF

check "kata-sriov binary is built" test -x "$KS" || finish
pf_if=$(pci_netdev "$PF")
ip link set "$pf_if" up

step "create VFs"
if "$KS" setup --help >/dev/null 2>&1; then
  t=$(now_ms)
  check "kata-sriov setup" "$KS" setup
  timing setup "$t"
else
  set_numvfs "$PF" "$NVF"
  set_numvfs "$UNSAFE_PF" 2
fi
check_eq "sriov_numvfs of $PF" "$NVF" "$(cat "$SYS_PCI/$PF/sriov_numvfs")"
for i in $(seq 0 $((NVF - 1))); do
  vf=$(vf_addr "$PF" "$i")
  wait_for 15 test -d "$SYS_PCI/$vf/net" || fail "$vf has no netdev"
done
st=$("$KS" status)
echo "$st"
check_match "status lists VF 3 of $PF" "vf 3 +$(vf_addr "$PF" 3) +igbvf" "$st"

step "kata-sriov check on the real host"
chk=$("$KS" check --json) && fail "check passed although the unsafe pool shares an IOMMU group"
st_of() { jq -r --arg id "$1" '.checks[] | select(.id == $id) | .status' <<<"$chk"; }
check_eq "check: IOMMU groups" ok "$(st_of iommu.groups)"
check_eq "check: vfio-pci" ok "$(st_of vfio.driver)"
check_eq "check: vlan100 PF" ok "$(st_of "pool.vlan100.pf.$PF")"
check_eq "check: vlan100 VF count" ok "$(st_of "pool.vlan100.vfs.$PF")"
check_eq "check: vlan100 isolation" ok "$(st_of "pool.vlan100.iommu.$PF")"
check_eq "check: unsafe pool isolation fails" fail "$(st_of "pool.unsafe.iommu.$UNSAFE_PF")"
info "$(jq -r '.checks[] | "\(.status)\t\(.id)\t\(.message)"' <<<"$chk")"

vf_line() { ip -d link show "$pf_if" | grep -E "^ +vf $1 " | sed 's/ *$//'; }
declare -A before
for i in $(seq 0 $((NVF - 1))); do before[$i]=$(vf_line "$i"); done
info "vf 0 before: ${before[0]}"

spec_with() {
  printf '{"ociVersion":"1.0.2","process":{"args":["sh"]},"root":{"path":"rootfs"},"annotations":{"io.kata-sriov.networks":"%s"},"linux":{"namespaces":[{"type":"pid"}]}}' "$1"
}

step "claim through hook precreate (VLAN 100, spoofchk on, trust off, generated MAC)"
t=$(now_ms)
out=$(spec_with vlan100 | "$KS" hook precreate) || fail "precreate failed"
timing precreate_claim "$t"
owner=$(jq -r '.annotations["io.kata-sriov.owner"]' <<<"$out")
mac=$(jq -r '.annotations["io.kata-sriov.guest-networks"] | fromjson | .[0].mac' <<<"$out")
dev=$(jq -r '.linux.devices[] | select(.path | test("^/dev/vfio/[0-9]+$"))' <<<"$out")
group=$(jq -r .path <<<"$dev" | sed 's|/dev/vfio/||')
vf=""
for i in $(seq 0 $((NVF - 1))); do
  a=$(vf_addr "$PF" "$i")
  [ "$(pci_group "$a")" = "$group" ] && { vf=$a; idx=$i; }
done
check "the spec's /dev/vfio/$group is the group of a VF of $PF" test -n "$vf" || finish
info "claimed VF $idx = $vf, group $group, MAC $mac, owner $owner"
check_eq "$vf driver" vfio-pci "$(pci_driver "$vf")"
line=$(vf_line "$idx")
info "vf $idx now: $line"
check_match "PF's vf $idx MAC is the guest annotation's" "link/ether $mac" "$line"
check_match "vf $idx VLAN 100" 'vlan 100' "$line"
check_match "vf $idx spoof checking on" 'spoof checking on' "$line"
check_match "vf $idx trust off" 'trust off' "$line"
check_eq "spec major:minor = the real node's" "$(cat "/sys/class/vfio/$group/dev")" \
  "$(jq -r '"\(.major):\(.minor)"' <<<"$dev")"
check "/dev/vfio/$group exists" test -c "/dev/vfio/$group"
check_match "status shows the lease" "leased to $owner" "$("$KS" status)"

step "release through hook poststop"
release_by_poststop "$KS" "$owner" "$vf"
check_eq "PF's vf $idx line equals the line before the claim" "${before[$idx]}" "$(vf_line "$idx")"

step "IOMMU safety: a VF sharing its group with another endpoint is refused"
uvf=$(vf_addr "$UNSAFE_PF" 0)
info "$uvf group $(pci_group "$uvf"): $(pci_group_members "$uvf")"
udrv=$(pci_driver "$uvf")
err=$(spec_with unsafe | "$KS" hook precreate 2>&1 >"$W/unsafe.out") && fail "claim of an unsafe VF succeeded"
info "refusal: $err"
check_match "refusal names the shared IOMMU group" "shares IOMMU group" "$err"
check_eq "$uvf left on its driver" "$udrv" "$(pci_driver "$uvf")"
check_eq "no lease" 0 "$(ls /run/kata-sriov/leases | wc -l)"

step "concurrency: 8 claims at once against $NVF VFs"
rm -f "$W"/c.*
for i in $(seq 1 8); do
  (spec_with vlan100 | "$KS" hook precreate >"$W/c.$i.out" 2>"$W/c.$i.err"; echo $? >"$W/c.$i.rc") &
done
wait
okn=0 exh=0
for i in $(seq 1 8); do
  case $(cat "$W/c.$i.rc") in
    0) okn=$((okn + 1)) ;;
    *) grep -q exhausted "$W/c.$i.err" && exh=$((exh + 1)) || info "unexpected: $(cat "$W/c.$i.err")" ;;
  esac
done
check_eq "claims that succeeded" "$NVF" "$okn"
check_eq "clean 'exhausted' failures" $((8 - NVF)) "$exh"
groups=$(cat "$W"/c.*.out | jq -r '.linux.devices[]?.path' | grep -E '/dev/vfio/[0-9]+$' | sort | uniq | wc -l)
check_eq "distinct VFs handed out" "$NVF" "$groups"
for i in $(seq 0 $((NVF - 1))); do
  check_eq "VF $i on vfio-pci" vfio-pci "$(pci_driver "$(vf_addr "$PF" "$i")")"
done
for f in "$W"/c.*.out; do
  [ -s "$f" ] || continue
  o=$(jq -r '.annotations["io.kata-sriov.owner"]' <"$f")
  printf '{"id":"x","annotations":{"io.kata-sriov.owner":"%s"}}' "$o" | "$KS" hook poststop || fail "poststop $o"
done
for i in $(seq 0 $((NVF - 1))); do
  a=$(vf_addr "$PF" "$i")
  wait_for 10 test "$(pci_driver "$a")" = igbvf
  check_eq "VF $i back on igbvf" igbvf "$(pci_driver "$a")"
  check_eq "VF $i settings as before" "${before[$i]}" "$(vf_line "$i")"
done
check_eq "no lease left" 0 "$(ls /run/kata-sriov/leases | wc -l)"

# The benchmark runs on request only (KS_BENCH=1), outside the default
# test run's timing.
if [ -n "${KS_BENCH:-}" ] && [ -x "$KS_BIN_DIR/lab-bench" ]; then
  step "latency on real VFs: kata-sriov vs the bare kernel operations (floor)"
  N=${ENGINE_BENCH_N:-12}
  vf0=$(vf_addr "$PF" 0)
  # Times in microseconds from bash's clock (no fork of date(1) inside a
  # measured interval).
  cli_us=0 pre_us=0
  cli_cycle() { # one precreate + poststop; only the two processes are timed
    spec_with vlan100 >"$W/spec.json"
    local a b c d o
    a=${EPOCHREALTIME/./}; "$KS" hook precreate <"$W/spec.json" >"$W/out.json"; b=${EPOCHREALTIME/./}
    o=$(jq -r '.annotations["io.kata-sriov.owner"]' <"$W/out.json")
    printf '{"id":"x","annotations":{"io.kata-sriov.owner":"%s"}}' "$o" >"$W/state.json"
    c=${EPOCHREALTIME/./}; "$KS" hook poststop <"$W/state.json"; d=${EPOCHREALTIME/./}
    pre_us=$((pre_us + b - a)); cli_us=$((cli_us + b - a + d - c))
  }
  # Process start-up alone, mean of 20: exec of /bin/true, our binary's
  # --version (exec, dynamic linking, argument parsing), and a precreate
  # that asks for nothing (plus config load, log setup, reading, parsing
  # and printing the spec).
  printf '%s' '{"ociVersion":"1.0.2","process":{"args":["sh"]},"root":{"path":"rootfs"}}' >"$W/nothing.json"
  per_run() { # per_run CMD...: mean ms of 20 runs after one to warm the cache, stdin from nothing.json
    "$@" <"$W/nothing.json" >/dev/null
    local t; t=${EPOCHREALTIME/./}
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do "$@" <"$W/nothing.json" >/dev/null; done
    awk "BEGIN{printf \"%.1f\", (${EPOCHREALTIME/./} - $t) / 20000}"
  }
  exec_ms=$(per_run /bin/true)
  version_ms=$(per_run "$KS" --version)
  noop_ms=$(per_run "$KS" hook precreate)
  # The same binary linked statically (KS_STATIC, optional): no dynamic loader.
  static=""
  if [ -x "${KS_STATIC:-}" ]; then
    static="; static build: --version $(per_run "$KS_STATIC" --version) ms, precreate asking for nothing $(per_run "$KS_STATIC" hook precreate) ms"
  fi
  # Alternated: half the CLI cycles, the in-process floor/engine pairs
  # (alternated inside lab-bench, on VF 0 for both), the other half.
  for _ in $(seq 1 $((N / 2))); do cli_cycle; done
  pair=$("$KS_BIN_DIR/lab-bench" compare "$KATA_SRIOV_CONFIG" vlan100 "$pf_if" "$vf0" 0 "$N") \
    || fail "lab-bench compare"
  for _ in $(seq 1 $((N - N / 2))); do cli_cycle; done
  cli_ms=$(awk "BEGIN{printf \"%.1f\", $cli_us / 1000 / $N}")
  pre_ms=$(awk "BEGIN{printf \"%.1f\", $pre_us / 1000 / $N}")
  read -r floor_ms engine_ms <<<"$pair"
  ratio() { awk "BEGIN{printf \"%.2f\", $1/$2}"; }
  info "per claim+release cycle, floor and engine median of $N alternated, CLI mean of $N ($(basename "$(dirname "$KS_BIN_DIR")")/$(basename "$KS_BIN_DIR") build, TCG):"
  info "  floor (same kernel operations, no bookkeeping): ${floor_ms} ms"
  info "  engine in one process:                          ${engine_ms} ms  ratio $(ratio "$engine_ms" "$floor_ms")"
  info "  hook precreate + hook poststop (2 processes):   ${cli_ms} ms  ratio $(ratio "$cli_ms" "$engine_ms") to the engine (precreate ${pre_ms} ms)"
  info "process start-up, mean of 20: /bin/true ${exec_ms} ms, kata-sriov --version ${version_ms} ms,"
  info "  hook precreate of a spec asking for nothing ${noop_ms} ms$static"
  echo "bench floor_ms $floor_ms engine_ms $engine_ms cli_ms $cli_ms exec_ms $exec_ms version_ms $version_ms noop_precreate_ms $noop_ms"
  [ -z "${LAB_OUT_DIR:-}" ] || echo "bench floor_ms $floor_ms engine_ms $engine_ms cli_ms $cli_ms" >>"$LAB_OUT_DIR/timings.txt"
  for i in $(seq 0 $((NVF - 1))); do
    check_eq "VF $i settings as before after the benchmark" "${before[$i]}" "$(vf_line "$i")"
  done
fi

finish
