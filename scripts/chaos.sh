#!/usr/bin/env bash
# The chaos suite: every failure scenario of the recovery plan (and ours)
# against real processes and servers, with recovery time, lost and
# duplicated events and pool restarts printed per scenario and in a final
# table. Needs root (tmpfs mount for disk-full), redis-server, PostgreSQL,
# faketime (scripts/setup.sh with TBG_SETUP_TEST_DEPS=1 installs them).
#
#   scripts/chaos.sh                         # every scenario
#   scripts/chaos.sh --list                  # the scenarios
#   scripts/chaos.sh --only redis-down,pool-sigkill
#   scripts/chaos.sh --skip cpu-stress
#   CHAOS_REPORT=chaos.json scripts/chaos.sh # figures as JSON too
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --locked -p tbg --test chaos -- "$@"
