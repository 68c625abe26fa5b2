#!/usr/bin/env bash
# Stop the single-node SLURM test cluster started by slurm-local-up.sh. Idempotent; safe when nothing runs.
# Jobs are cancelled first: with proctrack/linuxproc a running job's slurmstepd outlives a killed slurmd.
# Daemons are stopped only through their pid files, after checking /proc/PID/comm (pid files can be stale
# and pids wrap); a zombie counts as stopped (PID 1 here reaps orphans late and `kill -0` succeeds on zombies).
set -uo pipefail

log() { printf 'slurm-local-down: %s\n' "$*"; }

# pidfile:expected-comm, in stop order (reverse of start order).
DAEMONS=(
  /run/slurmd.pid:slurmd
  /run/slurmctld.pid:slurmctld
  /run/slurmdbd.pid:slurmdbd
  /run/mysqld/mysqld.pid:mariadbd
  /run/munge/munged.pid:munged
)

alive() {  # alive <pid> <comm>: running (not a zombie) and still the daemon we expect
  local pid=$1 comm=$2 state
  [[ -r /proc/$pid/comm && $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
  state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
  [[ -n $state && $state != Z && $state != X ]]
}

cancel_jobs() {
  command -v scancel >/dev/null || return 0
  timeout 5 scontrol ping 2>/dev/null | grep -q UP || return 0
  scancel --user=root 2>/dev/null || true
  local deadline=$((SECONDS + 20))
  while ((SECONDS < deadline)); do
    [[ -z $(timeout 5 squeue -h -t R,CG -o %i 2>/dev/null) ]] && return 0
    sleep 0.2
  done
  log "warning: jobs still running or completing after 20s"
}

stop_daemon() {  # stop_daemon <pidfile> <comm>
  local pidfile=$1 comm=$2 pid
  [[ -r $pidfile ]] || return 0
  pid=$(tr -dc '0-9' <"$pidfile")
  if [[ -n $pid ]] && alive "$pid" "$comm"; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while alive "$pid" "$comm"; do
      if ((SECONDS >= deadline)); then
        log "warning: $comm ($pid) ignored SIGTERM for 20s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.05
    done
  fi
  rm -f "$pidfile"
}

cancel_jobs
for entry in "${DAEMONS[@]}"; do
  stop_daemon "${entry%%:*}" "${entry##*:}"
done
log "stopped"
