#!/usr/bin/env bash
# slurm-up.sh - bring up a throw-away single-node Slurm (Debian 12: Slurm 22.05) for
# Troupe's Slurm tests (tests/adapters/test_slurm_real.py; .ci/run calls it).
# Adapted from ../shared/reference/slurm-up.sh: 8 advertised CPUs by default, and
# AccountingStoreFlags=job_comment so `sacct -o Comment` returns the idempotency key the
# Slurm adapter puts in --comment (docs/slurm-flux.md).
#
# Runs unattended as root. Installs the Debian packages if missing, writes
# /etc/slurm/slurm.conf (and slurmdbd.conf), starts munged, [mariadbd, slurmdbd,]
# slurmctld and slurmd as daemons, waits until the node is idle, prints a summary.
# Every daemon's PID is recorded under $SLURM_TEST_DIR/run/*.pid; slurm-down.sh
# stops exactly those PIDs.
#
# Environment knobs (all optional):
#   SLURM_TEST_DIR=/var/tmp/slurm-test  state, spool, logs, pidfiles, private MariaDB datadir
#   SLURM_ACCOUNTING=dbd                dbd     -> MariaDB + slurmdbd: real `sacct` (default)
#                                       jobcomp -> no DB; jobcomp/filetxt, `sacct -c` only
#                                       none    -> no accounting; use squeue/scontrol (MinJobAge)
#   SLURM_NODE_CPUS=8                   advertise n CPUs (default 8; "real" = the real count). n > real
#                                       lets more 1-CPU jobs run at once (config_overrides).
#   SLURM_NODE_NAME=<name>              NodeName (default: `hostname -s`)
#   SLURM_DB_PORT=13306                 TCP port of the private MariaDB (127.0.0.1 only)
#   SLURM_MIN_JOB_AGE=300               seconds finished jobs stay visible to squeue/scontrol
#   SLURM_NO_INSTALL=1                  never call apt-get (fail if packages are missing)
#   SLURM_FORCE=1                       overwrite an /etc/slurm/slurm.conf not written by us
#   SLURM_NO_SMOKE=1                    skip the final end-to-end smoke job (saves ~1-3 s)
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/var/tmp/slurm-test}
ACCT=${SLURM_ACCOUNTING:-dbd}
DB_PORT=${SLURM_DB_PORT:-13306}
MIN_JOB_AGE=${SLURM_MIN_JOB_AGE:-300}
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
MARK="# written by slurm-up.sh"
T_START=$EPOCHREALTIME

log() { printf '[slurm-up %6ss] %s\n' "$(awk -v a="$EPOCHREALTIME" -v b="$T_START" 'BEGIN{printf "%.2f", a-b}')" "$*"; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
case $ACCT in dbd|jobcomp|none) ;; *) die "SLURM_ACCOUNTING must be dbd, jobcomp or none";; esac

