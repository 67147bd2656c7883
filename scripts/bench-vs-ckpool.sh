#!/usr/bin/env bash
# Our pool next to upstream ckpool (solo mode, `ckpool -B`) under the same
# loads, against the same embedded regtest node: resident memory per miner
# and CPU per share of each pool process.
#   CKPOOL=/path/to/ckpool scripts/bench-vs-ckpool.sh
# CKPOOL is a ckpool binary built from its public source (nothing of it is
# in this repository); POOLS=ours runs ours alone; POOLS="ours oursv2" runs
# ours under the same loads over Stratum V1 and over Stratum V2 (standard
# channels, V2 on the V1 port). Loads (LOADS, default "flood paced"):
#   flood: MINERS (1000) miners, 4 random-nonce submits in flight each, DURATION (15) s
#   paced: MINERS miners at 10 shares/s each, DURATION s
# Random nonces are hashed by the load tool first and those that would solve
# a regtest block are skipped, so every share is judged and none is a block.
# Each pool runs alone on core 1 (POOL_CPUS), the node and the load tool on
# core 0; each load runs on a freshly started pool, with MINERS and then
# 2 x MINERS miners. Memory per miner is the slope between the two: what
# one more miner costs, without the fixed costs that do not grow with
# miners (our journal's 16 MiB staging ring, in the idle RSS already). RSS
# is read twice: 2 s before the load ends, every miner connected, and
# SETTLE (3) s after it, the miners gone: what the pool kept of them.
set -euo pipefail
cd "$(dirname "$0")/.."
pools=${POOLS:-ours ckpool}
case " $pools " in *" ckpool "*) : "${CKPOOL:?set CKPOOL to a ckpool binary (or POOLS=ours)}" ;; esac
. scripts/bench-common.sh
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
miners=${MINERS:-1000}
duration=${DURATION:-15}
base=$((20000 + RANDOM % 20000))
node_port=$((base + 1))
address=bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080

cat > "$work/devnet.toml" <<TOML
network = "regtest"
[journal]
enabled = false
[events]
socket_path = "$work/devnet-events.sock"
[metrics]
bind = "127.0.0.1:0"
collector_bind = "127.0.0.1:0"
TOML
RUST_LOG=warn taskset -c 0 "$TBG" devnet --config "$work/devnet.toml" --stratum "127.0.0.1:$base" \
  --rpc "127.0.0.1:$node_port" --data-dir "$work/devnet" 2>"$work/devnet.log" &
wait_for_port "$node_port"
cookie=$(cat "$work/devnet/chain/.cookie")

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# Anonymous memory alone (heap, stacks): without the file pages the
# journal's SQLite maps, which the kernel can drop.
anon_kb() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

start_ours() {
  start_ours_config "$1"
  launch_ours
}

start_ours_config() {
  local port=$1
  cat > "$work/ours.toml" <<TOML
network = "regtest"
[[nodes]]
url = "127.0.0.1:$node_port"
cookie_file = "$work/devnet/chain/.cookie"
[pool]
bind = "127.0.0.1:$port"
mindiff = 1
startdiff = 1
# The load is 1,000 miners on one address flooding random shares: trusted,
# past the per-connection rates on purpose.
allow_list = ["127.0.0.1"]
max_submits_per_minute = 0
max_invalid_shares_per_minute = 4000000000
[blocks]
dir = "$work/ours-blocks"
[journal]
path = "$work/ours-journal/events.db"
[events]
socket_path = "$work/ours-events.sock"
[metrics]
bind = "127.0.0.1:0"
collector_bind = "127.0.0.1:0"
TOML
}

launch_ours() {
  RUST_LOG=${POOL_LOG:-warn} taskset -c "${POOL_CPUS:-1}" "$TBG" pool --config "$work/ours.toml" 2>>"$work/ours.log" &
  pool_pid=$!
}

# Ours again, the same config, the miners on Stratum V2 channels.
sv2_keys=$("$TBG" sv2-keygen)
sv2_public=$(sed -n 's/^authority_public_key = "\(.*\)"/\1/p' <<<"$sv2_keys")
start_oursv2() {
  start_ours_config "$1"
  printf '[stratum_v2]\non_v1_port = true\n%s\n' "$(grep authority_secret_key <<<"$sv2_keys")" >> "$work/ours.toml"
  launch_ours
}

start_ckpool() {
  local port=$1
  mkdir -p "$work/cklogs" "$work/cksock"
  cat > "$work/ckpool.conf" <<JSON
{
"btcd" : [ { "url" : "127.0.0.1:$node_port", "auth" : "${cookie%%:*}", "pass" : "${cookie#*:}", "notify" : false } ],
"serverurl" : [ "127.0.0.1:$port" ],
"mindiff" : 1,
"startdiff" : 1,
"blockpoll" : 500,
"logdir" : "$work/cklogs",
"zmqblock" : "tcp://127.0.0.1:$((base + 9))"
}
JSON
  taskset -c "${POOL_CPUS:-1}" "$CKPOOL" -B -q -c "$work/ckpool.conf" -s "$work/cksock" -n ckbench \
    >>"$work/ckpool.log" 2>&1 &
  pool_pid=$!
}

