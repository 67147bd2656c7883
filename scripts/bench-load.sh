#!/usr/bin/env bash
# Runs load profiles against `tbg devnet` (release build) and records the
# pool's resident memory and CPU next to the load tool's latencies.
#   scripts/bench-load.sh [PROFILE...]        default: smoke standard flood
# Extra load options through LOAD_ARGS, e.g. LOAD_ARGS="--miners 10000 --rate 0.1".
# POOL_CONFIG_EXTRA adds TOML lines to the pool's config (e.g. "[journal]\nenabled = false").
# POOL_HOOK is shell run once the pool is pinned, with $pool_pid set (to pin,
# renice or trace its threads); LOAD_WRAP prefixes the load tool's command
# (e.g. LOAD_WRAP="/usr/bin/time -v" for its own CPU and memory).
set -euo pipefail
cd "$(dirname "$0")/.."
# TBG=PATH runs an already built binary (e.g. a copy kept for an hour-long soak).
. scripts/bench-common.sh
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
cat > "$work/tbg.toml" <<TOML
network = "regtest"
[pool]
mindiff = 0.0001
startdiff = 0.0001
max_invalid_shares_per_minute = 4000000000
# The load generator is thousands of miners on one address, each flooding
# submits: trusted, and past the per-connection submit rate on purpose.
allow_list = ["127.0.0.1"]
max_submits_per_minute = 0
[events]
socket_path = "$work/events.sock"
[metrics]
bind = "127.0.0.1:$((port + 2))"
collector_bind = "127.0.0.1:0"
$(printf '%b' "${POOL_CONFIG_EXTRA:-}")
TOML
rpc_port=$((port + 1))
# The pool starts on core 1 (POOL_CPUS) so that its runtime sizes itself
# for the one core it gets (one tokio worker), as under a systemd
# CPUAffinity= or a container's cpuset; pinning a running pool would leave
# two workers taking turns on one core.
RUST_LOG=warn taskset -c "${POOL_CPUS:-1}" $TBG devnet --config "$work/tbg.toml" --stratum "127.0.0.1:$port" --rpc "127.0.0.1:$rpc_port" --data-dir "$work/devnet" 2>"$work/pool.log" &
pool_pid=$!
wait_for_port "$port"
address=$(python3 - <<'PY'
# A fixed regtest P2WPKH address (the key is irrelevant for random shares).
print("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080")
PY
)
rss_kb() { awk '/VmRSS/ {print $2}' /proc/$pool_pid/status; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$pool_pid/stat; }
hz=$(getconf CLK_TCK)
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), $(date -u +%Y-%m-%d)"
for profile in "${@:-smoke standard flood}"; do
  for p in $profile; do
    rss_before=$(rss_kb); ticks_before=$(cpu_ticks); start=$(date +%s.%N)
    # The load tool pinned to core 0, the pool (all its threads: -a) to core 1.
    taskset -a -cp "${POOL_CPUS:-1}" $pool_pid >/dev/null 2>&1 || true
    if [ -n "${POOL_HOOK:-}" ]; then eval "$POOL_HOOK"; fi
    # NEW_BLOCK_AFTER=SECONDS: another miner finds a block then (RPC
    # generatetoaddress on the embedded node), to time new-block notifies;
    # NEW_BLOCKS=N (default 1) blocks, NEW_BLOCK_EVERY=SECONDS (default 5)
    # apart, for a distribution rather than one sample per run.
    if [ -n "${NEW_BLOCK_AFTER:-}" ]; then
      (sleep "$NEW_BLOCK_AFTER"
       for block in $(seq 1 "${NEW_BLOCKS:-1}"); do
         [ "$block" -gt 1 ] && sleep "${NEW_BLOCK_EVERY:-5}"
         curl -s --user "$(cat "$work/devnet/chain/.cookie")" \
           --data-binary '{"jsonrpc":"1.0","id":1,"method":"generatetoaddress","params":[1,"'"$address"'"]}' \
           "http://127.0.0.1:$rpc_port/" >/dev/null
       done) &
    fi
    # SCRAPE_EVERY=SECONDS: fetch /metrics and /status that often, to price them.
    if [ -n "${SCRAPE_EVERY:-}" ]; then
      (while sleep "$SCRAPE_EVERY"; do
         curl -s "http://127.0.0.1:$((port + 2))/metrics" >/dev/null
         curl -s "http://127.0.0.1:$((port + 2))/status" >/dev/null
       done) &
      scraper=$!
    fi
    # RSS_EVERY=SECONDS: sample the pool's resident memory that often (soak).
    if [ -n "${RSS_EVERY:-}" ]; then
      (t0=$(date +%s); while sleep "$RSS_EVERY"; do
         echo "rss t=$(( $(date +%s) - t0 ))s $(rss_kb) kB"
       done) > "$work/$p.rss" &
      sampler=$!
    fi
    ${LOAD_WRAP:-} taskset -c 0 $TBG loadtest --pool "127.0.0.1:$port" --profile "$p" --addresses "$address" ${LOAD_ARGS:-} > "$work/$p.txt"
    end=$(date +%s.%N); ticks_after=$(cpu_ticks); rss_after=$(rss_kb)
    [ -n "${scraper:-}" ] && kill "$scraper" 2>/dev/null && scraper=""
    [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null && sampler="" && cat "$work/$p.rss"
    answered=$(sed -n 's/^shares sent [0-9]* answered \([0-9]*\).*/\1/p' "$work/$p.txt")
    [ -n "$answered" ] && [ "$answered" -gt 0 ] && python3 -c "print(f'pool CPU per share: {($ticks_after-$ticks_before)/$hz/$answered*1e6:.2f} us')"
    cpu=$(python3 -c "print(f'{($ticks_after-$ticks_before)/$hz/($end-$start)*100:.0f}')")
    echo "== profile $p: pool RSS ${rss_before} kB -> ${rss_after} kB, pool CPU ${cpu}% of one core"
    cat "$work/$p.txt"
    # The pool's own view: template received -> notify written, per miner.
    curl -s "http://127.0.0.1:$((port + 2))/metrics" | grep '^ckpool_notify_delay_seconds' || true
  done
done
