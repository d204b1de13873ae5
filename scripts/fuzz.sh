#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets: client_frame, envelope_decode,
# log_records, http_bodies, ws_reader, sio_packets — whatever `cargo fuzz list` names) at once for SECS seconds each
# (default 20) on the corpora kept in fuzz/corpus; new inputs go to a temp dir,
# so the kept corpora change only when someone copies them in on purpose.
# Exits non-zero when a target crashes: its input is in fuzz/artifacts/<target>/.
# Needs a nightly toolchain and cargo-fuzz (scripts/test-all.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-20}"
cargo +nightly fuzz build -O
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A pids
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$work/$target" "corpus/$target"
  cargo +nightly fuzz run -O "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 >"$work/$target.log" 2>&1 &
  pids[$target]=$!
done
status=0
for target in "${!pids[@]}"; do
  if wait "${pids[$target]}"; then
    echo "ok: $target: $(grep -o 'Done [0-9]* runs' "$work/$target.log" | tail -n 1) in ${secs} s"
  else
    echo "FAIL: fuzz target $target crashed; the end of its log:" >&2
    tail -n 40 "$work/$target.log" >&2
    status=1
  fi
done
exit $status