run_load() {
  local name=$1 load=$2 port=$3 count=$4
  local args
  case $load in
    flood) args="--profile flood --miners $count --window 4 --rate 0 --duration $duration --ramp-up 5" ;;
    paced) args="--profile standard --miners $count --rate 10 --duration $duration --ramp-up 5" ;;
    *) echo "unknown load $load" >&2; return 1 ;;
  esac
  [ "$name" = oursv2 ] && args="$args --sv2-key $sv2_public"
  wait_for_port "$port"
  sleep 2
  local idle; idle=$(rss_kb "$pool_pid")
  # e.g. POOL_HOOK='perf record -F 999 -g -p $pool_pid -o /tmp/pool.perf -- sleep 10'
  [ -n "${POOL_HOOK:-}" ] && [ "$name" != ckpool ] && (eval "$POOL_HOOK" >/dev/null 2>&1 &)
  local ticks_before; ticks_before=$(cpu_ticks "$pool_pid")
  local out="$work/$name-$load-$count.txt"
  # RSS with every miner still connected, 2 s before the load ends.
  (sleep $((duration - 2)); rss_kb "$pool_pid" > "$work/$name-$load-$count.live") &
  local sampler=$!
  taskset -c 0 "$TBG" loadtest --pool "127.0.0.1:$port" --addresses "$address" $args > "$out"
  local ticks_after; ticks_after=$(cpu_ticks "$pool_pid")
  wait "$sampler" 2>/dev/null || true
  local live; live=$(cat "$work/$name-$load-$count.live" 2>/dev/null || echo 0)
  # RSS once the pool has settled: what a miner costs after the load, not
  # the backlog still being written (SETTLE seconds, 0 = at once).
  sleep "${SETTLE:-3}"
  local after; after=$(rss_kb "$pool_pid")
  anon_kb "$pool_pid" > "$work/$name-$load-$count.anon"
  # SMAPS_DIR=dir keeps each pool's memory by kind (anonymous, shared, file)
  [ -n "${SMAPS_DIR:-}" ] && cp "/proc/$pool_pid/smaps_rollup" "$SMAPS_DIR/$name-$load-$count.smaps"
  # e.g. AFTER_HOOK='gdb -p $pool_pid -batch -ex "call (void) malloc_stats()"'
  [ -n "${AFTER_HOOK:-}" ] && [ "$name" != ckpool ] && (eval "$AFTER_HOOK" >"$SMAPS_DIR/$name-$load-$count.hook" 2>&1)
  local answered
  answered=$(sed -n 's/^shares sent [0-9]* answered \([0-9]*\).*/\1/p' "$out")
  echo "$after" > "$work/$name-$load-$count.rss"
  python3 - "$name" "$load" "$idle" "$after" "$count" "$ticks_before" "$ticks_after" "$hz" "${answered:-0}" "$live" <<'PY'
import sys
name, load, idle, after, miners, t0, t1, hz, answered, live = sys.argv[1:]
idle, after, miners, t0, t1, hz, answered, live = int(idle), int(after), int(miners), int(t0), int(t1), int(hz), int(answered), int(live)
cpu = (t1 - t0) / hz
per_share = cpu / answered * 1e6 if answered else float("nan")
print(f"{name:7} {load:5} {miners:5} miners: RSS idle {idle} kB, {live} kB connected "
      f"({(live - idle) / miners:.1f} kB per miner over idle), {after} kB after "
      f"({(after - idle) / miners:.1f} kB per miner over idle); {answered} shares answered, "
      f"CPU {cpu:.2f} s = {per_share:.2f} us per share")
PY
  grep -E '^(miners|share round trip|shares sent|  rejected|  error)' "$out" | sed 's/^/    /' || true
  kill "$pool_pid" 2>/dev/null; wait "$pool_pid" 2>/dev/null || true
}

slope() {
  local name=$1 load=$2
  local small big small_live big_live
  small=$(cat "$work/$name-$load-$miners.rss"); big=$(cat "$work/$name-$load-$((2 * miners)).rss")
  small_live=$(cat "$work/$name-$load-$miners.live"); big_live=$(cat "$work/$name-$load-$((2 * miners)).live")
  local small_anon big_anon
  small_anon=$(cat "$work/$name-$load-$miners.anon"); big_anon=$(cat "$work/$name-$load-$((2 * miners)).anon")
  python3 -c "print(f'$name $load: {($big - $small) / $miners:.2f} kB per miner (RSS after the load, {2 * $miners} vs $miners miners; anonymous alone {($big_anon - $small_anon) / $miners:.2f} kB); connected: {($big_live - $small_live) / $miners:.2f} kB per miner')"
}

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), $(date -u +%Y-%m-%dT%H:%MZ)"
[ -n "${CKPOOL:-}" ] && echo "ckpool: $("$CKPOOL" -h 2>&1 | head -1 || true)"
n=0
for load in ${LOADS:-flood paced}; do
  for count in "$miners" $((2 * miners)); do
    for name in $pools; do
      n=$((n + 1))
      port=$((base + 10 + n))
      "start_$name" "$port"; run_load "$name" "$load" "$port" "$count"
    done
  done
  for name in $pools; do slope "$name" "$load"; done
done
