#!/usr/bin/env bash
# A throwaway single-node SLURM cluster on localhost, for tests/test_slurm.py and .ci/run:
# Debian's slurm-wlm and munge (installed with apt-get when missing), slurmctld and slurmd on
# this machine, no accounting (no slurmdbd, so job status comes from squeue).
#
#   scripts/slurm_cluster.sh start    install if needed, start munged, slurmctld, slurmd
#   scripts/slurm_cluster.sh stop     stop the daemons this script started (by their PIDs)
#   scripts/slurm_cluster.sh status   exit 0 if the cluster answers
#   scripts/slurm_cluster.sh env      print the exports that make the client commands use it
#
# Nothing is written outside $MUSBO_SLURM_DIR (default /tmp/musbo-slurm), so an existing
# /etc/slurm is never touched: the client commands (sbatch, squeue, srun, ...) are reached
# through small wrappers in $MUSBO_SLURM_DIR/bin that set SLURM_CONF. A wrapper, rather than the
# variable alone, because the executor's job step drops every SLURM_* variable, SLURM_CONF
# included, before its inner srun.
#
# Finished jobs stay visible to squeue for an hour (MinJobAge), long enough for a test to
# check them and far above the interval between the executor's status checks.
# The node has two fake GPUs (gres backed by /dev/null), so the GPU request of
# profiles/slurm/config.yaml runs unchanged, and two partitions: cpu (default) and gpu.
# Needs root (apt-get; slurmd runs as root). Exit codes: 0 ok, 2 not root, 3 cannot install,
# 4 a daemon did not come up (its log is printed).
set -euo pipefail

DIR="${MUSBO_SLURM_DIR:-/tmp/musbo-slurm}"
PORT="${MUSBO_SLURM_PORT:-16817}"          # slurmctld; slurmd uses PORT+1 (not the default 6817/8)
CLIENTS=(sbatch srun salloc squeue scancel sinfo scontrol sacct sacctmgr sshare sstat)

say() { echo "slurm_cluster: $*" >&2; }

alive() { [ -f "$DIR/run/$1.pid" ] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null; }

client_env() {
    echo "export SLURM_CONF=$DIR/etc/slurm.conf"
    echo "export PATH=$DIR/bin:\$PATH"
}

install_if_missing() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        say "cannot install slurm-wlm and munge: no apt-get on this machine"
        exit 3
    fi
    say "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >"$DIR/log/apt.log" 2>&1; then
        apt-get update -q >>"$DIR/log/apt.log" 2>&1 || true
        if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$DIR/log/apt.log" 2>&1; then
            tail -n 20 "$DIR/log/apt.log" >&2
            say "cannot install slurm-wlm and munge with apt-get (log: $DIR/log/apt.log)"
            exit 3
        fi
    fi
}

write_wrappers() {
    mkdir -p "$DIR/bin"
    for cmd in "${CLIENTS[@]}"; do
        local real
        real="$(PATH="${PATH//$DIR\/bin:/}" command -v "$cmd" || true)"
        [ -n "$real" ] || continue
        printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$DIR/etc/slurm.conf" "$real" >"$DIR/bin/$cmd"
        chmod 755 "$DIR/bin/$cmd"
    done
}

write_config() {
    local node host mem_mb
    host="$(hostname -s)"
    # The node as slurmd sees it (CPUs, sockets, cores, threads); memory: 80 % of what is free.
    node="$(slurmd -C | head -n 1 | sed -E 's/ RealMemory=[0-9]+//; s/ UpTime=.*//')"
    mem_mb=$(awk '/MemAvailable/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
    cat >"$DIR/etc/slurm.conf" <<EOF
# written by scripts/slurm_cluster.sh: one node, no accounting
ClusterName=musbo-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pidfile
SlurmdPidFile=$DIR/run/slurmd.pidfile
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
$node RealMemory=$mem_mb NodeAddr=127.0.0.1 Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$host Name=gpu File=/dev/null
NodeName=$host Name=gpu File=/dev/zero
EOF
}

start_daemon() {  # name, command...: runs it in the background and records its PID
    local name="$1"
    shift
    nohup "$@" >"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/run/$name.pid"
}

wait_for() {  # seconds, description, command...
    local seconds="$1" what="$2"
    shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    say "$what did not come up within ${seconds}s"
    return 1
}

node_idle() { [ "$("$DIR/bin/sinfo" -h -o %T 2>/dev/null | sort -u)" = "idle" ]; }

start() {
    if [ "$(id -u)" -ne 0 ]; then
        say "needs root (apt-get, and slurmd runs as root); not starting"
        exit 2
    fi
    if alive slurmctld && alive slurmd && alive munged; then
        say "already running ($DIR)"
        return 0
    fi
    stop >/dev/null 2>&1 || true
    mkdir -p "$DIR"/{etc,state,spool,run,log,munge}
    install_if_missing

    # munge: our own key, socket, pid and log; the socket's directory must be 755.
    chmod 755 "$DIR/munge"
    [ -f "$DIR/munge/munge.key" ] || mungekey -c -k "$DIR/munge/munge.key"
    chmod 600 "$DIR/munge/munge.key"
    start_daemon munged munged -F --force --socket="$DIR/munge/munge.socket" \
        --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pidfile" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    if ! wait_for 20 munged sh -c "munge -S '$DIR/munge/munge.socket' -n | unmunge -S '$DIR/munge/munge.socket'"; then
        tail -n 20 "$DIR/log/munged.out" "$DIR/log/munged.log" >&2 || true
        stop
        exit 4
    fi

    write_config
    write_wrappers
    export SLURM_CONF="$DIR/etc/slurm.conf"
    start_daemon slurmctld slurmctld -D -c -f "$SLURM_CONF"
    start_daemon slurmd slurmd -D -f "$SLURM_CONF"
    if ! wait_for 60 "the node (sinfo: idle)" node_idle; then
        "$DIR/bin/sinfo" >&2 || true
        tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" "$DIR/log/slurmctld.out" "$DIR/log/slurmd.out" >&2 || true
        stop
        exit 4
    fi
    say "running: $("$DIR/bin/sinfo" -h -o '%P %D %T %C' | tr '\n' ' ')(config $SLURM_CONF)"
    say "clients: eval \"\$(scripts/slurm_cluster.sh env)\""
}

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        if alive "$name"; then
            pid="$(cat "$DIR/run/$name.pid")"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -9 "$pid" 2>/dev/null || true
            say "stopped $name (pid $pid)"
        fi
        rm -f "$DIR/run/$name.pid"
    done
}

status() {
    alive slurmctld && alive slurmd && alive munged && node_idle_or_busy
}

node_idle_or_busy() { "$DIR/bin/sinfo" -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) client_env ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 64 ;;
esac
