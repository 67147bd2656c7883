#!/usr/bin/env bash
# Times the pool's start and stop (issue 5's "start to listening under 1 s;
# graceful stop under 2 s") with many miners connected:
#   scripts/bench-lifecycle.sh            (MINERS=10000 ROUNDS=5 by default)
# A `tbg devnet` on core 0 is the node; `tbg pool` (journal on, defaults)
# starts on core 1 each round, the load tool on core 0 holds MINERS miners
# on it. Per round it prints: exec -> port accepting, exec -> a fresh miner's
# first mining.notify, and, with every miner connected, SIGTERM -> exit; then
# it checks what a graceful stop promises: every miner got
# client.reconnect (the load tool's count), every connect has
# its disconnect in the journal, and no stage ring is left behind. A last
# round kills the pool with SIGKILL under the same load and times the
# restart (the journal's ring is recovered first).
# TBG=PATH runs an already built binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-common.sh
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP_LOG:-}" ] && cp "$work/pool.log" "$KEEP_LOG"; rm -rf "$work"' EXIT
base=$((20000 + RANDOM % 20000))
cat > "$work/dev.toml" <<TOML
[journal]
enabled = false
[events]
socket_path = "$work/dev-events.sock"
[metrics]
bind = "127.0.0.1:0"
collector_bind = "127.0.0.1:0"
TOML
RUST_LOG=warn taskset -c 0 "$TBG" devnet --config "$work/dev.toml" --stratum "127.0.0.1:$base" \
  --rpc "127.0.0.1:$((base + 1))" --data-dir "$work/devnet" 2>"$work/devnet.log" &
wait_for_port $((base + 1))   # the RPC port; the cookie is written before it opens
cat > "$work/pool.toml" <<TOML
network = "regtest"
[pool]
bind = "127.0.0.1:$((base + 2))"
mindiff = 0.0001
startdiff = 0.0001
# Many miners on one address: trusted.
allow_list = ["127.0.0.1"]
[[nodes]]
url = "127.0.0.1:$((base + 1))"
cookie_file = "$work/devnet/chain/.cookie"
[journal]
path = "$work/journal.db"
[events]
socket_path = "$work/events.sock"
[metrics]
bind = "127.0.0.1:$((base + 3))"
collector_bind = "127.0.0.1:0"
TOML
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), $(date -u +%Y-%m-%dT%H:%MZ)"
TBG="$TBG" WORK="$work" STRATUM=$((base + 2)) METRICS=$((base + 3)) \
  MINERS="${MINERS:-10000}" ROUNDS="${ROUNDS:-5}" python3 - <<'PY'
import json, os, signal, socket, sqlite3, subprocess, time, urllib.request, glob

tbg, work = os.environ["TBG"], os.environ["WORK"]
stratum, metrics = int(os.environ["STRATUM"]), int(os.environ["METRICS"])
miners, rounds = int(os.environ["MINERS"]), int(os.environ["ROUNDS"])
address = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"

def start_pool():
    """Starts the pool on core 1; returns (process, s to listening, s to first notify)."""
    t0 = time.monotonic()
    pool = subprocess.Popen(["taskset", "-c", "1", tbg, "pool", "--config", f"{work}/pool.toml"],
                            stderr=open(f"{work}/pool.log", "ab"), env={**os.environ, "RUST_LOG": os.environ.get("POOL_LOG", "warn")})
    while True:
        if pool.poll() is not None:
            raise SystemExit(f"pool exited with {pool.returncode}: see {work}/pool.log")
        try:
            sock = socket.create_connection(("127.0.0.1", stratum))
            break
        except OSError:
            time.sleep(0.001)
    listening = time.monotonic() - t0
    sock.sendall(b'{"id":1,"method":"mining.subscribe","params":["bench"]}\n'
                 + b'{"id":2,"method":"mining.authorize","params":["%s.x",""]}\n' % address.encode())
    buffer = b""
    while b"mining.notify" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("pool closed the probe connection before a notify")
        buffer += chunk
    first_notify = time.monotonic() - t0
    sock.close()
    return pool, listening, first_notify

def metric(name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0

def load_with_all_connected():
    """Starts the load tool on core 0 and waits until every miner is authorized."""
    load = subprocess.Popen(["taskset", "-c", "0", tbg, "loadtest", "--pool", f"127.0.0.1:{stratum}",
                             "--miners", str(miners), "--rate", "0.01", "--duration", "600",
                             "--ramp-up", str(max(1, miners // 1000)), "--addresses", address],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while metric("ckpool_connected_miners") < miners:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {metric('ckpool_connected_miners'):.0f} of {miners} miners connected")
        time.sleep(0.2)
    time.sleep(2)  # their first shares and the vardiff ticks settle
    return load

def journal_counts():
    db = sqlite3.connect(f"file:{work}/journal.db?mode=ro", uri=True)
    counts = dict(db.execute("SELECT event_type, COUNT(*) FROM journal GROUP BY event_type"))
    db.close()
    return counts.get("miner_connected", 0), counts.get("miner_disconnected", 0)

def rings():
    return glob.glob("/dev/shm/tbg-journal.db-*.stage") + glob.glob(f"{work}/journal.db.stage")

print(f"{'round':>5} {'listening':>10} {'1st notify':>10} {'stop':>8}  checks")
for n in range(1, rounds + 1):
    pool, listening, first_notify = start_pool()
    load = load_with_all_connected()
    t0 = time.monotonic()
    pool.send_signal(signal.SIGTERM)
    code = pool.wait()
    stop = time.monotonic() - t0
    # Every miner told to reconnect closes, so the load tool ends by itself.
    report, _ = load.communicate(timeout=60)
    told = next((int(line.split()[3]) for line in report.splitlines()
                 if line.startswith("told to reconnect")), 0)
    connected, disconnected = journal_counts()
    left = rings()
    checks = (f"exit {code}, told to reconnect {told}, journal connects {connected} "
              f"disconnects {disconnected}, rings left {len(left)}")
    print(f"{n:>5} {listening*1e3:>8.0f}ms {first_notify*1e3:>8.0f}ms {stop*1e3:>6.0f}ms  {checks}", flush=True)
    if code != 0 or told != miners or connected != disconnected or left:
        raise SystemExit("graceful stop broke a promise: " + checks)

# A crash under load, then the restart: the ring must be recovered first.
pool, _, _ = start_pool()
load = load_with_all_connected()
pool.kill(); pool.wait(); load.kill(); load.wait()
left = rings()
pool, listening, first_notify = start_pool()
print(f"after SIGKILL with {miners} miners (ring {'found' if left else 'MISSING'}): "
      f"listening {listening*1e3:.0f} ms, first notify {first_notify*1e3:.0f} ms")
pool.send_signal(signal.SIGTERM); pool.wait()
PY
