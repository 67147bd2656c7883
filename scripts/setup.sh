#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine that has
# only the Rust toolchain. Idempotent: installs only what is missing.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
[ -f /usr/include/boost/version.hpp ] || need+=(libboost-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# make: the tbg binary's allocator (jemalloc) is built with its own makefile.
command -v make >/dev/null 2>&1 || need+=(make)
if [ "${TBG_SETUP_TEST_DEPS:-0}" = 1 ]; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  # prometheus + promtool: alert rule tests and the real scrape test.
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  # nats-server (JetStream): the events' way between regions.
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
  # ip (iproute2): the chaos suite's regions, each in a network namespace.
  command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
  # libfaketime: the chaos suite's clock-skew scenario.
  command -v faketime >/dev/null 2>&1 || need+=(faketime)
  # Debian's chromium: the dashboard's pages in a real headless browser.
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  # initdb/pg_ctl for the tests' own PostgreSQL instances.
  if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need+=(postgresql)
  fi
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if [ "${TBG_SETUP_TEST_DEPS:-0}" = 1 ]; then
  # The Stratum V2 reference implementation's translator proxy (crates.io,
  # pinned): the V2 port's interoperability test runs a V1 miner behind it.
  tools="${TBG_TOOLS:-/var/tmp/tbg-tools}"
  if ! "$tools/bin/translator_sv2" --version 2>/dev/null | grep -q '0\.6\.0'; then
    echo "setup: installing translator_sv2 0.6.0 into $tools"
    cargo install translator_sv2 --version 0.6.0 --locked --no-default-features --root "$tools"
  fi
fi
