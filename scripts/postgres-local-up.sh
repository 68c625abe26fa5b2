#!/usr/bin/env bash
# Bring up a throw-away PostgreSQL server for the registry tests (root, no systemd needed).
#
# Its own data directory and port (not Debian's `main` cluster), listening on 127.0.0.1 only, with one
# role and one test database; the tests create a fresh schema per test inside that database.
# Idempotent: an existing data directory is reused and a running server is left running.
# Prints the URL the tests read (IOUSSL_TEST_PG_URL) on stdout; progress goes to stderr, so:
#     export IOUSSL_TEST_PG_URL="$(bash scripts/postgres-local-up.sh)"
# Settings (environment): IOUSSL_PG_PORT (5433), IOUSSL_PG_DATA (/var/lib/postgresql/ioussl-test).
set -euo pipefail

PORT=${IOUSSL_PG_PORT:-5433}
DATA=${IOUSSL_PG_DATA:-/var/lib/postgresql/ioussl-test}
ROLE=ioussl
PASSWORD=ioussl  # local throw-away server bound to 127.0.0.1 only
DATABASE=ioussl_test

log() { printf 'postgres-local-up: %s\n' "$*" >&2; }
die() { printf 'postgres-local-up: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts a server as user postgres)"

install_packages() {
  if ! dpkg -s postgresql >/dev/null 2>&1; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
}

bin_dir() {  # the newest installed server version's binaries
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -x $dir/pg_ctl ]] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
  echo "$dir"
}

as_postgres() { runuser -u postgres -- "$@"; }

init_cluster() {
  local bin=$1
  [[ -f $DATA/PG_VERSION ]] && return 0
  log "initialising $DATA"
  mkdir -p "$DATA"
  chown postgres:postgres "$DATA"
  chmod 700 "$DATA"
  local pwfile
  pwfile=$(mktemp)
  printf '%s\n' "$PASSWORD" >"$pwfile"
  chown postgres "$pwfile"
  as_postgres "$bin/initdb" -D "$DATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
    --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  cat >>"$DATA/postgresql.conf" <<CONF
# Written by scripts/postgres-local-up.sh: test server, not for production.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
}

start_server() {
  local bin=$1
  if as_postgres "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    log "already running on 127.0.0.1:$PORT"
    return 0
  fi
  log "starting on 127.0.0.1:$PORT"
  as_postgres "$bin/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 start >/dev/null \
    || die "the server did not start; see $DATA/server.log"
}

create_role_and_database() {
  local psql=("$1/psql" -h "$DATA" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
  if [[ -z $(as_postgres "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'") ]]; then
    as_postgres "${psql[@]}" -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'"
  fi
  if [[ -z $(as_postgres "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'") ]]; then
    as_postgres "${psql[@]}" -c "CREATE DATABASE $DATABASE OWNER $ROLE"
  fi
}

install_packages
BIN=$(bin_dir)
init_cluster "$BIN"
start_server "$BIN"
create_role_and_database "$BIN"
log "ready"
echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
