#!/usr/bin/env bash
# Stop what slurm/local/up.sh started (and only that): the daemons whose pid files it wrote.
# Jobs still queued are cancelled first, so nothing is left half-run. Idempotent.
set -euo pipefail
STATE=${HIRI_SLURM_STATE:-/var/tmp/hiri-vit-slurm}
log() { echo "slurm/local/down: $*" >&2; }

# stop <name> <pidfile>: only if the pid is alive and still that program (pids get reused)
stop() {
  local name=$1 pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ]; then
    log "stopping $name (pid $pid)"
    kill "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && { log "$name did not stop; killing"; kill -9 "$pid"; }
  fi
  rm -f "$pidfile"
}

started_ctld=0; [ -s "$STATE/pids/slurmctld.pid" ] && started_ctld=1
if [ "$started_ctld" = 1 ] && command -v squeue >/dev/null && scontrol ping >/dev/null 2>&1; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  [ -n "$jobs" ] && { log "cancelling jobs: $(echo $jobs)"; scancel $jobs || true; sleep 2; }
fi
stop slurmd "$STATE/pids/slurmd.pid"
stop slurmctld "$STATE/pids/slurmctld.pid"
stop munged "$STATE/pids/munged.pid"
log "down"
