#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from the
repo's real recordings in fixtures/: the ckpool-cpuminer stratum session
and Bitcoin Core's RPC answers. The seeds are checked in; run this again
only when a fixture or a target's input format changes."""

import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
stratum = json.loads((ROOT / "fixtures/stratum-ckpool-cpuminer-regtest.json").read_text())
rpc = json.loads((ROOT / "fixtures/bitcoin-core-rpc-regtest.json").read_text())
calls = {}
for call in rpc["calls"]:
    calls.setdefault(call["method"], call)
gbt = calls["getblocktemplate"]["response"]["result"]
address = stratum["payout_address"]


def line(obj):
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def write(target, name, data):
    directory = SEEDS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


for target in ["stratum_line", "gbt_template", "ckpool_config", "journal_ring", "share_validator"]:
    shutil.rmtree(SEEDS / target, ignore_errors=True)

# stratum_line: the miner's real lines, and the other methods it may send.
write("stratum_line", "subscribe", line(stratum["subscribe_request"]))
for case in stratum["cases"]:
    write("stratum_line", f"submit-{case['height']}", line(case["submit"]))
    write("stratum_line", f"notify-{case['height']}", line(case["notify"]))
submit = dict(stratum["cases"][0]["submit"])
submit["params"] = submit["params"] + ["00002000"]
write("stratum_line", "submit-version-bits", line(submit))
write("stratum_line", "authorize", line(
    {"id": 2, "method": "mining.authorize", "params": [address + ".vec", "x"]}))
write("stratum_line", "configure", line({
    "id": 3, "method": "mining.configure",
    "params": [["version-rolling", "minimum-difficulty"],
               {"version-rolling.mask": "1fffe000", "version-rolling.min-bit-count": 2,
                "minimum-difficulty.value": 2048}]}))
write("stratum_line", "suggest-difficulty", line(
    {"id": 5, "method": "mining.suggest_difficulty", "params": [0.001]}))
write("stratum_line", "extranonce-subscribe", line(
    {"id": 6, "method": "mining.extranonce.subscribe", "params": []}))
fields = stratum["cases"][0]["submit"]["params"]
write("stratum_line", "decoder-fields", "|".join(fields[2:5] + ["1fffe000"]).encode())

# gbt_template: Core's real answer (one mempool transaction), the same
# without it, and the whole JSON-RPC answer.
write("gbt_template", "gbt-104-one-tx", json.dumps(gbt).encode())
empty = dict(gbt, transactions=[])
write("gbt_template", "gbt-104-empty", json.dumps(empty).encode())
write("gbt_template", "gbt-response", json.dumps(calls["getblocktemplate"]["response"]).encode())

# ckpool_config: a ckpool.conf for the recorded regtest node and miner, and
# a small TOML config.
write("ckpool_config", "ckpool.conf", json.dumps({
    "btcd": [{"url": "127.0.0.1:18443", "auth": "user", "pass": "pass", "notify": True}],
    "btcaddress": address, "btcsig": "/ckpool/vector/", "blockpoll": 100,
    "donation": 0.0, "serverurl": ["0.0.0.0:3333"], "mindiff": 1, "startdiff": 1,
    "maxdiff": 0, "update_interval": 30, "version_mask": "1fffe000",
    "nonce1length": 4, "nonce2length": 8, "logdir": "logs", "maxclients": 1000,
    "zmqblock": "tcp://127.0.0.1:28332", "event_socket_path": "/tmp/ckpool/events.sock",
    "metrics_port": 9100, "redis_url": "redis://127.0.0.1:6379/0", "tbg_region": "eu",
}, indent=1).encode())
write("ckpool_config", "tbg.toml", b"""network = "regtest"

[[nodes]]
url = "http://127.0.0.1:18443"
user = "user"
pass = "pass"
zmq_hashblock = "tcp://127.0.0.1:28332"

[pool]
bind = "0.0.0.0:3333"
pool_tag = "/tbg/"
mindiff = 0.0001
startdiff = 1
maxdiff = 0
version_mask = "1fffe000"
nonce1length = 4
nonce2length = 8
""")

# journal_ring: ring images (see the target's decoder) holding the events a
# share of the recorded session makes.
def text(value, width=1):
    data = value.encode()
    return struct.pack("<B" if width == 1 else "<H", len(data)) + data


def ring(flags, records, tail_words=0, laps=0, first_seq=41, committed_offset=127):
    out = struct.pack("<BQBHBIB", flags, 0x5EED_0000_0000_0001, 1, tail_words, laps,
                      first_seq, committed_offset)
    for ts, event_type, data in records:
        payload = json.dumps({"event": event_type, "id": "019abc12-3456-7def-8123-456789abcdef",
                              "ts": ts, "source": "hosted", "region": "eu", "data": data},
                             separators=(",", ":"))
        out += bytes([0]) + struct.pack("<d", ts)
        out += text("019abc12-3456-7def-8123-456789abcdef") + text(event_type) + text("eu")
        out += text(payload, 2)
    return out


case = stratum["cases"][0]
share = {"user": address, "worker": "vec", "client_id": 1, "diff": 1.0, "sdiff": 3311.7,
         "accepted": True, "reject_reason": None, "ip": "127.0.0.1"}
block = {"user": address, "worker": "vec", "height": case["height"],
         "hash": case["accepted_block_hash"]}
events = [(1795625297.5, "share_submitted", share), (1795625297.6, "block_found", block),
          (1795625298.0, "share_submitted", dict(share, accepted=False, reject_reason="Duplicate"))]
write("journal_ring", "clean-three", ring(0x80, events))
write("journal_ring", "clean-near-end", ring(0x80, events, tail_words=8150, laps=3))
write("journal_ring", "committed-two", ring(0x80, events, committed_offset=129))
write("journal_ring", "damaged", ring(0x00, events) + bytes([6, 40, 0, 0xff, 7, 1, 3, 0]))

# share_validator: session scripts (see the target's decoder: op % 12), on
# the recorded ckpool jobs with their real block solutions, and on
# synthetic templates.
def submit(flags=0, back=0, extranonce2=0, minutes=0, nonce=0, bits=None):
    out = bytes([9, flags, back]) + struct.pack("<HbI", extranonce2, minutes, nonce)
    return out + (struct.pack("<I", bits) if bits is not None else b"")


write("share_validator", "recorded-blocks", bytes([
    7, 0,  # the recorded job of case 102
    8,     # its real solution: a block
    4, 0,  # sent again: a duplicate
    7, 1,  # case 103 (the next block)
    8,     # its solution
    5, 0,  # reconnect, resuming the session
    8,     # the same solution again: a duplicate
]))
write("share_validator", "synthetic-session",
      bytes([0, 5]) + submit(extranonce2=1, nonce=0x44332211) + bytes([4, 0])
      + bytes([2, 1]) + submit(extranonce2=2, nonce=7) + bytes([3]) + struct.pack("<I", 0x1FFFE000)
      + submit(flags=1, extranonce2=3, nonce=9, bits=0x2000) + bytes([0, 2])
      + submit(back=1, extranonce2=4, nonce=11) + bytes([5, 1, 6]) + struct.pack("<H", 10000)
      + submit(extranonce2=5, minutes=100, nonce=13) + bytes([1, 3]) + submit(extranonce2=6, nonce=15))
