#!/usr/bin/env bash
# Bring up a single-node SLURM 22.05 test cluster on localhost (root, no systemd needed):
# munged -> MariaDB -> slurmdbd -> slurmctld -> slurmd, so that sbatch, afterok chains, job arrays and sacct work.
#
# Shaped like the thesis' V100 partition: partition `gpu` with two fake `gpu:v100` GRES (two existing device
# nodes stand in for the GPU files) and node feature `v100`, so `--gres=gpu:v100:1` and `--constraint=v100`
# are accepted. CPUs=8 oversubscribes the real cores so several tiny test jobs run at once.
# Idempotent: it first runs slurm-local-down.sh and starts from a wiped state (job ids restart at 1).
# Facts and settings: docs/slurm.md ("Test cluster").
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
DB_PASS=slurmdbpass  # local throw-away MariaDB bound to 127.0.0.1 only

log() { printf 'slurm-local-up: %s\n' "$*"; }
die() { printf 'slurm-local-up: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"

wait_for() {  # wait_for <seconds> <description> <command...>: poll every 0.1 s
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${limit}s waiting for ${what}"
    sleep 0.1
  done
}

install_packages() {
  local missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
  fi
}

gpu_files() {  # two existing device nodes as fake GPU files (a file-less GPU makes the node INVAL)
  if [[ -e /dev/tty0 && -e /dev/tty1 ]]; then echo "/dev/tty[0-1]"; else echo "/dev/null,/dev/zero"; fi
}

write_configs() {
  mkdir -p "$CONF_DIR"
  cat >"$CONF_DIR/slurm.conf" <<CONF
# Written by scripts/slurm-local-up.sh: single-node test cluster, not for production.
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job (timeout/preemption checkpoint) may start again after cred_expire s (default 120).
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SchedulerType=sched/backfill
# Start trivial test jobs at once (batch_sched_delay, default 3 s) and look at jobs whose BeginTime passed
# (a requeued job) every 2 s rather than every 60 s.
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2,preempt_send_user_signal
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
GresTypes=gpu
MinJobAge=300
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=8000 Gres=gpu:v100:2 Features=v100 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
# Preemption tests: a job of partition "preemptible" is requeued (PreemptMode=REQUEUE) when a job of the
# higher-tier partition "urgent" needs its resources; preempt_send_user_signal gives it the job's own --signal (USR2)
# at once, and GraceTime the seconds to checkpoint before it is killed and requeued.
PartitionName=preemptible Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=20
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
CONF
  cat >"$CONF_DIR/gres.conf" <<CONF
AutoDetect=off
NodeName=localhost Name=gpu Type=v100 File=$(gpu_files)
CONF
  cat >"$CONF_DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$CONF_DIR/slurmdbd.conf"
}

start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing (reinstall the munge package)"
  runuser -u munge -- /usr/sbin/munged
}

start_mariadb() {
  install -d -o mysql -g root -m 0755 /run/mysqld
  # --log-error must be writable by user mysql, hence /run/mysqld rather than /var/log/slurm.
  setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
    --socket=/run/mysqld/mysqld.sock --log-error=/run/mysqld/mariadb.log </dev/null >/dev/null 2>&1 &
  wait_for 30 "MariaDB" mysqladmin ping
  # A fresh accounting DB: job ids restart at 1 with the wiped state dir, and old rows would shadow new ones.
  mysql -e "DROP DATABASE IF EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' \
IDENTIFIED BY '$DB_PASS'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurm() {
  /usr/sbin/slurmdbd
  wait_for 30 "slurmdbd (sacctmgr show cluster)" sacctmgr -n show cluster
  /usr/sbin/slurmctld -c -i
  wait_for 30 "slurmctld (scontrol ping)" bash -c 'scontrol ping | grep -q UP'
  /usr/sbin/slurmd -N localhost
  wait_for 30 "node localhost idle (sinfo)" bash -c 'sinfo -h -n localhost -o %t | grep -qx idle'
  wait_for 30 "cluster registered in accounting" bash -c 'sacctmgr -n -P show cluster format=cluster | grep -qx localcluster'
}

stop_package_started_daemons() {
  # Without /usr/sbin/policy-rc.d the packages' postinst scripts start munge, MariaDB and the SLURM
  # daemons through /etc/init.d (mariadb under mysqld_safe, which would restart a killed server).
  [[ -e /usr/sbin/policy-rc.d ]] && return 0
  local service
  for service in slurmd slurmctld slurmdbd mariadb munge; do
    if [[ -x /etc/init.d/$service ]]; then
      timeout 30 "/etc/init.d/$service" stop >/dev/null 2>&1 || true
    fi
  done
}

main() {
  local start=$SECONDS
  install_packages
  write_configs
  stop_package_started_daemons
  bash "$HERE/slurm-local-down.sh"
  rm -rf /var/spool/slurmctld /var/spool/slurmd
  mkdir -p /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
  start_munge
  start_mariadb
  start_slurm
  log "up in $((SECONDS - start))s: $(sinfo -h -o '%P %a %D %t %G' | tr '\n' ';')"
}

main "$@"
