#!/usr/bin/env bash
# Throwaway loopback PostgreSQL for the store tests (idempotent).
#
#   eval "$(bash .ci/postgres.sh start [DIR])"   # prints: export MNISTOPS_TEST_POSTGRES_URL=...
#   bash .ci/postgres.sh status [DIR]
#   bash .ci/postgres.sh stop [DIR] [--purge]    # --purge also deletes the cluster folder
#
# DIR defaults to $MNISTOPS_PG_DIR or ${TMPDIR:-/tmp}/mnistops-pg; the port to $MNISTOPS_PG_PORT or
# 55432 (the next free port is used if that one is taken). As root on Debian it installs the
# `postgresql` package when no server binary exists and runs the cluster as the `postgres` user
# (the server refuses to run as root); as another user it runs the cluster as that user.
# Only stdout carries the export line, so `eval "$(...)"` is safe; progress goes to stderr.
# The cluster trusts local connections and has fsync off: it is for tests only.
set -euo pipefail

cmd=${1:-start}
DIR=${MNISTOPS_PG_DIR:-${TMPDIR:-/tmp}/mnistops-pg}
PURGE=
for arg in "${@:2}"; do
  if [[ $arg == --purge ]]; then PURGE=1; else DIR=$arg; fi
done
DIR=$(realpath -m "$DIR")
PORT=${MNISTOPS_PG_PORT:-55432}
DB=mnistops_test
DATA=$DIR/data

say() { echo "postgres.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [[ -n $d && -x $d/postgres ]] && echo "$d"
}

install_server() {
  [[ $(id -u) == 0 ]] || die "no PostgreSQL server found and not root: sudo apt-get install postgresql"
  command -v apt-get >/dev/null || die "no PostgreSQL server found and no apt-get"
  say "installing postgresql with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends postgresql >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends postgresql >&2; }
}

# run a server binary as the cluster owner
as_owner() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

is_running() { [[ -f $DATA/PG_VERSION ]] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

url() { echo "postgresql+psycopg://postgres@127.0.0.1:$(cat "$DIR/port")/$DB"; }

BIN=$(pg_bin || true)

case $cmd in
  start)
    if [[ -z $BIN ]]; then
      install_server
      BIN=$(pg_bin) || die "postgresql installed but no server binary under /usr/lib/postgresql"
    fi
    mkdir -p "$DIR"
    exec 9>"$DIR.lock"  # concurrent `start`s wait for each other
    flock 9
    if [[ $(id -u) == 0 ]]; then
      id postgres >/dev/null 2>&1 || die "user postgres missing (reinstall the postgresql package)"
      chown postgres: "$DIR"
    fi
    chmod 700 "$DIR"
    if [[ ! -f $DATA/PG_VERSION ]]; then
      say "initdb $DATA"
      as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
    fi
    if ! is_running; then
      p=$PORT
      while port_busy "$p"; do
        p=$((p + 1))
        ((p < PORT + 100)) || die "no free port in $PORT..$((PORT + 99))"
      done
      echo "$p" >"$DIR/port"
      say "starting PostgreSQL ($BIN) on 127.0.0.1:$p"
      as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 -o \
        "-c listen_addresses=127.0.0.1 -p $p -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >&2 9>&- || { tail -n 20 "$DIR/server.log" >&2; die "server did not start"; }
    fi
    p=$(cat "$DIR/port")
    if ! as_owner "$BIN/psql" -h 127.0.0.1 -p "$p" -U postgres -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
      as_owner "$BIN/createdb" -h 127.0.0.1 -p "$p" -U postgres "$DB"
    fi
    echo "export MNISTOPS_TEST_POSTGRES_URL=$(url)"
    ;;
  stop)
    if [[ -n $BIN ]] && is_running; then
      say "stopping PostgreSQL in $DATA"
      as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2
    else
      say "not running"
    fi
    if [[ -n $PURGE ]]; then
      rm -rf "$DIR" "$DIR.lock"
    fi
    ;;
  status)
    if [[ -n $BIN ]] && is_running; then
      say "running: $(url)"
    else
      say "not running"
      exit 3
    fi
    ;;
  *)
    die "usage: $0 start|stop|status [DIR] [--purge]"
    ;;
esac
