#!/usr/bin/env python3
"""Drives a Corral master with pymesos, a third-party Mesos v1 HTTP scheduler library.

pymesos (https://github.com/douban/pymesos, PyPI `pymesos==0.3.15`) is used unmodified
through its public API: `MesosSchedulerDriver` plus a `Scheduler` subclass. Everything on the
wire (SUBSCRIBE and its RecordIO stream, ACCEPT, DECLINE, SUPPRESS, KILL, ACKNOWLEDGE,
RECONCILE, TEARDOWN, the automatic resubscription after the connection drops) is what pymesos
sends; this script only calls the library and checks what comes back. Create the environment
with `scripts/pyclient-venv.sh` (it prints the python to run this with).

Phases (each wait is bounded; any failure prints `RESULT FAIL: <why>` and exits 1):
  1. subscribe (FrameworkInfo with failover_timeout and checkpoint) -> registered
  2. on the first offer that fits: launch N `sleep 600` tasks and one `echo hi`, in one
     ACCEPT; then SUPPRESS; decline any later offer. Wait until the sleeps are TASK_RUNNING
     and the echo is TASK_FINISHED (updates are acknowledged by pymesos itself).
  3. KILL the first sleep -> TASK_KILLED
  4. explicit RECONCILE of every task plus one never launched: running sleeps answer
     TASK_RUNNING, the never-launched one TASK_LOST, finished/killed ones a terminal state;
     every answer (an update without uuid) has reason REASON_RECONCILIATION and source
     SOURCE_MASTER
  5. implicit RECONCILE (no tasks): the running sleeps answer TASK_RUNNING
  6. with --restart-file or --restart-stdin: prints `READY-FOR-RESTART <framework-id>`, waits
     for the harness to say the master was restarted, then waits for pymesos to resubscribe
     by itself with the same framework id (`reregistered`) and reconciles (explicit, retried
     every 3 s, then implicit) until the surviving sleeps are TASK_RUNNING. pymesos may get
     there before the agent has re-registered; a TASK_LOST answer in that window is printed
     as a `NOTE:` line (a failure with --strict-restart-reconcile), see reconcile_until's
     caller for why
  7. KILL the remaining sleeps -> TASK_KILLED; stop the driver, which sends TEARDOWN; check in
     /state that the framework is gone from `frameworks`
  Then prints `RESULT OK` and exits 0.

Restart handshake (the harness's side):
  read stdout lines until one starts with `READY-FOR-RESTART`; stop the master (SIGTERM) and
  start a new one on the same port; then either create the file given to --restart-file
  (any content) or write one line to this script's stdin (--restart-stdin). The script gives
  the harness --restart-timeout seconds for that. The agent re-registers by itself; pymesos
  notices the dropped stream and resubscribes by itself (back-off 2, 4, 8, 15 s).

Exit status: 0 all checks passed; 1 a check failed or a wait timed out; 2 usage;
  3 --timeout (the whole run) expired.

Example:
  PY=$(scripts/pyclient-venv.sh)
  $PY tests/python/thirdparty_client.py --master 127.0.0.1:5050 --restart-file /tmp/restarted
"""

import argparse
import getpass
import json
import logging
import os
import select
import socket
import sys
import threading
import time
import urllib.request

try:
    import pymesos
    from pymesos import MesosSchedulerDriver, Scheduler
except ImportError as _e:  # not the venv's python
    print("RESULT FAIL: cannot import pymesos (%s); run this with the python that "
          "scripts/pyclient-venv.sh prints" % _e, flush=True)
    sys.exit(1)

TERMINAL = {
    "TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST",
    "TASK_DROPPED", "TASK_GONE", "TASK_GONE_BY_OPERATOR",
}
FRAMEWORK_NAME = "pymesos-thirdparty-client"
TASK_CPUS = 0.1
TASK_MEM = 32.0
START = time.monotonic()


