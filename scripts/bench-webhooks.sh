#!/usr/bin/env bash
# Block-found webhook latency: `tbg devnet --miner --blocks $BLOCKS` with a
# [[notify.webhooks]] endpoint; a receiver (python3, standard library)
# verifies each signature and records arrival time minus the notice's
# `timestamp` (the block_found event's time). Prints p50 / p90 / max.
#   TBG=target/release/tbg BLOCKS=20 scripts/bench-webhooks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tbg=${TBG:-target/release/tbg}
blocks=${BLOCKS:-20}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
secret="a benchmark secret of 32 bytes!!"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/receiver.py" <<'EOF'
import base64, hashlib, hmac, json, os, sys, time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
KEY = os.environ["SECRET"].encode()
out = open(sys.argv[2], "a")
class Hook(BaseHTTPRequestHandler):
    def log_message(self, *args): pass
    def do_POST(self):
        now = time.time()
        body = self.rfile.read(int(self.headers["content-length"]))
        msg_id, ts = self.headers["webhook-id"], self.headers["webhook-timestamp"]
        expected = base64.b64encode(hmac.new(KEY, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
        ok = self.headers["webhook-signature"] == "v1," + expected
        notice = json.loads(body)
        at = datetime.fromisoformat(notice["timestamp"].replace("Z", "+00:00")).timestamp()
        print(f"{notice['type']} {now - at:.6f} {ok}", file=out, flush=True)
        self.send_response(204 if ok else 401); self.end_headers()
HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
EOF
SECRET="$secret" python3 "$work/receiver.py" "$port" "$work/latency.txt" &
cat > "$work/tbg.toml" <<EOF
network = "regtest"
[metrics]
bind = "127.0.0.1:0"
collector_bind = "127.0.0.1:0"
[web]
enabled = false
[[notify.webhooks]]
name = "bench"
url = "http://127.0.0.1:$port/"
events = ["block_found"]
EOF
TBG_WEBHOOK_0_SECRET="$secret" "$tbg" devnet --stratum 127.0.0.1:0 --rpc 127.0.0.1:0 \
    --data-dir "$work/data" --miner --blocks "$blocks" --config "$work/tbg.toml" 2>"$work/devnet.log"
sleep 1
python3 - "$work/latency.txt" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1])]
bad = [r for r in rows if r[2] != "True"]
lat = sorted(float(r[1]) * 1000 for r in rows)
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"block_found notices: {len(lat)}, signatures failing: {len(bad)}; "
      f"latency p50 {pick(0.5):.1f} ms, p90 {pick(0.9):.1f} ms, max {lat[-1]:.1f} ms")
EOF
