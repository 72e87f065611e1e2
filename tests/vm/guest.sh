#!/bin/sh
# The guest side of the VM suite (tests/tests/vm.rs): busybox sh, run as root by the
# initramfs's /init inside a QEMU guest whose cgroup2 at /sys/fs/cgroup has every controller.
# Starts a real master and agent (strict isolation), runs the cases through `corral run`, and
# prints `test NAME ... ok (...)` or `test NAME ... FAILED: why` per case, then exactly
# `N passed, M failed`. Exits 0 only when every case passed. Every wait has a timeout, so the
# guest always reaches the summary line.

M=127.0.0.1:5050
AGENT_PORT=5051
CG=/sys/fs/cgroup/corral-agent-$AGENT_PORT
DAEMON_LOG=info,corral_master=debug,corral_agent=debug
PASSED=0
FAILED=0

# wait_until SECS CMD...: runs CMD every 0.1 s until it succeeds (0) or SECS pass (1).
wait_until() {
  _lim=$1
  shift
  read -r _up _ </proc/uptime
  _end=$((${_up%.*} + _lim))
  until "$@"; do
    read -r _up _ </proc/uptime
    [ "${_up%.*}" -ge "$_end" ] && return 1
    usleep 100000
  done
}

# Seconds (2 decimals) since the /proc/uptime value $1.
since() { awk -v t0="$1" '{printf "%.2f", $1 - t0}' /proc/uptime; }

# The last lines of a file on one line, for failure reasons.
tail_of() { tail -n "${2:-3}" "$1" 2>/dev/null | tr '\n' ' '; }

# bg_run NAME ARGS...: `corral run --master $M ARGS...` in the background. Its stdout, stderr,
# pid and exit code go to /tmp/NAME.out, .err, .pid and .rc; BG_PID is its pid.
bg_run() {
  _n=$1
  shift
  rm -f "/tmp/$_n.out" "/tmp/$_n.err" "/tmp/$_n.pid" "/tmp/$_n.rc"
  (
    sh -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "/tmp/$_n.pid" \
      corral run --master "$M" "$@" >"/tmp/$_n.out" 2>"/tmp/$_n.err"
    echo $? >"/tmp/$_n.rc.tmp" && mv "/tmp/$_n.rc.tmp" "/tmp/$_n.rc"
  ) &
  BG_PID=
  wait_until 10 test -s "/tmp/$_n.pid" || return 1
  read -r BG_PID <"/tmp/$_n.pid"
}

# wait_rc NAME SECS: waits for the `corral run` of bg_run NAME to exit; RC is its exit code.
# On timeout it is SIGKILLed and wait_rc fails.
wait_rc() {
  if wait_until "$2" test -s "/tmp/$1.rc"; then
    read -r RC <"/tmp/$1.rc"
    return 0
  fi
  RC=timeout
  kill -KILL "$(cat "/tmp/$1.pid")" 2>/dev/null
  return 1
}

# fg_run NAME SECS ARGS...: bg_run and wait_rc; on timeout it is interrupted (the task
# killed) and then SIGKILLed.
fg_run() {
  _n=$1
  _secs=$2
  shift 2
  bg_run "$_n" "$@" || return 1
  wait_until "$_secs" test -s "/tmp/$_n.rc" || kill -INT "$BG_PID" 2>/dev/null
  wait_rc "$_n" 20
}

# interrupt NAME: Ctrl-C for the `corral run` of bg_run NAME, then waits up to 20 s for it.
interrupt() {
  kill -INT "$(cat "/tmp/$1.pid")" 2>/dev/null
  wait_rc "$1" 20
}

is_running() { grep -q TASK_RUNNING "/tmp/$1.err"; }

# wait_running NAME: waits up to 60 s until the task of bg_run NAME is RUNNING; fails at once
# when its `corral run` has ended (a task that failed to start), and then interrupts it.
wait_running() {
  wait_until 60 running_or_ended "$1" && is_running "$1" && return 0
  interrupt "$1"
  return 1
}
running_or_ended() { is_running "$1" || [ -s "/tmp/$1.rc" ]; }

