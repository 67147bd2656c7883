#!/usr/bin/env bash
# New block -> last of MINERS miners notified (issue 5's < 100 ms target),
# twice against the same `tbg devnet` (pool on core 1, load tool on core 0):
#   1. over loopback, where the kernel runs each notify's receive path (the
#      load tool's TCP input) inside the pool's send, on the pool's core;
#   2. over a veth pair into a network namespace holding the load tool, with
#      receive packet steering (RPS) putting each side's receive path on
#      its own core, as on a real network where the miner's host does it.
#   scripts/bench-fanout.sh          (MINERS=10000 BLOCKS=5 by default)
# Needs root (a network namespace, a veth pair, /sys rps_cpus); removes
# them on exit. TBG=PATH runs an already built binary.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-fanout.sh needs root (network namespace, RPS)" >&2; exit 1; }
. scripts/bench-common.sh
miners=${MINERS:-10000}
blocks=${BLOCKS:-5}
ns="tbg-miners-$$"
pool_if="tbgp$$"
miner_if="tbgm$$"
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$pool_if" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip link add "$pool_if" type veth peer name "$miner_if"
ip link set "$miner_if" netns "$ns"
ip addr add 10.77.0.1/24 dev "$pool_if"
ip link set "$pool_if" up
ip netns exec "$ns" ip addr add 10.77.0.2/24 dev "$miner_if"
ip netns exec "$ns" ip link set "$miner_if" up
ip netns exec "$ns" ip link set lo up
# Packets arriving at the pool's end are processed on core 1 (the pool's),
# those arriving at the miners' end on core 0 (the load tool's).
echo 2 > "/sys/class/net/$pool_if/queues/rx-0/rps_cpus"
ip netns exec "$ns" sh -c "echo 1 > /sys/class/net/$miner_if/queues/rx-0/rps_cpus"

port=$((20000 + RANDOM % 20000))
rpc_port=$((port + 1))
cat > "$work/tbg.toml" <<TOML
network = "regtest"
[pool]
mindiff = 0.0001
startdiff = 0.0001
# Thousands of miners on one address: trusted.
allow_list = ["127.0.0.1"]
[events]
socket_path = "$work/events.sock"
[metrics]
bind = "127.0.0.1:$((port + 2))"
collector_bind = "127.0.0.1:0"
TOML
RUST_LOG=warn taskset -c 1 "$TBG" devnet --config "$work/tbg.toml" --stratum "0.0.0.0:$port" \
  --rpc "127.0.0.1:$rpc_port" --data-dir "$work/devnet" 2>"$work/pool.log" &
wait_for_port "$port"
address=bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), $(date -u +%Y-%m-%dT%H:%MZ), $miners miners, $blocks blocks per path"

ramp=15
first_block=$((ramp + 10))
duration=$((first_block + 5 * blocks + 5))
run() { # run LABEL POOL PREFIX... : the load tool (through PREFIX) with blocks found meanwhile
  local label=$1 pool=$2; shift 2
  (sleep "$first_block"
   for _ in $(seq 1 "$blocks"); do
     curl -s --user "$(cat "$work/devnet/chain/.cookie")" \
       --data-binary '{"jsonrpc":"1.0","id":1,"method":"generatetoaddress","params":[1,"'"$address"'"]}' \
       "http://127.0.0.1:$rpc_port/" >/dev/null
     sleep 5
   done) &
  "$@" taskset -c 0 "$TBG" loadtest --pool "$pool" --profile standard --addresses "$address" \
    --miners "$miners" --rate 0.02 --duration "$duration" --ramp-up "$ramp" > "$work/$label.txt" 2>/dev/null
  wait $!
  echo "== $label: $(sed -n 's/^new block -> last notify *//p' "$work/$label.txt")"
  grep -E '^miners|^  error|^shares' "$work/$label.txt" | sed 's/^/   /'
}
run loopback "127.0.0.1:$port" env
run veth+rps "10.77.0.1:$port" ip netns exec "$ns"
