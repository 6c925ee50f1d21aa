#!/usr/bin/env bash
# slurm-down.sh - stop what tests/slurm/slurm-up.sh started, by the PIDs it recorded, and clean up.
# Adapted from ../shared/reference/slurm-down.sh; never kills by name.
#
#   SLURM_TEST_DIR=/var/tmp/slurm-test   same value as for slurm-up.sh
#   SLURM_KEEP_STATE=1                   keep $SLURM_TEST_DIR (logs, DB) and the .conf files
#
# Order: cancel jobs -> slurmd -> slurmctld -> slurmdbd -> mariadbd -> munged.
# Idempotent: safe to run when nothing (or only part) is up.
set -uo pipefail

DIR=${SLURM_TEST_DIR:-/var/tmp/slurm-test}
MARK="# written by slurm-up.sh"
log() { echo "[slurm-down] $*"; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# stop_group <name:pidfile>... : SIGTERM to all at once, wait up to 15 s for all,
# then SIGKILL whatever is left. Pidfiles are removed.
stop_group() {
  local item name pf pid live=()
  for item in "$@"; do
    name=${item%%:*}; pf=${item#*:}
    if [ ! -e "$pf" ]; then log "$name: no pidfile"; continue; fi
    pid=$(cat "$pf" 2>/dev/null); rm -f "$pf"
    # a stale pidfile (daemon gone, PID reused by something else) must not kill a stranger
    if alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
      kill -TERM "$pid" 2>/dev/null; live+=("$name:$pid")
    else
      log "$name: not running"
    fi
  done
  for _ in $(seq 150); do
    local still=()
    for item in "${live[@]}"; do alive "${item#*:}" && still+=("$item") || log "${item%%:*} (pid ${item#*:}) stopped"; done
    live=("${still[@]}")
    [ ${#live[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  for item in "${live[@]}"; do
    log "${item%%:*} (pid ${item#*:}) ignored SIGTERM for 15 s - SIGKILL"; kill -KILL "${item#*:}" 2>/dev/null
  done
}

# 1. cancel every job while slurmctld still answers, so no slurmstepd outlives slurmd
if [ -e "$DIR/run/slurmctld.pid" ] && alive "$(cat "$DIR/run/slurmctld.pid")" \
   && timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
  n=$(squeue -h -t PD,R,CG,S,CF,RQ,RS,SE,SO,ST -o %i 2>/dev/null | wc -l)
  if [ "$n" -gt 0 ]; then
    log "cancelling $n job(s)"
    scancel --full --user=root 2>/dev/null || true
    scancel --full --state=PENDING 2>/dev/null || true
    for _ in $(seq 200); do   # KillWait=5 -> jobs are gone within ~6 s
      [ "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null | wc -l)" -eq 0 ] && break; sleep 0.1
    done
  fi
fi
# slurmstepd processes (one per running job step) are children of slurmd's fork,
# re-parented to PID 1; note their PIDs now so stragglers can be stopped by PID.
steps=$(ps -C slurmstepd -o pid= 2>/dev/null | tr -s ' \n' ' ')

# 2. daemons, by the PIDs recorded at start. slurmctld reports to slurmdbd while it
#    shuts down, slurmdbd needs MariaDB, everything needs munged: stop in that order.
stop_group "slurmd:$DIR/run/slurmd.pid" "slurmctld:$DIR/run/slurmctld.pid"
stop_group "slurmdbd:$DIR/run/slurmdbd.pid"
# munged: only if slurm-up.sh started it (it copied the pidfile then)
stop_group "mariadbd:$DIR/run/mariadbd.pid" "munged:$DIR/run/munged.pid"

for pid in $steps; do
  alive "$pid" && { log "straggler slurmstepd $pid"; kill -KILL "$pid" 2>/dev/null; }
done

# 3. files
if [ -z "${SLURM_KEEP_STATE:-}" ]; then
  for f in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
    [ -e "$f" ] && grep -qF "$MARK" "$f" && rm -f "$f" && log "removed $f"
  done
  rm -rf "$DIR" && log "removed $DIR"
fi
log "done"
