#!/usr/bin/env python3
"""Reference Mesos v1 HTTP scheduler (JSON), standard library only.

Written from the wire description in shared/reference/mesos-v1-http-api.md
(sections 1-5) and nothing else, so that it is an independent check that a
master following that description works with a plain client.

What it does:
  1. POST a SUBSCRIBE call to /api/v1/scheduler on a dedicated HTTP/1.1
     connection and checks the streaming response (200, Mesos-Stream-Id,
     chunked transfer encoding, Content-Type application/json, no gzip).
  2. Parses the RecordIO event stream incrementally and strictly
     ("<decimal length>\\n<payload>", no separator after the payload) and
     checks that the first event is SUBSCRIBED and that a HEARTBEAT follows
     immediately.
  3. On OFFERS: ACCEPTs one offer that fits with a single LAUNCH of a shell
     command task and DECLINEs every other offer. Calls go over a second
     keep-alive connection with Mesos-Stream-Id and framework_id; 202 is
     expected.
  4. On UPDATE: prints `STATE <task_id> <state> <message>` and ACKNOWLEDGEs
     every update carrying a uuid (agent_id, task_id and uuid as received);
     updates without a uuid are not acknowledged.
  5. With --kill-after N: sends KILL N seconds after the task is RUNNING.
  6. Sends TEARDOWN before exiting.

Exit status:
  0  task reached TASK_FINISHED (without --kill-after) or TASK_KILLED
     (with --kill-after)
  1  task reached another terminal state (or an ERROR event was received)
  2  command line usage error (argparse)
  3  protocol violation (bad status code, missing header, bad RecordIO,
     wrong event order, malformed event, ...)
  4  --timeout expired
  5  connection / I/O failure
  130 interrupted (SIGINT)

Example:
  python3 reference_scheduler.py --master 127.0.0.1:5050 --cmd 'echo hi'
  python3 reference_scheduler.py --master 127.0.0.1:5050 --cmd 'sleep 30' \\
      --kill-after 1
"""

import argparse
import base64
import binascii
import getpass
import http.client
import json
import queue
import socket
import sys
import threading
import time
import urllib.parse
import uuid as uuidlib

SCHEDULER_PATH = "/api/v1/scheduler"
JSON_TYPE = "application/json"
FRAMEWORK_NAME = "reference-python-scheduler"

# Section 4.5: states the web UI (and we) treat as terminal.
TERMINAL_STATES = {
    "TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST",
    "TASK_DROPPED", "TASK_GONE", "TASK_GONE_BY_OPERATOR",
}
# Section 4.5: every state name a master may send.
KNOWN_STATES = TERMINAL_STATES | {
    "TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING",
    "TASK_UNREACHABLE", "TASK_UNKNOWN",
}
# Section 4.3: event types.
KNOWN_EVENTS = {
    "SUBSCRIBED", "OFFERS", "INVERSE_OFFERS", "RESCIND",
    "RESCIND_INVERSE_OFFER", "UPDATE", "UPDATE_OPERATION_STATUS", "MESSAGE",
    "FAILURE", "ERROR", "HEARTBEAT",
}

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_PROTOCOL = 3
EXIT_TIMEOUT = 4
EXIT_IO = 5
EXIT_INTERRUPTED = 130

MAX_RECORD_BYTES = 64 * 1024 * 1024
MAX_LENGTH_DIGITS = 20  # uint64 has at most 20 decimal digits


# --------------------------------------------------------------------------
# Output helpers

def out(line):
    print(line, flush=True)


def check(what):
    out("CHECK %s" % what)


def warn(what):
    out("WARN %s" % what)


def one_line(text):
    return str(text).replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


