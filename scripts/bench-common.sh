# Sourced by the scripts/bench-*.sh scripts, from the repository root:
# installs what is missing, builds tbg (release) unless TBG names a binary,
# makes the scratch directory $work (the caller's EXIT trap removes it) and
# defines wait_for_port.
scripts/setup.sh
if [ -z "${TBG:-}" ]; then
  cargo build --release --locked -p tbg >/dev/null
  TBG=${CARGO_TARGET_DIR:-target}/release/tbg
fi
work=$(mktemp -d)
ulimit -n 65536 2>/dev/null || true

# wait_for_port PORT: returns once something accepts on 127.0.0.1:PORT.
wait_for_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing accepts on 127.0.0.1:$1 after 60 s" >&2
  return 1
}
