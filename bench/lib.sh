# bench/lib.sh — helpers shared by bench scripts (sourced, not run).
# The same conventions as bench/pgbench-compare: PGSSLMODE=disable, processes
# started here are stopped by an EXIT trap, CPU from /proc/PID/stat.
#
# The sourcing script sets BENCH_NAME (prefix of its messages) before sourcing,
# and PGHOST / PGPORT / PGUSER and START_TIMEOUT before calling wait_ready.
# shellcheck shell=bash

# Debian's PostgreSQL has ssl=on: without this, direct runs would pay for TLS
# while the proxy (no client TLS configured) would not.
export PGSSLMODE=disable

die() { echo "${BENCH_NAME:-bench}: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# require_int NAME VALUE MIN
require_int() {
  if ! [[ "$2" =~ ^[0-9]+$ ]] || (( $2 < $3 )); then die "$1 must be an integer >= $3 (got '$2')"; fi
}

# ---------------------------------------------------------------- processes
# PIDS: every process this script started; the EXIT trap stops exactly these.
PIDS=()
stop_started() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap stop_started EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

psql_direct() { psql -X -q -v ON_ERROR_STOP=1 -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" "$@"; }

# wait_ready NAME PID PORT LOGFILE DB
# Waits until `select 1` works through 127.0.0.1:PORT, or the process dies, or
# START_TIMEOUT passes; exits the script (with the log's tail) on failure.
wait_ready() {
  local name=$1 pid=$2 port=$3 logf=$4 db=$5 deadline=$((SECONDS + START_TIMEOUT))
  while (( SECONDS < deadline )); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "${BENCH_NAME:-bench}: $name exited during start-up; last lines of $logf:" >&2
      tail -n 40 "$logf" >&2 || true
      exit 1
    fi
    if psql -X -q -h 127.0.0.1 -p "$port" -U "$PGUSER" -d "$db" -Atc 'select 1' >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  echo "${BENCH_NAME:-bench}: $name did not accept connections on 127.0.0.1:$port within ${START_TIMEOUT}s; last lines of $logf:" >&2
  tail -n 40 "$logf" >&2 || true
  echo "last attempt:" >&2
  psql -X -h 127.0.0.1 -p "$port" -U "$PGUSER" -d "$db" -Atc 'select 1' >&2 || true
  exit 1
}

# utime + stime of a whole process (all threads), in clock ticks.
cpu_ticks() {
  local s f
  s=$(<"/proc/$1/stat") || return 1
  s=${s##*) }            # comm may contain spaces; fields restart after ") "
  read -r -a f <<<"$s"   # f[0] is field 3 (state); utime = field 14, stime = field 15
  echo $(( f[11] + f[12] ))
}

# pgbench_field LOGFILE WHAT → one figure from pgbench's summary, or nothing.
pgbench_field() {
  case "$2" in
    tps) sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$1" | head -n1 ;;
    latency) sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$1" | head -n1 ;;
    tx) sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$1" | head -n1 ;;
    failed) sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$1" | head -n1 ;;
  esac
}

# build_byokpg REPO RUN_DIR — `cargo build --release` unless SKIP_BUILD=1, then
# check that BYOKPG_BIN exists.
build_byokpg() {
  if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$1" && cargo build --release) >"$2/cargo-build.log" 2>&1 \
      || { tail -n 30 "$2/cargo-build.log" >&2; die "cargo build --release failed"; }
  fi
  [[ -x "$BYOKPG_BIN" ]] || die "byokpg binary not found at $BYOKPG_BIN (unset SKIP_BUILD or set BYOKPG_BIN)"
}

# local_kek FILE — the dev KEK of the local KMS, created once (64 hex chars).
# Kept across runs: a tenant's wrapped DEK in byokpg.tenant_keys needs it.
local_kek() {
  if [[ ! -s "$1" ]]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(32))' >"$1")
  fi
}
