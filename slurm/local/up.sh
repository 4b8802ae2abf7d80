#!/usr/bin/env bash
# Bring up a local SLURM on this machine (development and CI), idempotently.
#
#   slurm/local/up.sh            install munge + slurm from Debian if missing, start what is not
#                                running, wait until `sinfo` shows node `localhost` idle, and check
#                                that `sbatch` runs a job. Fails loudly (non-zero, logs shown).
#   slurm/local/up.sh --nodes 2  a second, separate cluster of two nodes: this host, and node n2 in
#                                its own network and UTS namespace behind a veth pair (below). Its
#                                clients need SLURM_CONF=/var/tmp/hiri-vit-slurm2/slurm.conf.
#   ... --is-up [--nodes 2]      exit 0 if that cluster answers and its nodes are usable, else 1;
#                                starts and installs nothing (scripts/test.sh uses it to decide
#                                whether it owns the cluster and must stop it afterwards).
#
# Only what this script starts or creates is recorded (pid files in $STATE/pids, the network in
# $STATE/net) and stopped or removed by down.sh: a munged or slurmctld that was already running is
# used, never killed.
# No accounting database: `sacct` fails here on purpose; pipeline/launch/slurm.py reads job state
# from squeue/scontrol (MinJobAge below keeps finished jobs visible to scontrol for an hour).
#
# Exit status: 0 up; 1 failed; 3 (--nodes 2 only) this machine refused a namespace or the veth pair:
# the refusal is printed and written to $STATE2/refused (the two-node test falls back on it).
set -euo pipefail

NODES=1
IS_UP=0
while (($#)); do
  case "$1" in
    --is-up) IS_UP=1 ;;
    --nodes) NODES=${2:-}; shift ;;
    --nodes=*) NODES=${1#--nodes=} ;;
    *) echo "slurm/local/up: unknown argument '$1' (usage: up.sh [--nodes 1|2] [--is-up])" >&2; exit 1 ;;
  esac
  shift
done
case "$NODES" in 1|2) ;; *) echo "slurm/local/up: --nodes must be 1 or 2, not '$NODES'" >&2; exit 1 ;; esac

PKGS=(munge slurmctld slurmd slurm-client)
PART_MAX_TIME=60        # minutes; a finite limit so that "time over the partition's" is testable
MARK="# managed by hiri-vit slurm/local/up.sh"

if [ "$NODES" = 1 ]; then
  STATE=${HIRI_SLURM_STATE:-/var/tmp/hiri-vit-slurm}
  CONF=/etc/slurm/slurm.conf
  NODE_LIST=(localhost)
  PARTITION=debug
else
  # Separate from the one-node cluster in everything but munged: its own configuration (clients
  # find it through SLURM_CONF), ports, state, pid and log files. /etc/slurm/slurm.conf stays the
  # one-node cluster's.
  STATE=${HIRI_SLURM2_STATE:-/var/tmp/hiri-vit-slurm2}
  CONF=$STATE/slurm.conf
  export SLURM_CONF=$CONF
  HOST=$(hostname -s)     # node 1, and the controller: slurmctld only runs where its host name is
  NODE2=n2
  NODE_LIST=("$HOST" "$NODE2")
  PARTITION=multi
  NETNS=hiri-n2           # node n2's network namespace (ip netns), reached over a veth pair:
  VETH_HOST=hiri-v0       #   this end in the host's namespace, 10.77.0.1
  VETH_NS=hiri-v1         #   this end in hiri-n2, 10.77.0.2
  HOST_IP=10.77.0.1
  NS_IP=10.77.0.2
  HOSTS=$STATE/hosts      # the cluster's name service: bind-mounted on /etc/hosts for its daemons
fi

log() { echo "slurm/local/up: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# refuse <what> <its error>: the machine will not give a namespace or a link (exit 3, see above)
refuse() {
  local msg="$1 refused: $2"
  echo "$msg" >"$STATE/refused"
  log "REFUSED: $msg"
  log "the two-node cluster cannot run here (slurm/local/down.sh --nodes 2 removes what was made)"
  exit 3
}

# alive <pidfile>: its process runs (a zombie does not: here pid 1 reaps orphans only now and then)
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] || return 1
  case "$(ps -o stat= -p "$pid" 2>/dev/null)" in ""|Z*) return 1 ;; esac
}
node_states() { sinfo -h -N -p "$PARTITION" -o '%N %t' 2>/dev/null; }
is_up() {
  command -v sinfo >/dev/null || return 1
  [ -f "$CONF" ] || return 1
  scontrol ping >/dev/null 2>&1 || return 1
  local n st
  for n in "${NODE_LIST[@]}"; do
    st=$(node_states | awk -v n="$n" '$1 == n {print $2}' | head -1)
    case "$st" in idle|mix|alloc|comp*) ;; *) return 1 ;; esac
    # the controller marks a node down only minutes after its slurmd died: ask the daemon itself
    if [ "$NODES" = 2 ]; then alive "$STATE/pids/slurmd-$n.pid" || return 1; fi
  done
}

