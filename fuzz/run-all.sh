#!/usr/bin/env bash
# Runs every fuzz target in turn, one job at a time, for SECONDS each
# (default 600), after writing the seed corpora if they are missing.
# Logs go to fuzz/logs/TARGET.log; crashes to fuzz/artifacts/TARGET/.
# Usage, from the repository root: bash fuzz/run-all.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(session ysession shard_update shard_mutate)
# cargo-fuzz passes nightly-only flags; the pinned stable toolchain takes
# them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
[ -d fuzz/corpus ] || cargo run --manifest-path fuzz/Cargo.toml --example seed-corpus
mkdir -p fuzz/logs
for target in "${targets[@]}"; do
  echo "== $target: $seconds s"
  # -O -a: optimised, with debug assertions and overflow checks as in the
  # test builds. -s none: Folio forbids unsafe code, and a sanitizer halves
  # the speed on two cores.
  # -fork=1 -ignore_crashes=1: a crash is saved and the run goes on, so
  # that one known finding does not end it.
  cargo fuzz run -O -a -s none "$target" -- \
    -fork=1 -ignore_crashes=1 -max_total_time="$seconds" -max_len=8192 \
    -timeout=10 -rss_limit_mb=2048 >"fuzz/logs/$target.log" 2>&1 ||
    echo "$target: stopped with $? (see fuzz/logs/$target.log)"
  # The last status line: executions, exec/s, crashes, seconds.
  grep -E '^#[0-9]+: cov' "fuzz/logs/$target.log" | tail -1 || true
done