# The task cgroups under the agent's parent, one name a line.
task_cgroups() {
  for d in "$CG"/*; do
    [ -d "$d" ] && echo "${d##*/}"
  done
}

# new_cgroup BEFORE: the path of the one task cgroup that is not in BEFORE (a task_cgroups
# listing); fails unless there is exactly one.
new_cgroup() {
  _new=$(task_cgroups | grep -vxF "$1")
  [ -n "$_new" ] && [ "$(echo "$_new" | wc -l)" -eq 1 ] || return 1
  echo "$CG/$_new"
}

# start_in_cgroup NAME SECS ARGS...: bg_run NAME ARGS..., waits until it is RUNNING, then SECS
# more, and sets `dir` to its (single new) task cgroup; on failure WHY is set and the task is
# interrupted.
start_in_cgroup() {
  _name=$1
  _settle=$2
  shift 2
  _before=$(task_cgroups)
  bg_run "$_name" "$@" || fail "corral run did not start" || return 1
  wait_running "$_name" || fail "not RUNNING: $(tail_of "/tmp/$_name.err")" || return 1
  sleep "$_settle"
  dir=$(new_cgroup "$_before") || {
    interrupt "$_name"
    fail "no single new task cgroup under $CG: $(task_cgroups | tr '\n' ' ')"
    return 1
  }
}

stat_field() { awk -v k="$2" '$1 == k {print $2}' "$1"; }

# run_case NAME: runs case_NAME; it sets WHY when it fails and may set NOTE when it passes.
run_case() {
  WHY=
  NOTE=
  read -r _t0 _ </proc/uptime
  if "case_$1"; then
    PASSED=$((PASSED + 1))
    echo "test $1 ... ok (${NOTE:+$NOTE, }$(since "$_t0")s)"
  else
    FAILED=$((FAILED + 1))
    echo "test $1 ... FAILED: ${WHY:-no reason given} ($(since "$_t0")s)"
    echo "--- last 30 lines of the agent log"
    tail -n 30 /tmp/agent.log
    echo "---"
  fi
}

fail() {
  WHY="$*"
  return 1
}

case_memory_oom() {
  fg_run oom 120 --mem 32 --shell -- 'tail /dev/zero' ||
    fail "corral run did not end in 120 s: $(tail_of /tmp/oom.err)" || return 1
  [ "$RC" != 0 ] || fail "exit code 0: $(tail_of /tmp/oom.err)" || return 1
  for w in TASK_FAILED REASON_CONTAINER_LIMITATION_MEMORY 'Memory limit exceeded'; do
    grep -q "$w" /tmp/oom.err || fail "no '$w' in stderr: $(tail_of /tmp/oom.err)" || return 1
  done
  NOTE="exit $RC"
}

# The agent's metrics with the memory controller this host lacks: the task memory_oom ran is
# counted as OOM-killed by the eBPF programs (its last sample stays in /metrics), and a task
# holding 24 MiB shows it in memory.current.
metrics_have() {
  wget -q -O /tmp/metrics.txt "http://127.0.0.1:$AGENT_PORT/metrics" &&
    awk -v fam="$1" -v min="$2" 'index($1, fam "{") == 1 && $1 ~ /corral-run-/ && $NF + 0 >= min + 0 {f = 1} END {exit !f}' /tmp/metrics.txt
}