# wait_for <seconds> <command...> : poll every 0.1 s until the command succeeds
wait_for() {
  local t=$1; shift; local n=$(( t * 10 ))
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
# tcp_open <port> : something listens on 127.0.0.1:<port>
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- packages
PKGS=(munge slurmctld slurmd slurm-client)
[ "$ACCT" = dbd ] && PKGS+=(slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ -n "${SLURM_NO_INSTALL:-}" ] && die "missing packages: ${missing[*]}"
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Debian's postinst would start the services where an init system runs;
  # a temporary policy-rc.d stops that (we start the daemons ourselves below).
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt_log=$(mktemp /tmp/slurm-up-apt.XXXXXX)
  # a fresh machine has no package lists: update first, always
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    tail -20 "$apt_log"; die "apt-get failed (log: $apt_log)"
  fi
  rm -f "$apt_log"
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  log "packages installed"
fi

# ------------------------------------------------------------ refuse reuse
if [ -e "$DIR/run" ]; then
  for pf in "$DIR"/run/*.pid; do
    [ -e "$pf" ] || continue
    pid=$(cat "$pf" 2>/dev/null || true)
    name=$(basename "$pf" .pid)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
      die "$pf: PID $pid is still running - run slurm-down.sh first"
    fi
  done
fi
for port in 6817 6818; do tcp_open $port && die "port $port already in use (another slurmctld/slurmd?)"; done
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF" && [ -z "${SLURM_FORCE:-}" ]; then
  die "$CONF exists and was not written by this script (set SLURM_FORCE=1 to overwrite)"
fi

rm -rf "$DIR"
mkdir -p "$DIR"/{run,log,ctld,spool}
chmod 755 "$DIR"

# ------------------------------------------------------------ slurm.conf
NODE=${SLURM_NODE_NAME:-$(hostname -s)}
# slurmd -C prints the hardware as slurmd sees it; reuse it so the node never drains
HW=$(slurmd -C | head -1)
hw() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$HW"; }
REAL_CPUS=$(hw CPUs); MEM=$(hw RealMemory)
CPUS=${SLURM_NODE_CPUS:-8}
[ "$CPUS" = real ] && CPUS=$REAL_CPUS
if [ "$CPUS" = "$REAL_CPUS" ]; then
  NODE_HW="CPUs=$CPUS Boards=$(hw Boards) SocketsPerBoard=$(hw SocketsPerBoard) CoresPerSocket=$(hw CoresPerSocket) ThreadsPerCore=$(hw ThreadsPerCore)"
  SLURMD_PARAMS=
else
  NODE_HW="CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1"
  SLURMD_PARAMS="SlurmdParameters=config_overrides"
fi

case $ACCT in
  dbd)     ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
# keep --comment in the accounting DB: the Slurm adapter's idempotency key lives there
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none" ;;
  jobcomp) ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log" ;;
  none)    ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none" ;;
esac

cat > "$CONF" <<EOF
$MARK ($(date -u +%FT%TZ)); slurm-down.sh removes it
ClusterName=testcluster
# "localhost" as controller name: slurmctld accepts it whatever the hostname is
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# no cgroups in this sandbox: plain /proc process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SchedulerType=sched/backfill
# default batch_sched_delay=3 makes every sbatch wait ~3 s for the scheduler
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
$ACCT_LINES
# finished jobs stay visible to squeue -t all / scontrol show job for this long
MinJobAge=$MIN_JOB_AGE
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
SlurmctldDebug=info
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdDebug=info
SlurmdLogFile=$DIR/log/slurmd.log
$SLURMD_PARAMS
NodeName=$NODE NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 $NODE_HW RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
log "wrote $CONF (node $NODE, $CPUS CPUs, accounting=$ACCT)"

# ------------------------------------------------------------ munged
# munged needs /run/munge (a tmpfs dir that vanishes on reboot) and the key the
# package's postinst made. Reuse a munged that already answers.
if munge -n </dev/null >/dev/null 2>&1; then
  log "munged already running - reusing it (not ours to stop)"
else
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  wait_for 10 munge -n || die "munged did not come up (see /var/log/munge/munged.log)"
  cp /run/munge/munged.pid "$DIR/run/munged.pid"
  log "munged up (pid $(cat "$DIR/run/munged.pid"))"
fi

# ------------------------------------------------------------ MariaDB + slurmdbd
if [ "$ACCT" = dbd ]; then
  # private datadir under $DIR: job ids restart at 1 with the fresh StateSaveLocation,
  # so the accounting DB must be fresh too (else sacct -j 1 returns old runs' jobs).
  # mariadbd runs as user mysql: its datadir, socket, pidfile and log live in a
  # mysql-owned directory (a root-owned one makes it exit: "Bind on unix socket: Permission denied")
  DB="$DIR/db"; install -d -o mysql -g mysql "$DB"
  mariadb-install-db --user=mysql --datadir="$DB/data" --auth-root-authentication-method=socket \
    --skip-test-db --innodb-log-file-size=16M >"$DIR/log/mariadb-install.log" 2>&1 \
    || die "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB/data" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$DB/mysqld.sock" \
    --pid-file="$DB/mariadbd.pid" --log-error="$DB/mariadb.log" \
    --innodb-log-file-size=16M --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
    </dev/null >/dev/null 2>&1 &
  wait_for 30 mariadb-admin --socket="$DB/mysqld.sock" ping || die "mariadbd did not come up (see $DB/mariadb.log)"
  wait_for 5 test -s "$DB/mariadbd.pid"
  cp "$DB/mariadbd.pid" "$DIR/run/mariadbd.pid"
  mariadb --socket="$DB/mysqld.sock" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmtest';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmtest';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  log "mariadbd up (pid $(cat "$DIR/run/mariadbd.pid"), 127.0.0.1:$DB_PORT)"

  cat > "$DBDCONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurmtest
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DBDCONF"   # slurmdbd refuses a slurmdbd.conf readable by others
  tcp_open 6819 && die "port 6819 already in use (another slurmdbd?)"
  /usr/sbin/slurmdbd
  wait_for 30 tcp_open 6819 || die "slurmdbd did not listen on 6819 (see $DIR/log/slurmdbd.log)"
  log "slurmdbd up (pid $(cat "$DIR/run/slurmdbd.pid"))"
else
  [ -e "$DBDCONF" ] && grep -qF "$MARK" "$DBDCONF" && rm -f "$DBDCONF"
fi

# ------------------------------------------------------------ slurmctld + slurmd
/usr/sbin/slurmctld
wait_for 30 sh -c 'scontrol ping | grep -q "is UP"' || die "slurmctld not UP (see $DIR/log/slurmctld.log)"
log "slurmctld up (pid $(cat "$DIR/run/slurmctld.pid"))"
/usr/sbin/slurmd -N "$NODE"
wait_for 30 sh -c "sinfo -h -n '$NODE' -o %T | grep -qE '^(idle|mixed|allocated)'" || {
  sinfo -N -l; die "node $NODE not idle (see $DIR/log/slurmd.log)"; }
log "slurmd up (pid $(cat "$DIR/run/slurmd.pid")), node $NODE idle"

if [ "$ACCT" = dbd ]; then
  # slurmctld registers the cluster in slurmdbd on its own (22.05); confirm it
  wait_for 15 sh -c 'sacctmgr -n -P show cluster format=cluster | grep -qx testcluster' \
    || die "cluster not registered in slurmdbd"
fi

# smoke job: proves munge -> slurmctld -> slurmd -> slurmstepd end to end. The first
# job after a cold start waits ~3 s for the controller's first scheduling pass.
if [ -z "${SLURM_NO_SMOKE:-}" ]; then
  sj=$(sbatch --parsable -J slurm-up-smoke -o /dev/null --chdir=/tmp --wrap true)
  wait_for 30 sh -c "squeue -h -t all -j $sj -o %T | grep -qx COMPLETED" \
    || die "smoke job $sj did not complete: $(squeue -h -t all -j "$sj" -o '%T %r')"
  log "smoke job $sj COMPLETED"
fi

sinfo
log "single-node Slurm ready (accounting=$ACCT, state in $DIR)"
