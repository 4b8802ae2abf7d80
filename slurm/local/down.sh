#!/usr/bin/env bash
# Stop what slurm/local/up.sh started (and only that): the daemons whose pid files it wrote, and
# with --nodes 2 the network namespace and veth pair it made. Jobs still queued are cancelled
# first, so nothing is left half-run. Idempotent.
#
#   slurm/local/down.sh             the one-node cluster
#   slurm/local/down.sh --nodes 2   the two-node cluster
set -euo pipefail
NODES=1
while (($#)); do
  case "$1" in
    --nodes) NODES=${2:-}; shift ;;
    --nodes=*) NODES=${1#--nodes=} ;;
    *) echo "slurm/local/down: unknown argument '$1' (usage: down.sh [--nodes 1|2])" >&2; exit 1 ;;
  esac
  shift
done
STATE1=${HIRI_SLURM_STATE:-/var/tmp/hiri-vit-slurm}
STATE2=${HIRI_SLURM2_STATE:-/var/tmp/hiri-vit-slurm2}
case "$NODES" in
  1) STATE=$STATE1 OTHER=$STATE2 ;;
  2) STATE=$STATE2 OTHER=$STATE1; export SLURM_CONF=$STATE/slurm.conf ;;
  *) echo "slurm/local/down: --nodes must be 1 or 2, not '$NODES'" >&2; exit 1 ;;
esac
log() { echo "slurm/local/down: $*" >&2; }

# running <pid>: the process exists and is not a zombie (here pid 1 reaps orphans only now and then)
running() { case "$(ps -o stat= -p "$1" 2>/dev/null)" in ""|Z*) return 1 ;; esac; }
alive() { [ -s "$1" ] && running "$(cat "$1")"; }

# stop <name> <pidfile>: only if the pid is alive and still that program (pids get reused)
stop() {
  local name=$1 pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if running "$pid" && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ]; then
    log "stopping $name (pid $pid)"
    kill "$pid"
    for _ in $(seq 40); do running "$pid" || break; sleep 0.25; done
    running "$pid" && { log "$name did not stop; killing"; kill -9 "$pid"; }
  fi
  rm -f "$pidfile"
}

started_ctld=0; [ -s "$STATE/pids/slurmctld.pid" ] && started_ctld=1
if [ "$started_ctld" = 1 ] && command -v squeue >/dev/null && scontrol ping >/dev/null 2>&1; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  [ -n "$jobs" ] && { log "cancelling jobs: $(echo $jobs)"; scancel $jobs || true; sleep 2; }
fi
for pidfile in "$STATE"/pids/slurmd.pid "$STATE"/pids/slurmd-*.pid; do stop slurmd "$pidfile"; done
stop slurmctld "$STATE/pids/slurmctld.pid"
# One munged serves both clusters: while the other one's controller runs, it keeps munged and stops it
# when it goes down.
if [ -s "$STATE/pids/munged.pid" ] && alive "$OTHER/pids/slurmctld.pid"; then
  log "munged still serves the cluster of $OTHER: that cluster's down.sh stops it"
  mv "$STATE/pids/munged.pid" "$OTHER/pids/munged.pid"
fi
stop munged "$STATE/pids/munged.pid"

if [ "$NODES" = 2 ]; then
  # what up.sh made, named in its marker files; the veth pair goes with the namespace that holds
  # one end, deleted here too in case the namespace is gone already
  if [ -s "$STATE/net/veth" ]; then
    veth=$(cat "$STATE/net/veth")
    ip link show "$veth" >/dev/null 2>&1 && { log "removing veth pair $veth"; ip link del "$veth" || true; }
    rm -f "$STATE/net/veth"
  fi
  if [ -s "$STATE/net/netns" ]; then
    netns=$(cat "$STATE/net/netns")
    ip netns list 2>/dev/null | grep -qE "^$netns( |\$)" && { log "removing network namespace $netns"; ip netns del "$netns"; }
    rm -f "$STATE/net/netns"
  fi
fi
log "down"