case_telemetry_memory_and_oom() {
  wget -q -O /tmp/agent-state.json "http://127.0.0.1:$AGENT_PORT/state" ||
    fail "GET /state failed" || return 1
  grep -q '"source":"ebpf"' /tmp/agent-state.json ||
    fail "telemetry is not from eBPF: $(grep -o '"fallback_reason":"[^"]*"' /tmp/agent-state.json)" || return 1
  metrics_have corral_task_oom_kills_total 1 ||
    fail "no task with an OOM kill in /metrics: $(grep oom_kills /tmp/metrics.txt | head -3)" || return 1
  bg_run hold --mem 64 --shell -- 'dd if=/dev/zero bs=24M count=1 2>/dev/null | sleep 60' ||
    fail "corral run did not start" || return 1
  wait_until 60 is_running hold || fail "not running: $(tail_of /tmp/hold.err)" || return 1
  if ! wait_until 20 metrics_have corral_task_memory_usage_bytes 25165824; then
    fail "no task using 24 MiB in /metrics: $(grep memory_usage /tmp/metrics.txt | head -3)"
    interrupt hold
    return 1
  fi
  metrics_have corral_task_runqueue_latency_seconds_count 1 ||
    fail "no run-queue waits counted: $(grep runqueue_latency_seconds_count /tmp/metrics.txt | head -2)" || {
      interrupt hold
      return 1
    }
  interrupt hold
  NOTE="eBPF on $(uname -r)"
}

case_limit_files() {
  # The task reads its own cgroup's interface files: what the agent wrote for --cpus 0.5
  # --mem 64 and --pids-max 64.
  fg_run files 60 --cpus 0.5 --mem 64 --shell -- \
    'd=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); for f in cpu.max cpu.weight memory.max memory.swap.max memory.oom.group pids.max; do echo "$f=$(cat $d/$f)"; done' ||
    fail "corral run did not end in 60 s: $(tail_of /tmp/files.err)" || return 1
  [ "$RC" = 0 ] || fail "exit $RC: $(tail_of /tmp/files.err)" || return 1
  for want in 'cpu.max=50000 100000' cpu.weight=50 memory.max=67108864 memory.swap.max=0 \
    memory.oom.group=1 pids.max=64; do
    grep -qxF "$want" /tmp/files.out || fail "no '$want' in: $(tail_of /tmp/files.out 6)" ||
      return 1
  done
  NOTE="$(tr '\n' ' ' </tmp/files.out)"
}

limit_hit() { [ "$(stat_field "$1/pids.events" max)" -gt 0 ] 2>/dev/null; }

case_pids_fork_bomb() {
  # First a harmless task, to see that task cgroups get a pids limit: the bomb without one
  # would take the whole guest down.
  before=$(task_cgroups)
  bg_run probe --shell -- 'sleep 100' || fail "corral run did not start" || return 1
  wait_running probe || fail "probe task not RUNNING: $(tail_of /tmp/probe.err)" ||
    return 1
  dir=$(new_cgroup "$before")
  limit=$(cat "$dir/pids.max" 2>/dev/null)
  limited=$dir
  if [ "$limit" = max ]; then # a limit on the agent's parent cgroup contains the bomb too
    limit=$(cat "$CG/pids.max" 2>/dev/null)
    limited=$CG
  fi
  interrupt probe || fail "probe task did not end in 20 s after SIGINT" || return 1
  [ -n "$dir" ] || fail "no single new task cgroup under $CG: $(task_cgroups | tr '\n' ' ')" ||
    return 1
  case "$limit" in
  '' | *[!0-9]*) fail "task cgroup pids.max is '$limit', not 64: not running the bomb"; return 1 ;;
  esac
  [ "$limit" -le 64 ] || fail "pids.max is $limit, want <= 64: not running the bomb" || return 1
  wait_until 20 sh -c "[ ! -d '$dir' ]"

  start_in_cgroup bomb 3 --mem 64 --shell -- 'bomb() { bomb | bomb & }; bomb; sleep 1000' ||
    return 1
  [ "$limited" = "$CG" ] || limited=$dir
  # The bomb forks at the task's 0.1 cpus, slowly under TCG: give it time to reach the limit.
  wait_until 30 limit_hit "$limited"
  cur=$(cat "$dir/pids.current")
  hits=$(stat_field "$limited/pids.events" max)
  fg_run alive 90 --shell -- 'echo alive'
  alive_rc=$RC
  interrupt bomb
  bomb_rc=$RC
  [ "${cur:-999}" -le 64 ] || fail "pids.current $cur > 64" || return 1
  [ "${hits:-0}" -gt 0 ] || fail "pids.events max is '$hits', want > 0 (pids.current $cur)" ||
    return 1
  [ "$alive_rc" = 0 ] && grep -qx alive /tmp/alive.out ||
    fail "a second task during the bomb: exit $alive_rc, stdout '$(tail_of /tmp/alive.out)'," \
      "stderr: $(tail_of /tmp/alive.err)" || return 1
  [ "$bomb_rc" != timeout ] || fail "corral run did not end in 20 s after SIGINT" || return 1
  grep -q TASK_KILLED /tmp/bomb.err || fail "no TASK_KILLED: $(tail_of /tmp/bomb.err)" ||
    return 1
  NOTE="pids.current=$cur, pids.events max=$hits, second task ran"
}