def say(msg):
    print("[pyclient %6.2fs] %s" % (time.monotonic() - START, msg), flush=True)


class Failure(Exception):
    pass


def scalar(resources, name):
    return sum(r.get("scalar", {}).get("value", 0.0)
               for r in resources if r.get("name") == name and r.get("type") == "SCALAR")


def short(status):
    parts = ["task=%s" % status.get("task_id", {}).get("value"), status.get("state")]
    for key in ("reason", "source"):
        if key in status:
            parts.append("%s=%s" % (key, status[key]))
    parts.append("uuid=%s" % ("yes" if "uuid" in status else "no"))
    if status.get("message"):
        parts.append("message=%r" % status["message"])
    return " ".join(str(p) for p in parts)


class Recorder(Scheduler):
    """The pymesos Scheduler: records callbacks; runs on pymesos's I/O thread."""

    def __init__(self, sleep_ids, echo_id):
        self.cv = threading.Condition()
        self.sleep_ids = list(sleep_ids)
        self.echo_id = echo_id
        self.registered_id = None
        self.reregistrations = 0
        self.disconnections = 0
        self.launched_on = None      # agent id
        self.updates = []            # (seq, status dict)
        self.kill_requested = set()
        self.fatal = None

    # --- helpers -------------------------------------------------------------------------
    def _fail(self, why):
        if self.fatal is None:
            self.fatal = why
        self.cv.notify_all()

    def seq(self):
        with self.cv:
            return len(self.updates)

    def latest_state(self, task_id):
        with self.cv:
            for _, st in reversed(self.updates):
                if st.get("task_id", {}).get("value") == task_id and "uuid" in st:
                    return st.get("state")
            return None

    # --- pymesos Scheduler callbacks -----------------------------------------------------
    def registered(self, driver, framework_id, master_info):
        with self.cv:
            self.registered_id = framework_id["value"]
            say("registered: framework_id=%s master=%s" % (self.registered_id, dict(master_info)))
            self.cv.notify_all()

    def reregistered(self, driver, master_info):
        with self.cv:
            self.reregistrations += 1
            say("reregistered (#%d): framework_id=%s master=%s"
                % (self.reregistrations, driver.framework_id, dict(master_info)))
            self.cv.notify_all()

    def disconnected(self, driver):
        with self.cv:
            self.disconnections += 1
            say("disconnected (#%d)" % self.disconnections)
            self.cv.notify_all()

    def processHeartBeat(self, driver):
        pass

    def resourceOffers(self, driver, offers):
        with self.cv:
            for offer in offers:
                res = offer.get("resources", [])
                n = len(self.sleep_ids) + 1
                fits = (scalar(res, "cpus") >= n * TASK_CPUS - 1e-9
                        and scalar(res, "mem") >= n * TASK_MEM)
                if self.launched_on is None and fits:
                    agent_id = offer["agent_id"]
                    tasks = [self._task(t, agent_id, "sleep 600") for t in self.sleep_ids]
                    tasks.append(self._task(self.echo_id, agent_id, "echo hi"))
                    say("offer %s on agent %s (%s): launching %d tasks"
                        % (offer["id"]["value"], agent_id["value"], offer.get("hostname"),
                           len(tasks)))
                    self.launched_on = agent_id["value"]
                    driver.launchTasks(offer["id"], tasks)
                    driver.suppressOffers()
                    say("offers suppressed")
                else:
                    say("declining offer %s" % offer["id"]["value"])
                    driver.declineOffer(offer["id"], filters={"refuse_seconds": 3600.0})
            self.cv.notify_all()

    @staticmethod
    def _task(task_id, agent_id, cmd):
        return {
            "name": task_id,
            "task_id": {"value": task_id},
            "agent_id": agent_id,
            "resources": [
                {"name": "cpus", "type": "SCALAR", "scalar": {"value": TASK_CPUS}},
                {"name": "mem", "type": "SCALAR", "scalar": {"value": TASK_MEM}},
            ],
            "command": {"value": cmd},
        }

    def offerRescinded(self, driver, offer_id):
        say("offer rescinded: %s" % offer_id.get("value"))

    def statusUpdate(self, driver, status):
        with self.cv:
            status = json.loads(json.dumps(status))  # a plain copy
            self.updates.append((len(self.updates), status))
            say("UPDATE %s" % short(status))
            tid = status.get("task_id", {}).get("value")
            state = status.get("state")
            if "uuid" in status and "agent_id" not in status:
                self._fail("update with a uuid but no agent_id: %s" % status)
            if "uuid" in status and state in TERMINAL:
                if tid in self.sleep_ids and tid not in self.kill_requested:
                    self._fail("task %s ended unexpectedly: %s" % (tid, short(status)))
                if tid == self.echo_id and state != "TASK_FINISHED":
                    self._fail("task %s did not finish: %s" % (tid, short(status)))
            self.cv.notify_all()

    def operationStatusUpdate(self, driver, status):
        say("operation status update: %s" % status)

    def frameworkMessage(self, driver, executor_id, agent_id, message):
        say("framework message from %s" % executor_id)

    def slaveLost(self, driver, agent_id):
        with self.cv:
            say("agent lost: %s" % agent_id.get("value"))
            self._fail("agent %s lost" % agent_id.get("value"))

    def executorLost(self, driver, executor_id, agent_id, status):
        say("executor lost: %s on %s status %s"
            % (executor_id.get("value"), agent_id.get("value"), status))

    def error(self, driver, message):
        with self.cv:
            say("ERROR event: %s" % message)
            self._fail("ERROR event from the master: %s" % message)


