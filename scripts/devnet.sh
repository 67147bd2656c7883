#!/usr/bin/env bash
# Runs the pool on an embedded regtest node (Bitcoin Core's validation
# engine, no Bitcoin Core or database needed) with the built-in CPU miner.
# Point any SHA-256 Stratum miner at port 3333 too. Extra arguments go to
# `tbg devnet` (see `tbg devnet --help`), e.g. `--blocks 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked -p tbg -- devnet --miner "$@"
