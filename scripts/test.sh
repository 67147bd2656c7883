#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain:
# installs what is missing, then format, lint and every test against the
# real components (embedded kernel node, redis-server, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
TBG_SETUP_TEST_DEPS=1 scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
log=$(mktemp)
set +e
cargo test --locked --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# The fuzz targets (fuzz/, a workspace of its own), a short run of each;
# the 10M-execution runs are `scripts/fuzz.sh full` (docs/benchmarks.md).
echo "== fuzz smoke"
scripts/fuzz.sh smoke || status=$?
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
# Only libtest's summary lines: test output itself may say "N failed".
failed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{s+=$6} END {print s+0}')
echo "${passed} passed, ${failed} failed"
exit "$status"