if [ "$IS_UP" = 1 ]; then is_up; exit; fi
[ "$(id -u)" -eq 0 ] || die "run as root (slurmctld/slurmd run as SlurmUser=root here; try sudo)"

if is_up; then log "already up: $(sinfo -h -o '%P %D %t' | tr '\n' ' ')"; exit 0; fi
mkdir -p "$STATE"/{pids,logs,ctld,spool}
[ "$NODES" = 1 ] || { mkdir -p "$STATE/net"; rm -f "$STATE/refused"; }

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

# --- 2. the network of the two-node cluster ---------------------------------------------------
# Node n2 lives in network namespace hiri-n2 (its own interfaces, addresses and ports) and its own
# UTS namespace (hostname n2); a veth pair links it to this host. No default route: n2 reaches the
# cluster's network 10.77.0.0/24 and nothing else, so a name lookup that goes past the hosts file
# (a reverse lookup of an IPv4-mapped IPv6 address: torch's TCPStore makes one for each client)
# fails at once, where a resolver behind an unrouted default gateway waits 10 s for its timeout.
# Both nodes and the controller see the names through $HOSTS (this host's name -> 10.77.0.1,
# n2 -> 10.77.0.2), bind-mounted on /etc/hosts in a private mount namespace of each daemon, so the
# jobs they start resolve the names as on a cluster's DNS, and /etc/hosts (where this host's name
# is 127.0.0.1) stays as it is.
if [ "$NODES" = 2 ]; then
  for b in ip nsenter unshare; do command -v "$b" >/dev/null || die "$b not found (iproute2, util-linux)"; done
  if ! ip netns list 2>/dev/null | grep -qE "^$NETNS( |$)"; then
    out=$(ip netns add "$NETNS" 2>&1) || refuse "ip netns add $NETNS" "$out"
    echo "$NETNS" >"$STATE/net/netns"     # made here: down.sh removes it
  elif [ ! -e "$STATE/net/netns" ]; then
    die "network namespace $NETNS exists and was not made by this script; remove it (ip netns del $NETNS) or leave it"
  fi
  if ! ip link show "$VETH_HOST" >/dev/null 2>&1; then
    out=$(ip link add "$VETH_HOST" type veth peer name "$VETH_NS" netns "$NETNS" 2>&1) \
      || refuse "ip link add $VETH_HOST type veth peer name $VETH_NS netns $NETNS" "$out"
    echo "$VETH_HOST" >"$STATE/net/veth"
  elif [ ! -e "$STATE/net/veth" ]; then
    die "interface $VETH_HOST exists and was not made by this script"
  fi
  for cmd in "ip addr replace $HOST_IP/24 dev $VETH_HOST" "ip link set $VETH_HOST up" \
             "ip -n $NETNS link set lo up" "ip -n $NETNS addr replace $NS_IP/24 dev $VETH_NS" \
             "ip -n $NETNS link set $VETH_NS up"; do
    out=$($cmd 2>&1) || refuse "$cmd" "$out"
  done
  # the daemons' other namespaces, tried before anything starts: a mount one (the hosts file), a UTS one
  out=$(unshare --mount sh -c 'mount --bind "$0" /etc/hosts' /etc/hosts 2>&1) \
    || refuse "unshare --mount (a private mount namespace with a bind-mounted /etc/hosts)" "$out"
  out=$(nsenter --net="/var/run/netns/$NETNS" unshare --uts sh -c "hostname $NODE2" 2>&1) \
    || refuse "nsenter --net=/var/run/netns/$NETNS unshare --uts (node $NODE2's UTS namespace)" "$out"
  # /etc/hosts without this cluster's two names, then their veth addresses
  awk -v a="$HOST" -v b="$NODE2" '/^[[:space:]]*(#|$)/ {print; next}
    {line = $1; n = 0; for (i = 2; i <= NF; i++) if ($i != a && $i != b) {line = line " " $i; n++}
     if (n) print line}' /etc/hosts >"$HOSTS.tmp"
  printf '%s %s\n%s %s\n' "$HOST_IP" "$HOST" "$NS_IP" "$NODE2" >>"$HOSTS.tmp"
  mv "$HOSTS.tmp" "$HOSTS"
