#!/usr/bin/env bash
# Stop the throw-away PostgreSQL test server started by postgres-local-up.sh. Idempotent; safe when
# nothing runs. The data directory is kept (pass --wipe to delete it too).
set -uo pipefail

DATA=${IOUSSL_PG_DATA:-/var/lib/postgresql/ioussl-test}

log() { printf 'postgres-local-down: %s\n' "$*" >&2; }

BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [[ -x $BIN/pg_ctl && -f $DATA/PG_VERSION ]]; then
  if runuser -u postgres -- "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    runuser -u postgres -- "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null || log "warning: stop failed"
  fi
fi
if [[ ${1:-} == --wipe && -n $DATA && $DATA != / ]]; then
  rm -rf "$DATA"
  log "wiped $DATA"
fi
log "stopped"
