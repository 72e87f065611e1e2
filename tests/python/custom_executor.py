#!/usr/bin/env python3
"""A custom Mesos executor over the v1 executor HTTP API, standard library only.

Started by the agent with MESOS_AGENT_ENDPOINT, MESOS_FRAMEWORK_ID and MESOS_EXECUTOR_ID in
its environment, it SUBSCRIBEs to http://$MESOS_AGENT_ENDPOINT/api/v1/executor, reads the
RecordIO event stream, and for each LAUNCH sends UPDATE TASK_RUNNING, then acts on the task's
`data`:
  finish   -> UPDATE TASK_FINISHED at once
  wait     -> stays running until KILL, then UPDATE TASK_KILLED
  message  -> MESSAGE "hello from <task>" to the scheduler, then TASK_FINISHED
A MESSAGE event from the scheduler is answered with a MESSAGE "echo:<data>". Every event is
logged to stdout (`EVENT <type> ...`), ACKNOWLEDGED ones with their task id. SHUTDOWN ends it.
"""

import base64
import http.client
import json
import os
import sys
import uuid

ENDPOINT = os.environ["MESOS_AGENT_ENDPOINT"]
FRAMEWORK = os.environ["MESOS_FRAMEWORK_ID"]
EXECUTOR = os.environ["MESOS_EXECUTOR_ID"]
HOST, PORT = ENDPOINT.rsplit(":", 1)


def log(*args):
    print(*args, flush=True)


def call(body):
    body["framework_id"] = {"value": FRAMEWORK}
    body["executor_id"] = {"value": EXECUTOR}
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=10)
    conn.request("POST", "/api/v1/executor", json.dumps(body),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    if resp.status != 202:
        log("CALL FAILED", resp.status, text)
        sys.exit(3)


def update(task_id, state):
    call({"type": "UPDATE", "update": {"status": {
        "task_id": {"value": task_id},
        "state": state,
        "source": "SOURCE_EXECUTOR",
        "executor_id": {"value": EXECUTOR},
        "uuid": base64.b64encode(uuid.uuid4().bytes).decode(),
    }}})
    log("SENT", task_id, state)


def message(data):
    call({"type": "MESSAGE", "message": {"data": base64.b64encode(data.encode()).decode()}})


def records(resp):
    """RecordIO: '<decimal length>\\n<payload>' records."""
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = resp.read1(65536)
            if not chunk:
                return
            buf += chunk
        size, rest = buf.split(b"\n", 1)
        n = int(size)
        while len(rest) < n:
            chunk = resp.read1(65536)
            if not chunk:
                return
            rest += chunk
        yield json.loads(rest[:n])
        buf = rest[n:]


def main():
    conn = http.client.HTTPConnection(HOST, int(PORT))
    body = json.dumps({"type": "SUBSCRIBE", "framework_id": {"value": FRAMEWORK},
                       "executor_id": {"value": EXECUTOR}, "subscribe": {}})
    conn.request("POST", "/api/v1/executor", body,
                 {"Content-Type": "application/json", "Accept": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        log("SUBSCRIBE FAILED", resp.status, resp.read().decode())
        return 2
    waiting = set()
    for ev in records(resp):
        t = ev.get("type")
        if t == "SUBSCRIBED":
            info = ev["subscribed"]
            log("EVENT SUBSCRIBED", info["executor_info"]["executor_id"]["value"],
                info["framework_info"]["id"]["value"], info["agent_info"]["id"]["value"])
        elif t == "LAUNCH":
            task = ev["launch"]["task"]
            tid = task["task_id"]["value"]
            what = base64.b64decode(task.get("data", "")).decode()
            log("EVENT LAUNCH", tid, what)
            update(tid, "TASK_RUNNING")
            if what == "finish":
                update(tid, "TASK_FINISHED")
            elif what == "message":
                message("hello from " + tid)
                update(tid, "TASK_FINISHED")
            else:
                waiting.add(tid)
        elif t == "KILL":
            tid = ev["kill"]["task_id"]["value"]
            log("EVENT KILL", tid)
            if tid in waiting:
                waiting.discard(tid)
                update(tid, "TASK_KILLED")
        elif t == "ACKNOWLEDGED":
            log("EVENT ACKNOWLEDGED", ev["acknowledged"]["task_id"]["value"])
        elif t == "MESSAGE":
            data = base64.b64decode(ev["message"]["data"]).decode()
            log("EVENT MESSAGE", data)
            message("echo:" + data)
        elif t == "SHUTDOWN":
            log("EVENT SHUTDOWN")
            return 0
        else:
            log("EVENT", t)
    log("STREAM ENDED")
    return 1


if __name__ == "__main__":
    sys.exit(main())
