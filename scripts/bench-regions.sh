#!/bin/sh
# Multi-region figures of issue 17 on three regions in network namespaces
# (needs root): template latency primary -> relays' miners, event
# convergence from three regions, catch-up after a cut. Knobs: BLOCKS,
# CLIENTS, INTERVAL_MS, SECONDS, CUT_SECONDS (crates/chaos/benches/regions.rs).
set -eu
cd "$(dirname "$0")/.."
TBG_SETUP_TEST_DEPS=1 scripts/setup.sh
if [ -z "${TBG:-}" ]; then
  cargo build --release --locked -p tbg >/dev/null
  TBG=${CARGO_TARGET_DIR:-target}/release/tbg
fi
TBG=$(realpath "$TBG") exec cargo bench --locked -p tbg-chaos --bench regions
