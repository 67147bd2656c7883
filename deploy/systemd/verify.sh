#!/bin/sh
# Checks the unit files with `systemd-analyze verify`. The units name
# /usr/local/bin/tbg; pass another binary to check against (default: the
# cargo build), e.g. deploy/systemd/verify.sh target/release/tbg
set -eu
here=$(cd "$(dirname "$0")" && pwd)
binary=$(realpath "${1:-$here/../../target/debug/tbg}")
if ! command -v systemd-analyze >/dev/null; then
    echo "systemd-analyze not installed: skipped" >&2
    exit 0
fi
[ -x "$binary" ] || { echo "no tbg binary at $binary (cargo build -p tbg)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in "$here"/*.service "$here"/*.timer; do
    sed "s|/usr/local/bin/tbg|$binary|g" "$unit" > "$work/$(basename "$unit")"
done
# Missing users (tbg) and services of other packages (postgresql, bitcoind)
# are not errors of these files; everything else is.
output=$(cd "$work" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no ./*.service ./*.timer 2>&1) || status=$?
filtered=$(printf '%s\n' "$output" | grep -v -e 'Failed to resolve user' -e 'bitcoind.service' -e 'postgresql.service' -e 'redis-server.service' -e 'nats-server.service' -e '^$' || true)
if [ -n "$filtered" ]; then
    printf '%s\n' "$filtered" >&2
    exit 1
fi
echo "systemd units OK: $(ls "$work" | tr '\n' ' ')"
