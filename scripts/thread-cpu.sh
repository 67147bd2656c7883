#!/usr/bin/env bash
# CPU per thread name of a running process over an interval, from
# /proc/PID/task/*/stat (user + system ticks), e.g. to split a pool's CPU
# between its tokio workers and the journal's writer and checkpointer:
#   scripts/thread-cpu.sh PID [SECONDS] [WARMUP_SECONDS]
# bench-load.sh runs it mid-load with
#   POOL_HOOK='(scripts/thread-cpu.sh $pool_pid 10 5 > thread-cpu.txt &)'
set -euo pipefail
pid=${1:?usage: thread-cpu.sh PID [SECONDS] [WARMUP_SECONDS]}
seconds=${2:-10}
sleep "${3:-0}"
hz=$(getconf CLK_TCK)
snapshot() {
  for task in /proc/"$pid"/task/*; do
    # comm may hold spaces; the fields after it are counted from the ')'.
    stat=$(cat "$task/stat" 2>/dev/null) || continue
    name=$(tr ' ' '_' < "$task/comm" 2>/dev/null) || continue
    echo "$name $(echo "${stat##*) }" | awk '{print $12 + $13}')"
  done | awk '{ticks[$1] += $2} END {for (n in ticks) print n, ticks[n]}' | sort
}
before=$(snapshot)
sleep "$seconds"
after=$(snapshot)
join <(echo "$before") <(echo "$after") | awk -v hz="$hz" -v s="$seconds" \
  '{d = $3 - $2; if (d > 0) printf "%-20s %6.1f %% of one core\n", $1, d / hz / s * 100}'