class Client(object):
    def __init__(self, args):
        self.args = args
        self.deadline = START + args.timeout
        self.sleep_ids = ["pyclient-sleep-%d" % i for i in range(args.tasks)]
        self.echo_id = "pyclient-echo"
        self.unknown_id = "pyclient-never-launched"
        self.sched = Recorder(self.sleep_ids, self.echo_id)
        self.driver = None
        self.framework_id = None

    # --- waiting -------------------------------------------------------------------------
    def wait(self, what, pred, timeout, tick=None, tick_every=3.0):
        """Waits until pred() (called under the lock) is true; tick() every tick_every s."""
        s = self.sched
        end = min(time.monotonic() + timeout, self.deadline)
        next_tick = time.monotonic() + tick_every
        with s.cv:
            while True:
                if s.fatal:
                    raise Failure("%s: %s" % (what, s.fatal))
                r = pred()
                if r:
                    return r
                now = time.monotonic()
                if now >= end:
                    raise Failure("timed out after %.0fs waiting for %s" % (timeout, what))
                if tick and now >= next_tick:
                    s.cv.release()
                    try:
                        tick()
                    finally:
                        s.cv.acquire()
                    next_tick = time.monotonic() + tick_every
                    continue
                s.cv.wait(min(0.5, end - now, max(0.05, next_tick - now)))

    def states(self, since=0, answers=None):
        """task id -> last state seen in updates after seq `since` (answers: only updates
        without a uuid if True, only with one if False)."""
        out = {}
        for seq, st in self.sched.updates:
            if seq < since:
                continue
            if answers is not None and (("uuid" not in st) != answers):
                continue
            out[st.get("task_id", {}).get("value")] = st
        return out

    # --- state endpoint (for extra checks only; the library does not read it) ------------
    def master_state(self):
        url = "http://%s/state" % self.args.master
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read().decode("utf-8"))

    # --- phases --------------------------------------------------------------------------
    def run(self):
        say("pymesos %s; master %s; %d sleep tasks + 1 echo"
            % (pymesos.__VERSION__, self.args.master, self.args.tasks))
        framework = {
            "user": self.args.user,
            "name": FRAMEWORK_NAME,
            "hostname": socket.gethostname(),
            "failover_timeout": float(self.args.failover_timeout),
            "checkpoint": True,
        }
        self.driver = MesosSchedulerDriver(
            self.sched, framework, self.args.master,
            use_addict=False, implicit_acknowledgements=True)
        self.driver.start()

        # 1. subscribe
        self.wait("SUBSCRIBED", lambda: self.sched.registered_id, 30)
        self.framework_id = self.sched.registered_id
        say("PHASE 1 OK: subscribed as %s" % self.framework_id)

        # 2. launch
        def launched():
            st = self.states(answers=False)
            ok = all(st.get(t, {}).get("state") == "TASK_RUNNING" for t in self.sleep_ids)
            return ok and st.get(self.echo_id, {}).get("state") == "TASK_FINISHED"
        self.wait("tasks RUNNING and the echo FINISHED", launched, 60)
        say("PHASE 2 OK: %s TASK_RUNNING, %s TASK_FINISHED"
            % (", ".join(self.sleep_ids), self.echo_id))

        # 3. kill one
        victim = self.sleep_ids[0]
        self.kill(victim)
        self.wait("TASK_KILLED for %s" % victim,
                  lambda: self.sched.latest_state(victim) == "TASK_KILLED", 30)
        say("PHASE 3 OK: %s TASK_KILLED" % victim)
        running = self.sleep_ids[1:]

        # 4. explicit reconciliation
        expect = {t: {"TASK_RUNNING"} for t in running}
        expect[victim] = TERMINAL
        expect[self.echo_id] = TERMINAL
        expect[self.unknown_id] = {"TASK_LOST"}
        self.reconcile_until("explicit reconciliation", sorted(expect), expect, 30)
        say("PHASE 4 OK: explicit reconciliation answered for %d tasks" % len(expect))

        # 5. implicit reconciliation
        self.reconcile_until("implicit reconciliation", [], {t: {"TASK_RUNNING"} for t in running},
                             30, forbid_running=[victim, self.echo_id, self.unknown_id])
        say("PHASE 5 OK: implicit reconciliation")

        # 6. master restart
        if self.args.restart_file or self.args.restart_stdin:
            self.master_restart(running)
            say("PHASE 6 OK: resubscribed with the same framework id after the master "
                "restart; %s still TASK_RUNNING" % ", ".join(running))
        else:
            say("PHASE 6 skipped (no --restart-file / --restart-stdin)")

        # 7. kill the rest, teardown
        for t in running:
            self.kill(t)
        self.wait("TASK_KILLED for %s" % ", ".join(running),
                  lambda: all(self.sched.latest_state(t) == "TASK_KILLED" for t in running), 30)
        say("%s TASK_KILLED" % ", ".join(running))
        self.teardown()
        say("PHASE 7 OK: remaining tasks killed, framework torn down")

    def kill(self, task_id):
        with self.sched.cv:
            self.sched.kill_requested.add(task_id)
        say("KILL %s" % task_id)
        self.driver.killTask({"value": task_id})

    def reconcile_until(self, what, task_ids, expect, timeout, forbid_running=(),
                        tolerate=()):
        """RECONCILE (repeated every 3 s, as the Mesos reconciliation docs advise) until the
        latest answer (an update without uuid) for every task in `expect` is in its expected
        set of states. Any answer in another state fails at once, except states in
        `tolerate`, which are reported and retried past."""
        since = self.sched.seq()
        tolerated = []

        def call():
            say("RECONCILE %s" % (", ".join(task_ids) if task_ids else "(implicit: no tasks)"))
            self.driver.reconcileTasks([{"task_id": {"value": t}} for t in task_ids])

        def check():
            problems = []
            del tolerated[:]
            for seq, st in self.sched.updates[since:]:
                if "uuid" in st:
                    continue
                t, state = st.get("task_id", {}).get("value"), st.get("state")
                if t in expect and state not in expect[t]:
                    if state in tolerate:
                        tolerated.append(st)
                    else:
                        problems.append("%s answered %s, expected %s"
                                        % (t, state, "/".join(sorted(expect[t]))))
                if t in forbid_running and state not in TERMINAL:
                    problems.append("%s answered %s but it has ended" % (t, state))
                if st.get("reason") != "REASON_RECONCILIATION":
                    problems.append("%s: answer has reason %s, expected REASON_RECONCILIATION"
                                    % (t, st.get("reason")))
                if st.get("source") != "SOURCE_MASTER":
                    problems.append("%s: answer has source %s, expected SOURCE_MASTER"
                                    % (t, st.get("source")))
            if problems:
                raise Failure("%s: %s" % (what, "; ".join(problems)))
            ans = self.states(since, answers=True)
            return all(ans.get(t, {}).get("state") in expect[t] for t in expect)

        call()
        self.wait(what, check, timeout, tick=call, tick_every=3.0)
        time.sleep(0.5)  # let the rest of this round arrive, to check it too
        with self.sched.cv:
            check()
            ans = self.states(since, answers=True)
        for t in sorted(set(ans) - set(expect)):
            say("%s: also answered for %s: %s" % (what, t, short(ans[t])))
        return list(tolerated)

    def wait_restart_signal(self):
        timeout = self.args.restart_timeout
        end = time.monotonic() + timeout
        if self.args.restart_file:
            path = self.args.restart_file
            while not os.path.exists(path):
                if self.sched.fatal:
                    raise Failure("while waiting for the restart: %s" % self.sched.fatal)
                if time.monotonic() >= end:
                    raise Failure("the harness did not create %s within %.0fs"
                                  % (path, timeout))
                time.sleep(0.1)
            say("restart signal: %s exists" % path)
        else:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise Failure("no line on stdin within %.0fs" % timeout)
                r, _, _ = select.select([sys.stdin], [], [], min(left, 0.5))
                if r:
                    line = sys.stdin.readline()
                    if not line:
                        raise Failure("stdin closed before the restart signal")
                    say("restart signal on stdin: %r" % line.strip())
                    return

    def master_restart(self, running):
        with self.sched.cv:
            before = self.sched.reregistrations
        print("READY-FOR-RESTART %s" % self.framework_id, flush=True)
        self.wait_restart_signal()
        self.wait("pymesos to resubscribe to the new master",
                  lambda: self.sched.reregistrations > before, self.args.resubscribe_timeout)
        if self.driver.framework_id != self.framework_id:
            raise Failure("resubscribed with framework id %s, expected %s"
                          % (self.driver.framework_id, self.framework_id))
        with self.sched.cv:
            say("resubscribed as %s (disconnections seen: %d)"
                % (self.driver.framework_id, self.sched.disconnections))
        try:
            st = self.master_state()
            fw = [f for f in st.get("frameworks", []) if f.get("id") == self.framework_id]
            say("/state at resubscription: framework %s; %d agent(s) registered" % (
                {k: fw[0].get(k) for k in ("active", "connected", "recovered",
                                           "failover_timeout")} if fw else "NOT LISTED",
                sum(1 for a in st.get("slaves", []) if a.get("active"))))
        except Exception as e:  # informational only
            say("/state after restart: %s" % e)
        # pymesos may resubscribe before the agent has re-registered with the new master;
        # until the agent is back the tasks are unknown there. A Mesos master that recovered
        # its registry does not answer for them (pymesos sends no agent_id, and some agent
        # has not re-registered yet); a master without a registry answers TASK_LOST
        # ("Task is unknown"), which a non-partition-aware framework may see revert. So:
        # retry until TASK_RUNNING, and report any interim TASK_LOST.
        interim = self.reconcile_until(
            "explicit reconciliation after the restart", running,
            {t: {"TASK_RUNNING"} for t in running}, self.args.resubscribe_timeout,
            tolerate=() if self.args.strict_restart_reconcile else ("TASK_LOST",))
        if interim:
            say("NOTE: before the agent re-registered the master answered %d reconciliation(s) "
                "with TASK_LOST: %s" % (len(interim), "; ".join(short(st) for st in interim)))
        self.reconcile_until("implicit reconciliation after the restart", [],
                             {t: {"TASK_RUNNING"} for t in running}, 30,
                             forbid_running=[self.sleep_ids[0], self.echo_id])

    def teardown(self):
        say("stopping the driver (pymesos sends TEARDOWN)")
        self.driver.stop()  # failover=False: TEARDOWN on the way out
        joiner = threading.Thread(target=self.driver.join, daemon=True)
        joiner.start()
        joiner.join(max(1.0, min(20.0, self.deadline - time.monotonic())))
        if joiner.is_alive():
            raise Failure("pymesos's I/O thread did not stop within 20s")
        self.driver = None
        end = time.monotonic() + 15
        while True:
            st = self.master_state()
            active = [f for f in st.get("frameworks", []) if f.get("id") == self.framework_id]
            done = [f for f in st.get("completed_frameworks", [])
                    if f.get("id") == self.framework_id]
            if not active:
                say("/state: framework %s not in frameworks (in completed_frameworks: %s)"
                    % (self.framework_id, "yes" if done else "no"))
                return
            if time.monotonic() >= end:
                raise Failure("framework %s still in /state frameworks 15s after TEARDOWN"
                              % self.framework_id)
            time.sleep(0.2)

    def abort(self):
        if self.driver is not None:
            try:
                self.driver.stop()  # tries TEARDOWN too, so no task is left behind
            except Exception:
                pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--master", required=True, help="HOST:PORT of the master")
    p.add_argument("--tasks", type=int, default=3, help="sleep tasks to launch (>= 2)")
    p.add_argument("--user", default=getpass.getuser(), help="FrameworkInfo.user")
    p.add_argument("--failover-timeout", type=float, default=300.0,
                   help="FrameworkInfo.failover_timeout, seconds")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--restart-file", metavar="PATH",
                   help="master-restart phase: after READY-FOR-RESTART, wait for PATH to exist")
    g.add_argument("--restart-stdin", action="store_true",
                   help="master-restart phase: after READY-FOR-RESTART, wait for a stdin line")
    p.add_argument("--restart-timeout", type=float, default=120.0,
                   help="seconds the harness has to restart the master and signal")
    p.add_argument("--resubscribe-timeout", type=float, default=60.0,
                   help="seconds for pymesos to resubscribe / tasks to reconcile after it")
    p.add_argument("--strict-restart-reconcile", action="store_true",
                   help="fail if, after the restart, an explicit reconciliation is answered "
                        "TASK_LOST before TASK_RUNNING (by default reported as a NOTE)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="limit for the whole run (exit 3)")
    p.add_argument("--verbose", action="store_true", help="pymesos DEBUG logging (stderr)")
    args = p.parse_args()
    if args.tasks < 2:
        p.error("--tasks must be at least 2")
    if args.master.startswith("http://"):
        args.master = args.master[len("http://"):].rstrip("/")

    # pymesos configures its own stderr handler for the "pymesos" logger.
    logging.getLogger("pymesos").setLevel(logging.DEBUG if args.verbose else logging.INFO)

    def watchdog():
        time.sleep(args.timeout)
        print("RESULT FAIL: the whole run exceeded --timeout %.0fs" % args.timeout, flush=True)
        os._exit(3)
    threading.Thread(target=watchdog, daemon=True).start()

    client = Client(args)
    try:
        client.run()
    except Failure as e:
        client.abort()
        print("RESULT FAIL: %s" % e, flush=True)
        return 1
    except BaseException as e:  # an exception re-raised from pymesos's I/O thread, ^C, ...
        client.abort()
        print("RESULT FAIL: %s: %s" % (type(e).__name__, e), flush=True)
        return 1
    say("done in %.1fs" % (time.monotonic() - START))
    print("RESULT OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
