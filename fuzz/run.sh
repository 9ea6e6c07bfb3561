#!/usr/bin/env bash
# Fuzzes the archive reader and the config parser for a bounded time, then keeps every crashing,
# hanging or memory-blowing input as a regression case under tests/fuzz_regressions/TARGET/, which
# `cargo test` replays (tests/fuzz_regressions.rs).
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET=60]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo fuzz passes nightly-only flags (-Zsanitizer); this toolchain is stable, so let it accept them.
export RUSTC_BOOTSTRAP=1
status=0
for t in config_parse archive_verify root_tar restore_extract restore_staged; do
  mkdir -p "corpus/$t"
  cp ../tests/fuzz_regressions/"$t"/* "corpus/$t/" 2>/dev/null || true
  if ! cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 \
       -print_final_stats=1 2>"$t.log"; then
    status=1
    echo "$t: FOUND A PROBLEM (see fuzz/$t.log)"
  fi
  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$t.log" | sed "s/^/$t: /" || true
  for c in artifacts/"$t"/crash-* artifacts/"$t"/timeout-* artifacts/"$t"/oom-*; do
    if [ -f "$c" ]; then cp "$c" ../tests/fuzz_regressions/"$t"/; echo "kept $c as a regression case"; fi
  done
done
exit $status