class SchedulerExit(Exception):
    """Terminates the run with an exit code and a message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class ProtocolViolation(SchedulerExit):
    def __init__(self, message):
        super().__init__(EXIT_PROTOCOL, "protocol violation: " + message)


class RecordIOError(Exception):
    pass


# --------------------------------------------------------------------------
# RecordIO (section 3)

class RecordIOParser:
    """Incremental, strict RecordIO decoder.

    A record is `<decimal byte length>\\n<payload>`; the length is ASCII
    digits only (no sign, no spaces, no '\\r', no leading zeros), never 0;
    the next record's length follows the payload immediately. Arbitrary
    chunking of the input is supported: feed() any number of bytes.
    """

    def __init__(self, max_record=MAX_RECORD_BYTES):
        self.buf = bytearray()
        self.expected = None  # payload length of the record being read
        self.max_record = max_record
        self.records = 0
        self.offset = 0  # stream offset of self.buf[0], for error messages

    def _describe(self, data):
        return repr(bytes(data[:40]))

    def _check_partial_length(self, data):
        for i, c in enumerate(data):
            if not 0x30 <= c <= 0x39:
                if c == 0x0D:
                    why = "carriage return in length line"
                elif c == 0x0A:
                    why = "empty length line"
                else:
                    why = "non-digit byte %r in length line" % bytes([c])
                raise RecordIOError(
                    "%s for record #%d at stream offset %d (bytes: %s)%s" % (
                        why, self.records + 1, self.offset + i,
                        self._describe(data),
                        "; a newline or separator after the previous payload?"
                        if self.records and c in (0x0A, 0x0D, 0x20, 0x2C) else ""))
        if len(data) > MAX_LENGTH_DIGITS:
            raise RecordIOError(
                "length line of record #%d longer than %d digits (bytes: %s)" % (
                    self.records + 1, MAX_LENGTH_DIGITS, self._describe(data)))

    def feed(self, data):
        self.buf += data
        records = []
        while True:
            if self.expected is None:
                nl = self.buf.find(b"\n")
                if nl == -1:
                    self._check_partial_length(self.buf)
                    break
                digits = bytes(self.buf[:nl])
                if not digits:
                    self._check_partial_length(self.buf[:nl + 1])
                self._check_partial_length(digits)
                if len(digits) > 1 and digits[:1] == b"0":
                    raise RecordIOError(
                        "length %r of record #%d has leading zeros" % (
                            digits, self.records + 1))
                length = int(digits)
                if length == 0:
                    raise RecordIOError(
                        "record #%d has length 0 (never valid)" % (self.records + 1))
                if length > self.max_record:
                    raise RecordIOError(
                        "record #%d announces %d bytes (limit %d)" % (
                            self.records + 1, length, self.max_record))
                del self.buf[:nl + 1]
                self.offset += nl + 1
                self.expected = length
            if len(self.buf) < self.expected:
                break
            payload = bytes(self.buf[:self.expected])
            del self.buf[:self.expected]
            self.offset += self.expected
            self.expected = None
            self.records += 1
            records.append(payload)
        return records

    def finish(self):
        """Called at end of stream: complains about a truncated record."""
        if self.expected is not None:
            raise RecordIOError(
                "stream ended inside record #%d: %d of %d payload bytes" % (
                    self.records + 1, len(self.buf), self.expected))
        if self.buf:
            raise RecordIOError(
                "stream ended inside the length line of record #%d (bytes: %s)" % (
                    self.records + 1, self._describe(self.buf)))


def decode_event(payload, index):
    """Turns one RecordIO payload into an Event dict (section 2/3/4.3)."""
    if b"\n" in payload:
        raise ProtocolViolation(
            "event #%d payload contains a raw newline (JSON must be single-line)" % index)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolViolation("event #%d payload is not UTF-8: %s" % (index, e))
    if not text.isascii():
        warn("event #%d payload contains non-ASCII bytes (reference section 3 "
             "recommends escaping them)" % index)
    try:
        event = json.loads(text)
    except ValueError as e:
        raise ProtocolViolation("event #%d payload is not JSON (%s): %s" % (
            index, e, one_line(text[:200])))
    if not isinstance(event, dict):
        raise ProtocolViolation("event #%d is not a JSON object: %s" % (
            index, one_line(text[:200])))
    etype = event.get("type")
    if not isinstance(etype, str):
        raise ProtocolViolation("event #%d has no string 'type': %s" % (
            index, one_line(text[:200])))
    return event


# --------------------------------------------------------------------------
# Event stream reader (runs in its own thread)

class StreamReader(threading.Thread):
    """Reads the SUBSCRIBE response body and posts items on a queue:
    ("event", event_dict, monotonic_time), ("eof", clean, None) or
    ("error", exit_code, message)."""

    def __init__(self, response, events):
        super().__init__(name="mesos-event-stream", daemon=True)
        self.response = response
        self.events = events
        self.parser = RecordIOParser()
        self.bytes_read = 0
        self.stopping = False

    def run(self):
        index = 0
        try:
            while True:
                try:
                    data = self.response.read1(65536)
                except http.client.IncompleteRead:
                    # Socket closed without the terminating zero-size chunk.
                    self.parser.finish()
                    self.events.put(("eof", False, None))
                    return
                if not data:
                    self.parser.finish()
                    self.events.put(("eof", True, None))
                    return
                self.bytes_read += len(data)
                for payload in self.parser.feed(data):
                    index += 1
                    event = decode_event(payload, index)
                    self.events.put(("event", event, time.monotonic()))
        except RecordIOError as e:
            self.events.put(("error", EXIT_PROTOCOL,
                             "protocol violation: bad RecordIO: %s" % e))
        except ProtocolViolation as e:
            self.events.put(("error", e.code, e.message))
        except (ValueError, http.client.HTTPException) as e:
            # http.client raises these on malformed chunked framing.
            if self.stopping:
                self.events.put(("eof", False, None))
            else:
                self.events.put(("error", EXIT_PROTOCOL,
                                 "protocol violation: bad chunked encoding on the "
                                 "event stream: %r" % (e,)))
        except OSError as e:
            if self.stopping:
                self.events.put(("eof", False, None))
            else:
                self.events.put(("error", EXIT_IO,
                                 "event stream connection failed: %r" % (e,)))


# --------------------------------------------------------------------------
# Helpers for messages

def scalar_sum(resources, name):
    total = 0.0
    for r in resources or []:
        if not isinstance(r, dict) or r.get("name") != name:
            continue
        if r.get("type", "SCALAR") != "SCALAR":
            continue
        try:
            total += float(r.get("scalar", {}).get("value", 0))
        except (TypeError, ValueError, AttributeError):
            pass
    return total


def id_value(obj):
    if isinstance(obj, dict) and isinstance(obj.get("value"), str):
        return obj["value"]
    return None


def parse_hostport(text):
    if "//" not in text and "://" not in text:
        text = "//" + text
    parts = urllib.parse.urlsplit(text)
    if not parts.hostname:
        raise ValueError("no host in %r" % text)
    return parts.hostname, parts.port or 5050


# --------------------------------------------------------------------------
# The scheduler

class ReferenceScheduler:
    def __init__(self, args):
        self.args = args
        self.host, self.port = parse_hostport(args.master)
        self.path = SCHEDULER_PATH
        self.start = time.monotonic()
        self.deadline = self.start + args.timeout
        self.events = queue.Queue()
        self.stream_conn = None
        self.stream_resp = None
        self.reader = None
        self.call_conn = None
        self.stream_id = None
        self.framework_id = None  # the FrameworkID object as received
        self.heartbeat_interval = 15.0
        self.event_count = 0
        self.heartbeats = 0
        self.subscribed_at = None
        self.last_event_at = None
        self.task_id = "reference-python-" + uuidlib.uuid4().hex[:12]
        self.task_agent_id = None
        self.launched = False
        self.running_at = None
        self.kill_sent = False
        self.final_state = None
        self.stream_ended = False
        self.expected_state = "TASK_KILLED" if args.kill_after is not None else "TASK_FINISHED"

    # ---- HTTP -----------------------------------------------------------

    def _connect(self, timeout):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def subscribe(self):
        framework_info = {
            "user": self.args.user or getpass.getuser(),
            "name": FRAMEWORK_NAME,
            "failover_timeout": 0.0,
        }
        body = json.dumps({"type": "SUBSCRIBE",
                           "subscribe": {"framework_info": framework_info}},
                          separators=(",", ":")).encode()
        headers = {"Content-Type": JSON_TYPE, "Accept": JSON_TYPE,
                   "Connection": "keep-alive"}
        for hop in range(4):
            out("CALL SUBSCRIBE -> http://%s:%d%s framework_info=%s" % (
                self.host, self.port, self.path, json.dumps(framework_info)))
            conn = self._connect(timeout=10)
            try:
                conn.request("POST", self.path, body=body, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise SchedulerExit(EXIT_IO, "SUBSCRIBE to %s:%d failed: %r" % (
                    self.host, self.port, e))
            if resp.status == 307 and hop < 3:
                location = resp.getheader("Location")
                resp.read()
                conn.close()
                if not location:
                    raise ProtocolViolation("SUBSCRIBE answered 307 without Location")
                parts = urllib.parse.urlsplit(location)
                if not parts.hostname:
                    raise ProtocolViolation("307 Location %r has no host" % location)
                check("SUBSCRIBE redirected (307) to %s" % location)
                self.host, self.port = parts.hostname, parts.port or 5050
                if parts.path:
                    self.path = parts.path
                continue
            if resp.status != 200:
                text = resp.read(4096).decode("utf-8", "replace")
                conn.close()
                raise ProtocolViolation(
                    "SUBSCRIBE answered %d %s (expected 200 streaming response, "
                    "reference 4.1 step 2): %s" % (
                        resp.status, resp.reason, one_line(text)))
            break
        check("SUBSCRIBE status 200")
        self.stream_conn, self.stream_resp = conn, resp

        stream_id = resp.getheader("Mesos-Stream-Id")
        if not stream_id:
            raise ProtocolViolation(
                "SUBSCRIBE response has no Mesos-Stream-Id header (reference 4.1 step 2)")
        if len(stream_id.encode()) > 128:
            raise ProtocolViolation("Mesos-Stream-Id longer than 128 bytes: %r" % stream_id)
        self.stream_id = stream_id
        try:
            uuidlib.UUID(stream_id)
            check("Mesos-Stream-Id present: %s (UUID)" % stream_id)
        except ValueError:
            check("Mesos-Stream-Id present: %s (not a UUID, treated as opaque)" % stream_id)

        te = resp.getheader("Transfer-Encoding") or ""
        if "chunked" not in [t.strip().lower() for t in te.split(",")] or not resp.chunked:
            raise ProtocolViolation(
                "SUBSCRIBE response is not chunked (Transfer-Encoding: %r; "
                "reference 1.3 requires a really chunked stream)" % te)
        if resp.getheader("Content-Length") is not None:
            raise ProtocolViolation(
                "SUBSCRIBE response has Content-Length %r besides chunked encoding "
                "(reference 1.3: no Content-Length)" % resp.getheader("Content-Length"))
        check("chunked ok (Transfer-Encoding: %s, no Content-Length)" % te)

        ctype = resp.getheader("Content-Type")
        if ctype != JSON_TYPE:
            raise ProtocolViolation(
                "SUBSCRIBE response Content-Type is %r, expected exactly %r "
                "(reference 1.3, checklist 12)" % (ctype, JSON_TYPE))
        check("content-type %s" % ctype)
        cenc = resp.getheader("Content-Encoding")
        if cenc and cenc.lower() != "identity":
            raise ProtocolViolation(
                "SUBSCRIBE stream has Content-Encoding %r (streams are never "
                "compressed, reference 1.3)" % cenc)

        # The reader thread blocks on the socket; our own deadlines are kept by
        # the main loop.
        if conn.sock is not None:
            conn.sock.settimeout(None)
        self.reader = StreamReader(resp, self.events)
        self.reader.start()

    def call(self, call_type, payload_field=None, payload=None, expect=202):
        """POSTs a non-SUBSCRIBE call on the second, keep-alive connection."""
        body = {"type": call_type, "framework_id": self.framework_id}
        if payload_field is not None:
            body[payload_field] = payload
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": JSON_TYPE, "Accept": JSON_TYPE,
                   "Mesos-Stream-Id": self.stream_id}
        for attempt in (1, 2):
            reused = self.call_conn is not None
            if self.call_conn is None:
                self.call_conn = self._connect(timeout=30)
            try:
                self.call_conn.request("POST", self.path, body=data, headers=headers)
                resp = self.call_conn.getresponse()
                text = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as e:
                # A keep-alive connection the server had already closed: the
                # request was not processed, so sending it again is safe.
                self.call_conn.close()
                self.call_conn = None
                if reused and attempt == 1:
                    warn("call connection was closed by the master (%r); reconnecting" % e)
                    continue
                raise SchedulerExit(EXIT_IO, "%s call failed: %r" % (call_type, e))
            except (OSError, http.client.HTTPException) as e:
                self.call_conn.close()
                self.call_conn = None
                raise SchedulerExit(EXIT_IO, "%s call failed: %r" % (call_type, e))
        if (resp.getheader("Connection") or "").lower() == "close":
            self.call_conn.close()
            self.call_conn = None
        out("CALL %s -> %d %s" % (call_type, resp.status, resp.reason))
        if resp.status != expect:
            raise ProtocolViolation(
                "%s answered %d %s, expected %d; request body %s; response body %s" % (
                    call_type, resp.status, resp.reason, expect, data.decode(),
                    one_line(text[:1000].decode("utf-8", "replace"))))
        if expect == 202 and text:
            raise ProtocolViolation(
                "%s answered 202 with a non-empty body (%d bytes: %s); reference "
                "checklist 4 says 202 with empty body" % (
                    call_type, len(text), one_line(text[:200].decode("utf-8", "replace"))))
        return resp

    # ---- Events ---------------------------------------------------------

    def handle_event(self, event, at):
        self.event_count += 1
        self.last_event_at = at
        etype = event["type"]
        n = self.event_count
        if self.args.verbose:
            out("EVENT #%d %s" % (n, json.dumps(event, separators=(",", ":"))))
        else:
            out("EVENT #%d %s" % (n, etype))

        if n == 1:
            if etype == "ERROR":
                msg = (event.get("error") or {}).get("message")
                raise SchedulerExit(EXIT_TASK_FAILED,
                                    "SUBSCRIBE refused with ERROR event: %s" % msg)
            if etype != "SUBSCRIBED":
                raise ProtocolViolation(
                    "first event is %s, expected SUBSCRIBED (reference 4.1 step 3)" % etype)
            self.on_subscribed(event, at)
            return
        if n == 2:
            if etype != "HEARTBEAT":
                raise ProtocolViolation(
                    "second event is %s, expected a HEARTBEAT right after SUBSCRIBED "
                    "(reference 4.1 step 4, section 3)" % etype)
            delay = at - self.subscribed_at
            limit = min(5.0, self.heartbeat_interval / 2.0)
            if delay > limit:
                raise ProtocolViolation(
                    "first HEARTBEAT came %.2fs after SUBSCRIBED (expected immediately, "
                    "reference 4.1 step 4)" % delay)
            check("heartbeat after subscribed (%.3fs later)" % delay)
            self.heartbeats += 1
            return

        if etype not in KNOWN_EVENTS:
            warn("unknown event type %r ignored" % etype)
            return
        if etype == "SUBSCRIBED":
            raise ProtocolViolation("second SUBSCRIBED event (#%d) on the same stream" % n)
        handler = getattr(self, "on_" + etype.lower())
        handler(event)

    def on_subscribed(self, event, at):
        sub = event.get("subscribed")
        if not isinstance(sub, dict):
            raise ProtocolViolation("SUBSCRIBED event without 'subscribed' object")
        fid = sub.get("framework_id")
        if id_value(fid) is None:
            raise ProtocolViolation("SUBSCRIBED without framework_id.value: %s" % sub)
        self.framework_id = {"value": fid["value"]}
        hb = sub.get("heartbeat_interval_seconds")
        if hb is not None:
            if not isinstance(hb, (int, float)) or isinstance(hb, bool) or hb <= 0:
                raise ProtocolViolation("bad heartbeat_interval_seconds %r" % (hb,))
            self.heartbeat_interval = float(hb)
        else:
            warn("SUBSCRIBED has no heartbeat_interval_seconds; assuming 15")
        mi = sub.get("master_info")
        if not isinstance(mi, dict):
            warn("SUBSCRIBED has no master_info (reference checklist 3)")
        self.subscribed_at = at
        check("first event SUBSCRIBED (framework_id %s, heartbeat_interval_seconds %r, "
              "master %s)" % (fid["value"], hb,
                              mi.get("pid") if isinstance(mi, dict) else None))

    def on_heartbeat(self, event):
        self.heartbeats += 1

    def on_offers(self, event):
        wrapper = event.get("offers")
        if not isinstance(wrapper, dict) or not isinstance(wrapper.get("offers"), list):
            raise ProtocolViolation(
                "OFFERS event must be {\"offers\":{\"offers\":[...]}} (reference 4.3): %s"
                % one_line(json.dumps(event)[:300]))
        offers = wrapper["offers"]
        if not offers:
            warn("OFFERS event with an empty offer list")
        decline = []
        for offer in offers:
            if not isinstance(offer, dict):
                raise ProtocolViolation("offer is not an object: %r" % (offer,))
            for field in ("id", "framework_id", "agent_id"):
                if id_value(offer.get(field)) is None:
                    raise ProtocolViolation("offer without %s.value: %s" % (
                        field, one_line(json.dumps(offer)[:300])))
            if not isinstance(offer.get("hostname"), str):
                raise ProtocolViolation("offer %s has no hostname (required)" % offer["id"]["value"])
            if offer["framework_id"]["value"] != self.framework_id["value"]:
                raise ProtocolViolation("offer %s is for framework %s, not %s" % (
                    offer["id"]["value"], offer["framework_id"]["value"],
                    self.framework_id["value"]))
            cpus = scalar_sum(offer.get("resources"), "cpus")
            mem = scalar_sum(offer.get("resources"), "mem")
            out("OFFER %s agent %s host %s cpus %g mem %g" % (
                offer["id"]["value"], offer["agent_id"]["value"], offer["hostname"], cpus, mem))
            if not self.launched and cpus >= self.args.cpus and mem >= self.args.mem:
                self.launch(offer)
            else:
                decline.append({"value": offer["id"]["value"]})
        if decline:
            self.call("DECLINE", "decline", {"offer_ids": decline,
                                             "filters": {"refuse_seconds": 60.0}})

    def launch(self, offer):
        agent_id = {"value": offer["agent_id"]["value"]}
        task = {
            "name": "reference-python-task",
            "task_id": {"value": self.task_id},
            "agent_id": agent_id,
            "resources": [
                {"name": "cpus", "type": "SCALAR", "scalar": {"value": self.args.cpus}},
                {"name": "mem", "type": "SCALAR", "scalar": {"value": self.args.mem}},
            ],
            "command": {"shell": True, "value": self.args.cmd},
        }
        accept = {
            "offer_ids": [{"value": offer["id"]["value"]}],
            "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task]}}],
            "filters": {"refuse_seconds": 60.0},
        }
        out("LAUNCH task %s on agent %s with offer %s: %s" % (
            self.task_id, agent_id["value"], offer["id"]["value"], self.args.cmd))
        self.call("ACCEPT", "accept", accept)
        self.launched = True
        self.task_agent_id = agent_id
        check("ACCEPT with LAUNCH answered 202")

    def on_update(self, event):
        upd = event.get("update")
        status = upd.get("status") if isinstance(upd, dict) else None
        if not isinstance(status, dict):
            raise ProtocolViolation("UPDATE event without update.status: %s" % one_line(
                json.dumps(event)[:300]))
        task_id = id_value(status.get("task_id"))
        state = status.get("state")
        if task_id is None or not isinstance(state, str):
            raise ProtocolViolation("UPDATE status lacks task_id or state (required): %s" %
                                    one_line(json.dumps(status)[:300]))
        if state not in KNOWN_STATES:
            raise ProtocolViolation("UPDATE has unknown task state %r" % state)
        message = status.get("message", "")
        out("STATE %s %s %s" % (task_id, state, one_line(message)))
        if status.get("reason") or status.get("source"):
            out("  source=%s reason=%s" % (status.get("source"), status.get("reason")))

        if "uuid" in status and status["uuid"] is not None:
            u = status["uuid"]
            if not isinstance(u, str):
                raise ProtocolViolation("status uuid is not a base64 string: %r" % (u,))
            try:
                raw = base64.b64decode(u, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolViolation("status uuid %r is not valid base64 (reference 2, "
                                        "output rule 5)" % u)
            if len(raw) != 16:
                raise ProtocolViolation("status uuid %r decodes to %d bytes, expected 16 "
                                        "(reference 4.4)" % (u, len(raw)))
            if id_value(status.get("agent_id")) is None:
                raise ProtocolViolation("update with uuid has no agent_id (reference 4.4)")
            self.call("ACKNOWLEDGE", "acknowledge", {
                "agent_id": status["agent_id"],
                "task_id": status["task_id"],
                "uuid": u,
            })
            check("acknowledged %s %s uuid %s" % (task_id, state, u))
        else:
            check("update %s %s has no uuid: not acknowledged" % (task_id, state))

        if task_id != self.task_id:
            warn("update for a task we did not launch: %s" % task_id)
            return
        if state == "TASK_RUNNING" and self.running_at is None:
            self.running_at = time.monotonic()
            if self.args.kill_after is not None:
                out("KILL scheduled in %gs" % self.args.kill_after)
        if state in TERMINAL_STATES:
            self.final_state = (state, message, status.get("reason"))

    def on_rescind(self, event):
        out("RESCIND %s" % id_value((event.get("rescind") or {}).get("offer_id")))

    def on_inverse_offers(self, event):
        out("INVERSE_OFFERS ignored")

    def on_rescind_inverse_offer(self, event):
        pass

    def on_update_operation_status(self, event):
        warn("unexpected UPDATE_OPERATION_STATUS (no operation ids were used)")

    def on_message(self, event):
        out("MESSAGE %s" % json.dumps(event.get("message")))

    def on_failure(self, event):
        f = event.get("failure") or {}
        if id_value(f.get("agent_id")) is None:
            raise ProtocolViolation("FAILURE event without agent_id (reference checklist 8)")
        out("FAILURE agent %s executor %s status %s" % (
            id_value(f.get("agent_id")), id_value(f.get("executor_id")), f.get("status")))

    def on_error(self, event):
        err = event.get("error")
        msg = err.get("message") if isinstance(err, dict) else None
        if msg is None and "message" in event:
            raise ProtocolViolation(
                "ERROR event has top-level 'message' instead of error.message "
                "(reference 4.3): %s" % one_line(json.dumps(event)))
        raise SchedulerExit(EXIT_TASK_FAILED, "master sent ERROR event: %s" % msg)

    # ---- Main loop ------------------------------------------------------

    def next_wakeup(self):
        now = time.monotonic()
        times = [self.deadline]
        if self.running_at is not None and self.args.kill_after is not None and not self.kill_sent:
            times.append(self.running_at + self.args.kill_after)
        if self.last_event_at is not None:
            times.append(self.last_event_at + 5 * self.heartbeat_interval + 1)
        return max(0.0, min(times) - now)

    def timers(self):
        now = time.monotonic()
        if now >= self.deadline:
            raise SchedulerExit(EXIT_TIMEOUT, "timeout: no %s within %gs (final state so "
                                "far: %s, launched: %s, heartbeats: %d)" % (
                                    self.expected_state, self.args.timeout,
                                    self.final_state, self.launched, self.heartbeats))
        if (self.last_event_at is not None
                and now > self.last_event_at + 5 * self.heartbeat_interval + 1):
            raise ProtocolViolation("no event (not even a HEARTBEAT) for %.0fs: 5 heartbeat "
                                    "intervals missed (reference 4.1 step 4)" % (
                                        now - self.last_event_at))
        if (self.running_at is not None and self.args.kill_after is not None
                and not self.kill_sent and self.final_state is None
                and now >= self.running_at + self.args.kill_after):
            self.kill_sent = True
            out("KILL task %s" % self.task_id)
            self.call("KILL", "kill", {"task_id": {"value": self.task_id},
                                       "agent_id": self.task_agent_id})

    def run(self):
        self.subscribe()
        while self.final_state is None:
            self.timers()
            try:
                item = self.events.get(timeout=self.next_wakeup())
            except queue.Empty:
                continue
            kind, value, extra = item
            if kind == "error":
                self.stream_ended = True
                raise SchedulerExit(value, extra)
            if kind == "eof":
                self.stream_ended = True
                raise ProtocolViolation(
                    "event stream ended (%s) after %d events before the task finished" % (
                        "terminating chunk" if value else "connection closed without the "
                        "terminating chunk", self.event_count))
            self.handle_event(value, extra)
        state, message, reason = self.final_state
        if state != self.expected_state:
            raise SchedulerExit(EXIT_TASK_FAILED, "task %s ended in %s (expected %s): "
                                "message=%r reason=%s" % (self.task_id, state,
                                                          self.expected_state, message, reason))
        if self.args.kill_after is not None and not self.kill_sent:
            raise SchedulerExit(EXIT_TASK_FAILED, "task %s was killed before we sent KILL"
                                % self.task_id)
        return "task %s reached %s" % (self.task_id, state)

    def teardown(self):
        """Sends TEARDOWN (if subscribed) and waits briefly for the stream to end."""
        if self.framework_id is None or self.stream_id is None:
            return None
        problem = None
        sent_at = time.monotonic()
        try:
            self.call("TEARDOWN")
            check("TEARDOWN answered 202")
        except SchedulerExit as e:
            problem = e
        if problem is None and not self.stream_ended:
            # Reference 4.2: TEARDOWN closes the stream.
            end = time.monotonic() + 5.0
            while time.monotonic() < end:
                try:
                    kind, value, extra = self.events.get(timeout=max(0.0, end - time.monotonic()))
                except queue.Empty:
                    break
                if kind == "event":
                    out("EVENT %s (received %s TEARDOWN was sent; not handled)" % (
                        value.get("type"), "before" if extra < sent_at else "after"))
                    continue
                if kind == "eof":
                    check("event stream closed after TEARDOWN (%s)" % (
                        "terminating chunk" if value else "connection closed"))
                else:
                    warn("event stream after TEARDOWN: %s" % extra)
                self.stream_ended = True
                break
            if not self.stream_ended:
                warn("event stream still open 5s after TEARDOWN (reference 4.2: "
                     "TEARDOWN closes the stream)")
        return problem

    def close(self):
        if self.reader is not None:
            self.reader.stopping = True
        if self.stream_conn is not None and self.stream_conn.sock is not None:
            try:
                self.stream_conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.reader is not None:
            self.reader.join(timeout=2.0)
        for conn in (self.stream_conn, self.call_conn):
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass


def main(argv=None):
    p = argparse.ArgumentParser(description="Reference Mesos v1 HTTP API scheduler "
                                "(JSON, standard library only).")
    p.add_argument("--master", required=True, help="master HOST:PORT")
    p.add_argument("--cmd", default="echo hello-from-python",
                   help="shell command of the task (CommandInfo.value, shell=true)")
    p.add_argument("--cpus", type=float, default=0.1, help="cpus for the task")
    p.add_argument("--mem", type=float, default=32.0, help="mem (MB) for the task")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="overall timeout in seconds (default 60)")
    p.add_argument("--kill-after", type=float, default=None, metavar="SECONDS",
                   help="send KILL this many seconds after TASK_RUNNING and expect "
                   "TASK_KILLED")
    p.add_argument("--user", default=None, help="FrameworkInfo.user (default: current user)")
    p.add_argument("--verbose", action="store_true", help="print every event as JSON")
    args = p.parse_args(argv)
    if args.cpus <= 0 or args.mem <= 0 or args.timeout <= 0:
        p.error("--cpus, --mem and --timeout must be positive")
    if args.kill_after is not None and args.kill_after < 0:
        p.error("--kill-after must not be negative")
    try:
        parse_hostport(args.master)
    except ValueError as e:
        p.error("bad --master: %s" % e)

    sched = ReferenceScheduler(args)
    code, message = EXIT_OK, None
    try:
        message = sched.run()
    except SchedulerExit as e:
        code, message = e.code, e.message
    except KeyboardInterrupt:
        code, message = EXIT_INTERRUPTED, "interrupted"
    try:
        problem = sched.teardown()
    except KeyboardInterrupt:
        problem = None
    finally:
        sched.close()
    if problem is not None and code == EXIT_OK:
        code, message = problem.code, "TEARDOWN failed: " + problem.message
    elif problem is not None:
        out("ERROR TEARDOWN failed too: %s" % problem.message)
    if code == EXIT_OK:
        out("RESULT OK %s" % message)
    else:
        out("RESULT FAIL (exit %d) %s" % (code, message))
        print("reference_scheduler: %s" % message, file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