case_cpu_half() {
  start_in_cgroup spin 1 --cpus 0.5 --shell -- 'while :; do :; done' || return 1
  u0=$(stat_field "$dir/cpu.stat" usage_usec)
  read -r t0 _ </proc/uptime
  sleep 3
  u1=$(stat_field "$dir/cpu.stat" usage_usec)
  read -r t1 _ </proc/uptime
  interrupt spin
  spin_rc=$RC
  ratio=$(awk -v u0="$u0" -v u1="$u1" -v t0="$t0" -v t1="$t1" \
    'BEGIN {printf "%.3f", (u1 - u0) / 1e6 / (t1 - t0)}')
  wall=$(awk -v t0="$t0" -v t1="$t1" 'BEGIN {printf "%.2f", t1 - t0}')
  awk -v r="$ratio" 'BEGIN {exit !(r >= 0.45 && r <= 0.55)}' ||
    fail "cpu usage $ratio of wall over ${wall}s, want 0.45..0.55" || return 1
  [ "$spin_rc" != timeout ] || fail "corral run did not end in 20 s after SIGINT" || return 1
  NOTE="cpu usage $ratio of wall over ${wall}s"
}

case_kill_grace_then_cgroup_kill() {
  bg_run grace --kill-grace-period 1s --shell -- 'trap "" TERM; while :; do sleep 1; done' ||
    fail "corral run did not start" || return 1
  wait_running grace || fail "not RUNNING: $(tail_of /tmp/grace.err)" || return 1
  sleep 1 # RUNNING comes with the exec: give the shell time to ignore SIGTERM
  read -r t0 _ </proc/uptime
  interrupt grace || fail "corral run did not end in 20 s after SIGINT" || return 1
  took=$(since "$t0")
  grep -q TASK_KILLED /tmp/grace.err || fail "no TASK_KILLED: $(tail_of /tmp/grace.err)" ||
    return 1
  awk -v s="$took" 'BEGIN {exit !(s >= 1.0 && s < 10)}' ||
    fail "killed ${took}s after SIGINT, want 1..10 s (grace 1s)" || return 1
  grep -q 'grace period over' /tmp/agent.log ||
    fail "no 'grace period over' in the agent log" || return 1
  NOTE="killed ${took}s after SIGINT"
}

case_pid_namespace() {
  fg_run pidns 60 --shell -- 'echo pid=$$; ls /proc' ||
    fail "corral run did not end in 60 s: $(tail_of /tmp/pidns.err)" || return 1
  [ "$RC" = 0 ] || fail "exit $RC: $(tail_of /tmp/pidns.err)" || return 1
  pid=$(sed -n 's/^pid=//p' /tmp/pidns.out)
  [ "$pid" = 1 ] || [ "$pid" = 2 ] || fail "the task's shell has pid '$pid', want 1 or 2" ||
    return 1
  pids=$(grep -E '^[0-9]+$' /tmp/pidns.out | tr '\n' ' ')
  pids=${pids% }
  [ -n "$pids" ] || fail "no numeric entries in the task's /proc: $(tail_of /tmp/pidns.out 5)" ||
    return 1
  for p in $pids; do
    [ "$p" -le 5 ] || fail "the task sees pid $p in /proc: $pids" || return 1
  done
  NOTE="pid=$pid, /proc: $pids"
}