fi
# run_in_cluster_view CMD...: CMD with the cluster's hosts file on /etc/hosts (two-node cluster)
run_in_cluster_view() { unshare --mount sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$HOSTS" "$@"; }

# --- 3. configuration -------------------------------------------------------------------------
if [ "$NODES" = 1 ] && [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script; refusing to overwrite another cluster's configuration"
fi
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p "$(dirname "$CONF")"
tmp=$(mktemp)
if [ "$NODES" = 1 ]; then
  cat >"$tmp" <<CONF
$MARK
# One-node development cluster. No accounting database (sacct fails), no cgroups.
ClusterName=hiri-local
SlurmctldHost=localhost
CONF
else
  cat >"$tmp" <<CONF
$MARK --nodes 2
# Two-node development cluster: $HOST and $NODE2 (network namespace $NETNS). No accounting
# database (sacct fails), no cgroups. Ports and files apart from the one-node cluster's.
ClusterName=hiri-local2
SlurmctldHost=$HOST($HOST_IP)
SlurmctldPort=6917
SlurmdPort=6918
CONF
fi
if [ "$NODES" = 1 ]; then
  slurmd_spool=$STATE/spool slurmd_pid=$STATE/pids/slurmd.pid slurmd_log=$STATE/logs/slurmd.log
else  # one of each per node (%n: the node's name), both nodes sharing this machine's file system
  slurmd_spool=$STATE/spool/%n slurmd_pid=$STATE/pids/slurmd-%n.pid slurmd_log=$STATE/logs/slurmd-%n.log
fi
cat >>"$tmp" <<CONF
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
SlurmdSpoolDir=$slurmd_spool
SlurmctldPidFile=$STATE/pids/slurmctld.pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$STATE/logs/slurmctld.log
SlurmdLogFile=$slurmd_log
CONF
if [ "$NODES" = 1 ]; then
  cat >>"$tmp" <<CONF
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=$PART_MAX_TIME State=UP
CONF
else
  # Both nodes are this machine's cores and memory: each declares all the cores and half the memory.
  cat >>"$tmp" <<CONF
NodeName=$HOST NodeAddr=$HOST_IP CPUs=$cpus RealMemory=$((mem_mb / 2)) State=UNKNOWN
NodeName=$NODE2 NodeAddr=$NS_IP CPUs=$cpus RealMemory=$((mem_mb / 2)) State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST,$NODE2 Default=YES MaxTime=$PART_MAX_TIME State=UP
CONF
fi
# KillWait: SIGTERM -> SIGKILL grace (SLURM's default 30 s); a signalled training job saves its
# checkpoint inside it (pipeline/train/preempt.py).
# Rewrite only when it changed, so an unchanged rerun does not disturb running daemons.
changed=0
if ! cmp -s "$tmp" "$CONF"; then install -m 0644 "$tmp" "$CONF"; changed=1; fi
rm -f "$tmp"

# --- 4. munge (one munged serves both clusters) -----------------------------------------------
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

# --- 5. slurmctld and slurmd ------------------------------------------------------------------
if ! scontrol ping >/dev/null 2>&1; then
  alive "$STATE/pids/slurmctld.pid" && die "slurmctld (pid $(cat "$STATE/pids/slurmctld.pid")) runs but does not answer; see $STATE/logs/slurmctld.log"
  # A controller this script starts begins with no jobs (-c): jobs saved in $STATE by a cluster that
  # was not brought down (its processes gone with the machine or the session) would otherwise come
  # back as running, hold the node, and leave every new job pending.
  log "starting slurmctld (without the jobs of an earlier run)"
  if [ "$NODES" = 1 ]; then
    slurmctld -c -f "$CONF" || die "slurmctld did not start: $(tail -20 "$STATE/logs/slurmctld.log")"
  else
    run_in_cluster_view slurmctld -c -f "$CONF" \
      || die "slurmctld did not start: $(tail -20 "$STATE/logs/slurmctld.log" 2>/dev/null)"
  fi
  for _ in $(seq 60); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
  scontrol ping >/dev/null 2>&1 || die "slurmctld does not answer: $(tail -20 "$STATE/logs/slurmctld.log")"
fi
if [ "$changed" = 1 ] && scontrol ping >/dev/null 2>&1; then
  log "configuration changed: scontrol reconfigure"
  scontrol reconfigure || die "scontrol reconfigure failed; see $STATE/logs/slurmctld.log"
fi
if [ "$NODES" = 1 ]; then
  if ! alive "$STATE/pids/slurmd.pid"; then
    log "starting slurmd"
    slurmd -f "$CONF" -N localhost || die "slurmd did not start: $(tail -20 "$STATE/logs/slurmd.log")"
  fi
else
  if ! alive "$STATE/pids/slurmd-$HOST.pid"; then
    log "starting slurmd $HOST"
    run_in_cluster_view slurmd -f "$CONF" -N "$HOST" \
      || die "slurmd $HOST did not start: $(tail -20 "$STATE/logs/slurmd-$HOST.log" 2>/dev/null)"
  fi
  if ! alive "$STATE/pids/slurmd-$NODE2.pid"; then
    # Not `ip netns exec`: it remounts /sys for the namespace, without the cgroup hierarchy that
    # slurmd reads, and slurmd fails. nsenter joins the network namespace and nothing else.
    log "starting slurmd $NODE2 (network namespace $NETNS, hostname $NODE2)"
    nsenter --net="/var/run/netns/$NETNS" unshare --uts --mount sh -c \
      'hostname "$1" && mount --bind "$2" /etc/hosts && exec slurmd -f "$3" -N "$1"' sh "$NODE2" "$HOSTS" "$CONF" \
      || die "slurmd $NODE2 did not start: $(tail -20 "$STATE/logs/slurmd-$NODE2.log" 2>/dev/null)"
  fi
fi

# --- 6. the nodes idle, and a real job through sbatch -------------------------------------------
for i in $(seq 60); do
  is_up && break
  if [ "$i" -gt 4 ]; then
    for n in "${NODE_LIST[@]}"; do
      case "$(node_states | awk -v n="$n" '$1 == n {print $2}')" in
        down*|drain*|drng*) scontrol update nodename="$n" state=resume 2>/dev/null || true ;;
      esac
    done
  fi
  sleep 1
done
if ! is_up; then
  logs=""
  for f in "$STATE"/logs/slurmd*.log; do logs+=$'\n'"--- $(basename "$f") ---"$'\n'"$(tail -20 "$f")"; done
  die "nodes not idle: $(node_states | tr '\n' ' ')
$(scontrol show node 2>/dev/null | grep -iE 'NodeName|reason' || true)$logs"
fi
out="$STATE/logs/smoke.out"
rm -f "$out"
if [ "$NODES" = 1 ]; then
  timeout 120 sbatch --wait --quiet -p "$PARTITION" -t 1 -o "$out" --wrap 'hostname' \
    || die "sbatch --wait --wrap hostname failed; see $STATE/logs/"
  log "up: $(sinfo -h -o 'partition %P, %D node(s) %t, time limit %l') (smoke job ran on $(cat "$out"))"
else
  # one task per node; each names its host and the address the other node's name has there
  timeout 120 sbatch --wait --quiet -p "$PARTITION" -N 2 --ntasks-per-node=1 -t 1 -o "$out" \
    --wrap "srun -l sh -c 'echo \$(hostname -s) \$(getent hosts $HOST $NODE2 | tr -s \" \" | tr \"\\n\" \" \")'" \
    || die "sbatch -N 2 --wait (srun across both nodes) failed: $(cat "$out" 2>/dev/null); see $STATE/logs/"
  hosts=$(awk '{print $2}' "$out" | sort | tr '\n' ' ')
  [ "$hosts" = "$(printf '%s\n' "${NODE_LIST[@]}" | sort | tr '\n' ' ')" ] \
    || die "the smoke job's two tasks ran on '$hosts', not on ${NODE_LIST[*]}: $(cat "$out")"
  log "up: $(sinfo -h -o 'partition %P, %D node(s) %t, time limit %l') (SLURM_CONF=$CONF; smoke job:" \
      "$(sed 's/^/[/; s/$/]/' "$out" | tr '\n' ' '))"
fi
