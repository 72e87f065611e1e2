#!/usr/bin/env bash
# Side by side on this machine, in one run: Slurm (Debian's slurm-wlm: slurmctld + slurmd on
# one node, with munge) against Corral, for what a batch user feels: submit → running latency
# and jobs per second.
#
#   sudo scripts/bench-slurm.sh [JOBS]      (default 200)
#
# Slurm: `sbatch --wrap` jobs that write their start time; latency = start − submit, and jobs
# per second = JOBS / (last end − first submit). Corral: `corral run` (a one-task framework
# per command, like `srun`) for latency, `corral bench launch` (one framework, a real agent) for
# launches per second, and `corral bench churn` (the master alone) for placements per second.
# Everything runs under a scratch directory and is stopped and removed at the end; Slurm uses
# proctrack/linuxproc and task/none, so it touches no cgroup.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root "$@"
JOBS=${1:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEBIAN_PACKAGES="slurm-wlm munge" install_packages
cargo build --release -p corral-tools >/dev/null 2>&1 || cargo build --release -p corral-tools
CORRAL="$ROOT/target/release/corral"

W=$(mktemp -d /var/tmp/corral-slurm-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

# --- munge and Slurm, from scratch -------------------------------------------------------
mkdir -p "$W/munge" "$W/state" "$W/spool" "$W/jobs"
chmod 700 "$W/munge"
dd if=/dev/urandom of="$W/munge/munge.key" bs=1 count=1024 status=none
chmod 400 "$W/munge/munge.key"
munged -F -f --socket="$W/munge/socket" --key-file="$W/munge/munge.key" \
  --pid-file="$W/munge/pid" --log-file="$W/munge/log" --seed-file="$W/munge/seed" \
  >"$W/munged.out" 2>&1 &
PIDS+=($!)
HOST=$(hostname -s)
CPUS=$(nproc)
cat >"$W/slurm.conf" <<EOF
ClusterName=bench
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$W/munge/socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd.pid
SlurmctldLogFile=$W/slurmctld.log
SlurmdLogFile=$W/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=bench Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:64
EOF
export SLURM_CONF="$W/slurm.conf"
for _ in $(seq 50); do [ -S "$W/munge/socket" ] && break; sleep 0.1; done
slurmctld -D -i -f "$SLURM_CONF" >"$W/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" >"$W/slurmd.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed' && break
  sleep 0.2
done
sinfo -h -o '%T' | grep -qE 'idle|mixed' || { echo "slurm did not come up:"; tail -5 "$W"/slurm*.log; exit 1; }

percentiles() { # stdin: one number per line (seconds) -> "p50 X ms, p99 Y ms"
  sort -g | awk '{a[NR]=$1} END {p50=a[int((NR+1)*0.5)]; i=int(NR*0.99+0.5); if (i<1) i=1; printf "p50 %.1f ms, p99 %.1f ms (n=%d)", p50*1000, a[i]*1000, NR}'
}

# --- Slurm: latency, one job at a time ----------------------------------------------------
: >"$W/slurm-lat"
for i in $(seq 20); do
  t0=$(now)
  id=$(sbatch --parsable -o /dev/null --wrap "date +%s.%N > $W/jobs/lat-$i")
  for _ in $(seq 600); do [ -s "$W/jobs/lat-$i" ] && break; sleep 0.01; done
  [ -s "$W/jobs/lat-$i" ] && awk -v t0="$t0" '{print $1 - t0}' "$W/jobs/lat-$i" >>"$W/slurm-lat"
done
SLURM_LAT=$(percentiles <"$W/slurm-lat")

# --- Slurm: throughput, JOBS submitted at once --------------------------------------------
t0=$(now)
for i in $(seq "$JOBS"); do
  sbatch --parsable -o /dev/null --wrap "date +%s.%N > $W/jobs/tp-$i" >/dev/null
done
t_sub=$(now)
for _ in $(seq 3000); do
  [ "$(ls "$W/jobs" | grep -c '^tp-')" -ge "$JOBS" ] && break
  sleep 0.05
done
done_n=$(ls "$W/jobs" | grep -c '^tp-' || true)
t1=$(now)
SLURM_TPUT=$(awk -v n="$done_n" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", n / (b - a)}')
SLURM_SUB=$(awk -v n="$JOBS" -v a="$t0" -v b="$t_sub" 'BEGIN {printf "%.0f", n / (b - a)}')

# --- Corral: a dev cluster for `corral run` -----------------------------------------------
PORT=$(free_port)
"$CORRAL" dev --port "$PORT" --work-dir "$W/corral-dev" >"$W/dev.out" 2>&1 &
DEV=$!
PIDS+=($DEV)
for _ in $(seq 100); do grep -q 'cluster is up' "$W/dev.out" && break; sleep 0.2; done
: >"$W/corral-lat"
for i in $(seq 20); do
  t0=$(now)
  "$CORRAL" run --master "127.0.0.1:$PORT" -- sh -c "date +%s.%N > $W/jobs/c-$i" >/dev/null 2>&1
  awk -v t0="$t0" '{print $1 - t0}' "$W/jobs/c-$i" >>"$W/corral-lat"
done
CORRAL_LAT=$(percentiles <"$W/corral-lat")
kill -INT "$DEV"
wait "$DEV" 2>/dev/null || true

LAUNCH_OUT=$("$CORRAL" bench launch --launches 100 --batch "$JOBS" --ballast-mb 0 --no-crun 2>&1)
LAUNCH_LAT=$(grep -m1 'ACCEPT -> TASK_RUNNING' <<<"$LAUNCH_OUT" | sed 's/.*: p50/p50/')
LAUNCH_TPUT=$(grep -m1 '^throughput' <<<"$LAUNCH_OUT" | sed 's/^throughput: //')
CHURN=$("$CORRAL" bench churn --agents 1000 --frameworks 10 --duration 5s 2>/dev/null | grep '^result:')

echo
echo "== side by side on $(hostname) ($(nproc) cores, $(uname -r)), $(date -u +%Y-%m-%d)"
echo "slurm-wlm $(slurmctld -V | awk '{print $2}'), one node, proctrack/linuxproc, task/none:"
echo "  submit → running (sbatch, one at a time):  $SLURM_LAT"
echo "  $JOBS jobs submitted at once: $done_n ran, $SLURM_TPUT jobs/s end to end (sbatch alone: $SLURM_SUB submissions/s)"
echo "corral (release build):"
echo "  submit → running (corral run, a one-task framework each): $CORRAL_LAT"
echo "  ACCEPT → TASK_RUNNING (corral bench launch, a real agent, one task at a time): $LAUNCH_LAT"
echo "  $JOBS tasks in one ACCEPT (corral bench launch): $LAUNCH_TPUT"
echo "  corral bench churn (the master alone, in-process): $CHURN"
