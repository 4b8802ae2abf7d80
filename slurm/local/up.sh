#!/usr/bin/env bash
# Bring up a one-node SLURM on this machine (development and CI), idempotently.
#
#   slurm/local/up.sh            install munge + slurm from Debian if missing, start what is not
#                                running, wait until `sinfo` shows node `localhost` idle, and check
#                                that `sbatch` runs a job. Fails loudly (non-zero, logs shown).
#   slurm/local/up.sh --is-up    exit 0 if the cluster answers and the node is usable, else 1;
#                                starts and installs nothing (scripts/test.sh uses it to decide
#                                whether it owns the cluster and must stop it afterwards).
#
# Only what this script starts is recorded (pid files in $STATE/pids) and stopped by down.sh: a
# munged or slurmctld that was already running is used, never killed.
# No accounting database: `sacct` fails here on purpose; pipeline/launch/slurm.py reads job state
# from squeue/scontrol (MinJobAge below keeps finished jobs visible to scontrol for an hour).
set -euo pipefail

STATE=${HIRI_SLURM_STATE:-/var/tmp/hiri-vit-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# managed by hiri-vit slurm/local/up.sh"
PKGS=(munge slurmctld slurmd slurm-client)
NODE=localhost
PARTITION=debug
PART_MAX_TIME=60        # minutes; a finite limit so that "time over the partition's" is testable

log() { echo "slurm/local/up: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1; }
is_up() {
  command -v sinfo >/dev/null || return 1
  scontrol ping >/dev/null 2>&1 || return 1
  case "$(node_state)" in idle|mix|alloc|comp*) return 0 ;; *) return 1 ;; esac
}

if [ "${1:-}" = "--is-up" ]; then is_up; exit; fi
[ "$(id -u)" -eq 0 ] || die "run as root (slurmctld/slurmd run as SlurmUser=root here; try sudo)"

if is_up; then log "already up: $(sinfo -h -o '%P %D %t' | tr '\n' ' ')"; exit 0; fi

# --- 1. packages ------------------------------------------------------------------------------
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
fi
for b in munged slurmctld slurmd sbatch sinfo scontrol; do
  command -v "$b" >/dev/null || die "$b not found after installing ${PKGS[*]}"
done

# --- 2. configuration -------------------------------------------------------------------------
mkdir -p "$STATE"/{pids,logs,ctld,spool}
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script; refusing to overwrite another cluster's configuration"
fi
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm
tmp=$(mktemp)
cat >"$tmp" <<CONF
$MARK
# One-node development cluster. No accounting database (sacct fails), no cgroups.
ClusterName=hiri-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=30
SchedulerParameters=sched_interval=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/pids/slurmctld.pid
SlurmdPidFile=$STATE/pids/slurmd.pid
SlurmctldLogFile=$STATE/logs/slurmctld.log
SlurmdLogFile=$STATE/logs/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=$PART_MAX_TIME State=UP
CONF
# KillWait: SIGTERM -> SIGKILL grace (SLURM's default 30 s); a signalled training job saves its
# checkpoint inside it (pipeline/train/preempt.py).
# Rewrite only when it changed, so an unchanged rerun does not disturb running daemons.
changed=0
if ! cmp -s "$tmp" "$CONF"; then install -m 0644 "$tmp" "$CONF"; changed=1; fi
rm -f "$tmp"

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- 3. munge ---------------------------------------------------------------------------------
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { log "creating /etc/munge/munge.key"; mungekey --create --force -b 1024 2>/dev/null \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; }
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  log "starting munged"
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid \
    || die "munged did not start: $(tail -5 /var/log/munge/munged.log 2>/dev/null)"
  cp /run/munge/munged.pid "$STATE/pids/munged.pid"   # ours: down.sh stops it
  for _ in $(seq 20); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n </dev/null | unmunge >/dev/null || die "munge does not authenticate"
fi

# --- 4. slurmctld and slurmd ------------------------------------------------------------------
if ! scontrol ping >/dev/null 2>&1; then
  alive "$STATE/pids/slurmctld.pid" && die "slurmctld (pid $(cat "$STATE/pids/slurmctld.pid")) runs but does not answer; see $STATE/logs/slurmctld.log"
  # A controller this script starts begins with no jobs (-c): jobs saved in $STATE by a cluster that
  # was not brought down (its processes gone with the machine or the session) would otherwise come
  # back as running, hold the node, and leave every new job pending.
  log "starting slurmctld (without the jobs of an earlier run)"
  slurmctld -c -f "$CONF" || die "slurmctld did not start: $(tail -20 "$STATE/logs/slurmctld.log")"
  for _ in $(seq 60); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
  scontrol ping >/dev/null 2>&1 || die "slurmctld does not answer: $(tail -20 "$STATE/logs/slurmctld.log")"
fi
if [ "$changed" = 1 ] && scontrol ping >/dev/null 2>&1; then
  log "configuration changed: scontrol reconfigure"
  scontrol reconfigure || die "scontrol reconfigure failed; see $STATE/logs/slurmctld.log"
fi
if ! alive "$STATE/pids/slurmd.pid"; then
  log "starting slurmd"
  slurmd -f "$CONF" -N "$NODE" || die "slurmd did not start: $(tail -20 "$STATE/logs/slurmd.log")"
fi

# --- 5. the node idle, and a real job through sbatch --------------------------------------------
for i in $(seq 60); do
  st=$(node_state)
  case "$st" in
    idle|mix|alloc) break ;;
    down*|drain*|drng*) [ "$i" -gt 4 ] && scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
is_up || die "node $NODE is '${st:-unknown}', not idle: $(scontrol show node "$NODE" | grep -i reason || true)
--- slurmd.log ---
$(tail -20 "$STATE/logs/slurmd.log" 2>/dev/null)"
out="$STATE/logs/smoke.out"
rm -f "$out"
timeout 120 sbatch --wait --quiet -p "$PARTITION" -t 1 -o "$out" --wrap 'hostname' \
  || die "sbatch --wait --wrap hostname failed; see $STATE/logs/"
log "up: $(sinfo -h -o 'partition %P, %D node(s) %t, time limit %l') (smoke job ran on $(cat "$out"))"