case_unknown_user() {
  fg_run nouser 60 --user no-such-user -- true ||
    fail "corral run did not end in 60 s: $(tail_of /tmp/nouser.err)" || return 1
  [ "$RC" != 0 ] || fail "exit code 0" || return 1
  grep -q TASK_FAILED /tmp/nouser.err || fail "no TASK_FAILED: $(tail_of /tmp/nouser.err)" ||
    return 1
  grep -q no-such-user /tmp/nouser.err ||
    fail "stderr does not name the user: $(tail_of /tmp/nouser.err)" || return 1
  NOTE="exit $RC"
}

no_task_cgroups() { [ -z "$(task_cgroups)" ]; }

case_no_leftovers() {
  wait_until 10 no_task_cgroups ||
    fail "left under $CG: $(task_cgroups | tr '\n' ' ')" || return 1
}

# stop PID SECS: SIGTERM, then SIGKILL if it is still there after SECS.
stop() {
  kill -TERM "$1" 2>/dev/null || return 0
  (
    sleep "$2"
    kill -KILL "$1" 2>/dev/null
  ) &
  _watchdog=$!
  wait "$1"
  kill "$_watchdog" 2>/dev/null
}

echo "== cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)"
echo "== $(corral --version)"

# Whether process $1 exists and is not a zombie.
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# The agent is registered and active, or one of the daemons is gone (no use waiting).
agent_ready() {
  alive "$MASTER_PID" && alive "$AGENT_PID" || return 0
  corral agents --master "$M" 2>/dev/null | grep -qw active
}

# State lives under /var/lib/corral (the defaults), not /tmp: each task gets its own /tmp.
setup() {
  corral certs init --dir /var/lib/corral/tls >/tmp/certs.log 2>&1 ||
    fail "corral certs init: $(tail_of /tmp/certs.log)" || return 1
  CORRAL_LOG=$DAEMON_LOG corral master --ip 127.0.0.1 --port 5050 \
    --work-dir /var/lib/corral/master --tls-dir /var/lib/corral/tls >/tmp/master.log 2>&1 &
  MASTER_PID=$!
  CORRAL_LOG=$DAEMON_LOG corral agent --master "$M" --port "$AGENT_PORT" \
    --work-dir /var/lib/corral/agent --tls-dir /var/lib/corral/tls --cgroup-root /sys/fs/cgroup \
    --isolation strict --pids-max 64 --resources 'cpus:2;mem:768' >/tmp/agent.log 2>&1 &
  AGENT_PID=$!
  wait_until 60 agent_ready
  alive "$MASTER_PID" || fail "the master exited: $(tail_of /tmp/master.log)" || return 1
  alive "$AGENT_PID" || fail "the agent exited: $(tail_of /tmp/agent.log)" || return 1
  agent_ready || fail "the agent did not register in 60 s" || return 1
  corral agents --master "$M"
}

read -r T0 _ </proc/uptime
if setup; then
  echo "== cluster up after $(since "$T0")s"
  for c in limit_files memory_oom telemetry_memory_and_oom pids_fork_bomb cpu_half kill_grace_then_cgroup_kill \
    pid_namespace unknown_user no_leftovers; do
    run_case "$c"
  done
else
  FAILED=$((FAILED + 1))
  echo "test cluster_setup ... FAILED: $WHY"
  echo "--- last 30 lines of the master log"
  tail -n 30 /tmp/master.log 2>/dev/null
  echo "--- last 30 lines of the agent log"
  tail -n 30 /tmp/agent.log 2>/dev/null
  echo "---"
fi
[ -n "$AGENT_PID" ] && stop "$AGENT_PID" 20
[ -n "$MASTER_PID" ] && stop "$MASTER_PID" 10
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ] && [ "$PASSED" -gt 0 ]
