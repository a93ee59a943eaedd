# shellcheck shell=bash disable=SC2012
# Helpers for lab scenarios: source "$LAB_REPO/tests/lab/lib.sh" (or relative to
# the scenario). Checks count failures; `finish` exits 1 if any failed.
# Every check prints one line: "ok - ..." or "FAIL - ..." (with what was seen).

LAB_FAILS=0
LAB_CHECKS=0
SYS_PCI=/sys/bus/pci/devices

# The project's binaries (built on the host, visible at the same path).
KS_BIN_DIR=${KS_BIN_DIR:-${KS_REPO:-$(pwd)}/target/debug}

ok() { LAB_CHECKS=$((LAB_CHECKS + 1)); echo "ok - $*"; }
fail() { LAB_CHECKS=$((LAB_CHECKS + 1)); LAB_FAILS=$((LAB_FAILS + 1)); echo "FAIL - $*"; }
step() { echo; echo "### $*"; }
info() { echo "  $*"; }
die() { fail "$*"; finish; }

# check DESC CMD...: runs CMD, passes if it exits 0.
check() {
  local desc=$1; shift
  local outp rc=0
  outp=$("$@" 2>&1) || rc=$?
  if [ "$rc" = 0 ]; then ok "$desc"; else fail "$desc (exit $rc: $outp)"; fi
  return "$rc"
}

# check_eq DESC EXPECTED ACTUAL
check_eq() {
  if [ "$2" = "$3" ]; then ok "$1"; else fail "$1 (expected '$2', got '$3')"; return 1; fi
}

# check_match DESC REGEX TEXT (grep -E on TEXT)
check_match() {
  if grep -Eq -- "$2" <<<"$3"; then ok "$1"; else fail "$1 (no match for /$2/ in: $3)"; return 1; fi
}

# wait_for SECONDS CMD...: polls CMD every 0.1 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# timing NAME START_MS: prints and records "timing NAME <ms> ms" in $LAB_OUT_DIR/timings.txt
timing() {
  local ms=$(($(now_ms) - $2))
  echo "timing $1 ${ms} ms"
  [ -z "${LAB_OUT_DIR:-}" ] || echo "$1 $ms" >>"$LAB_OUT_DIR/timings.txt"
}

# PCI helpers. Arguments are full addresses such as 0000:00:02.0.
pci_driver() { local l; l=$(readlink "$SYS_PCI/$1/driver" 2>/dev/null) && basename "$l"; }
pci_netdev() { ls "$SYS_PCI/$1/net" 2>/dev/null | head -n1; }
pci_group() { basename "$(readlink "$SYS_PCI/$1/iommu_group")"; }
pci_group_members() { ls "/sys/kernel/iommu_groups/$(pci_group "$1")/devices" | tr '\n' ' '; }
vf_addr() { basename "$(readlink "$SYS_PCI/$1/virtfn$2")"; }
set_numvfs() { echo "$2" >"$SYS_PCI/$1/sriov_numvfs"; }
# make_vfs PF N: N VFs on PF (checked), each waited for until it has a netdev.
make_vfs() {
  local i
  check "write $2 to sriov_numvfs of $1" set_numvfs "$1" "$2"
  for i in $(seq 0 $(($2 - 1))); do
    wait_for 20 test -d "$SYS_PCI/$(vf_addr "$1" "$i")/net" || fail "VF $i of $1 has no netdev"
  done
}
# vf_line_of IF N: the `vf N` line of PF interface IF (ip -d link), trailing blanks cut.
vf_line_of() { ip -d link show "$1" | grep -E "^ +vf $2 " | sed 's/ *$//'; }

# vlan100_pool PF: the scenarios' config section for pool vlan100 on PF
# (VLAN 100, spoof checking on, trust off, a generated MAC).
vlan100_pool() {
  cat <<EOF
[[pools]]
name = "vlan100"
pfs = ["$1"]
vlan = 100
spoofchk = true
trust = false
mac = "generate"
EOF
}

# release_by_poststop KS OWNER VF: releases OWNER's VFs through `KS hook
# poststop` (timed as poststop_release), then checks that VF is back on igbvf.
release_by_poststop() {
  local ks=$1 owner=$2 vf=$3 t
  t=$(now_ms)
  check "poststop" bash -c "printf '{\"id\":\"x\",\"annotations\":{\"io.kata-sriov.owner\":\"%s\"}}' '$owner' | '$ks' hook poststop"
  timing poststop_release "$t"
  wait_for 10 test "$(pci_driver "$vf")" = igbvf
  check_eq "$vf back on igbvf" igbvf "$(pci_driver "$vf")"
}

# bind_driver ADDR DRIVER: driver_override + unbind + drivers_probe ("" clears the override).
bind_driver() {
  local dev=$1 drv=$2
  echo "$drv" >"$SYS_PCI/$dev/driver_override" || return 1
  if [ -e "$SYS_PCI/$dev/driver" ]; then echo "$dev" >"$SYS_PCI/$dev/driver/unbind" || return 1; fi
  echo "$dev" >/sys/bus/pci/drivers_probe || return 1
}

finish() {
  echo
  if [ "$LAB_FAILS" = 0 ]; then
    echo "PASS: $LAB_CHECKS checks"
    exit 0
  fi
  echo "FAILED: $LAB_FAILS of $LAB_CHECKS checks"
  exit 1
}
