#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers and the share validator (fuzz/,
# cargo-fuzz + libFuzzer on the stable toolchain, no sanitizer: see
# fuzz/README.md).
#
#   scripts/fuzz.sh smoke [TARGET...]   each target for TBG_FUZZ_SMOKE_SECONDS (25) s: CI
#   scripts/fuzz.sh full [TARGET...]    each target for TBG_FUZZ_RUNS (10,000,000) executions
#   scripts/fuzz.sh run TARGET [ARGS]   one target, ARGS passed to libFuzzer (-runs=N, -max_total_time=S, ...)
#   scripts/fuzz.sh list                the targets
#
# One fuzzer at a time, one process each. Working corpora, logs and crash
# inputs live under TBG_FUZZ_WORK (/var/tmp/tbg-fuzz), the checked-in seeds
# in fuzz/seeds/. A finding exits non-zero and names the input that
# reproduces it.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(stratum_line gbt_template ckpool_config journal_ring share_validator relay_frames sv2_frames)
TARGET_DIR=${TBG_FUZZ_TARGET_DIR:-/var/tmp/tbg-fuzz-target}
WORK=${TBG_FUZZ_WORK:-/var/tmp/tbg-fuzz}
SMOKE_SECONDS=${TBG_FUZZ_SMOKE_SECONDS:-25}
FULL_RUNS=${TBG_FUZZ_RUNS:-10000000}
BIN_DIR="$TARGET_DIR/x86_64-unknown-linux-gnu/release"

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

build() {
    if ! command -v cargo-fuzz >/dev/null 2>&1; then
        echo "== installing cargo-fuzz"
        cargo install --locked cargo-fuzz
    fi
    echo "== building the fuzz targets (cargo fuzz build -s none)"
    cargo fuzz build --fuzz-dir fuzz -s none --target-dir "$TARGET_DIR" "$@"
}

# run_target NAME [libFuzzer args]: prints one summary line, fails on a finding.
run_target() {
    local name=$1
    shift
    local corpus="$WORK/corpus/$name" artifacts="$WORK/artifacts/$name/" log="$WORK/logs/$name.log"
    mkdir -p "$corpus" "$artifacts" "$WORK/logs"
    local started status=0 extra=()
    started=$(date +%s)
    if [ -f "fuzz/dicts/$name.dict" ]; then
        extra+=(-dict="fuzz/dicts/$name.dict")
    fi
    # A script of ~100 actions already crosses every rule; longer ones
    # only slow the search down.
    if [ "$name" = share_validator ]; then
        extra+=(-max_len=1024)
    fi
    # New inputs go to the working corpus (first dir), never into fuzz/seeds.
    "$BIN_DIR/$name" -artifact_prefix="$artifacts" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${extra[@]}" "$@" "$corpus" "fuzz/seeds/$name" >"$log" 2>&1 || status=$?
    local runs rate seconds
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    seconds=$(($(date +%s) - started))
    if [ "$status" -ne 0 ]; then
        echo "!! $name: FINDING after ${runs:-?} executions (exit $status); log: $log"
        grep -m1 -A12 -E "panicked at|ERROR: libFuzzer" "$log" || tail -20 "$log"
        local crash
        crash=$(sed -n 's/^.*Test unit written to //p' "$log" | tail -1)
        if [ -n "$crash" ]; then
            echo "reproduce: $BIN_DIR/$name $crash"
        fi
        return "$status"
    fi
    printf '%-16s %12s executions in %4s s (%s exec/s), no finding\n' "$name:" "${runs:-?}" "$seconds" "${rate:-?}"
}

mode=${1:-}
[ $# -gt 0 ] && shift
selected=("$@")
if [ ${#selected[@]} -eq 0 ]; then
    selected=("${TARGETS[@]}")
fi
case "$mode" in
smoke)
    build
    echo "== fuzz smoke: each target for ${SMOKE_SECONDS} s"
    for name in "${selected[@]}"; do
        run_target "$name" -max_total_time="$SMOKE_SECONDS"
    done
    ;;
full)
    build
    echo "== fuzz full: each target for ${FULL_RUNS} executions ($(lscpu | sed -n 's/^Model name: *//p'), $(date -u))"
    for name in "${selected[@]}"; do
        run_target "$name" -runs="$FULL_RUNS"
    done
    ;;
run)
    [ $# -ge 1 ] || usage
    name=$1
    shift
    build "$name"
    run_target "$name" "$@"
    ;;
list)
    printf '%s\n' "${TARGETS[@]}"
    ;;
*)
    usage
    ;;
esac
