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
cargo test --locked --workspace --no-fail-fast 2>&1 | tee /tmp/tbg-test-output.txt
status=${PIPESTATUS[0]}
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' /tmp/tbg-test-output.txt | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' /tmp/tbg-test-output.txt | awk '{s+=$1} END {print s+0}')
echo "${passed} passed, ${failed} failed"
exit "$status"
