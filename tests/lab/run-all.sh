#!/usr/bin/env bash
# CI entry point for the SR-IOV lab: prepare, build the project's binaries,
# then boot the lab once per scenario (tests/lab/scenarios/*.sh, smoke first).
# Exit status: 0 if every scenario passed.
#   LAB_SCENARIOS="smoke foo"  run only these
#   LAB_BUILD=0                do not run cargo build (binaries already in KS_BIN_DIR)
set -uo pipefail
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
t0=$SECONDS

"$LAB_DIR/lab.sh" prepare || { echo "run-all: prepare failed" >&2; exit 1; }
t_prep=$((SECONDS - t0))

if [ "${LAB_BUILD:-1}" != 0 ] && command -v cargo >/dev/null 2>&1; then
  tb=$SECONDS
  (cd "$REPO" && cargo build --workspace --bins) || { echo "run-all: cargo build failed" >&2; exit 1; }
  # The devplugin scenario's stand-in kubelet.
  (cd "$REPO" && cargo build -p kata-sriov-k8s --example lab-kubelet) ||
    { echo "run-all: cargo build of lab-kubelet failed" >&2; exit 1; }
  # The passthrough scenario's inner VM has no libc: kata-sriov-guest static.
  (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p kata-sriov-guest --target x86_64-unknown-linux-gnu) ||
    { echo "run-all: cargo build of the static kata-sriov-guest failed" >&2; exit 1; }
  echo "run-all: cargo build $((SECONDS - tb)) s" >&2
fi

if [ -n "${LAB_SCENARIOS:-}" ]; then
  read -r -a names <<<"$LAB_SCENARIOS"
else
  names=(smoke)
  for f in "$LAB_DIR"/scenarios/*.sh; do
    n=$(basename "$f" .sh)
    [ "$n" = smoke ] || names+=("$n")
  done
fi

summary=() failed=0
for n in "${names[@]}"; do
  ts=$SECONDS
  echo "===== scenario $n" >&2
  rc=0
  "$LAB_DIR/lab.sh" run "$n" || rc=$?
  [ "$rc" = 0 ] || failed=$((failed + 1))
  summary+=("$(printf '%-24s %s  %4d s' "$n" "$([ "$rc" = 0 ] && echo PASS || echo "FAIL($rc)")" $((SECONDS - ts)))")
done

echo >&2
echo "===== lab summary (prepare ${t_prep} s, total $((SECONDS - t0)) s)" >&2
printf '%s\n' "${summary[@]}" >&2
[ "$failed" = 0 ]
