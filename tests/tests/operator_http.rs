//! The v1 operator API (`/api/v1`) on the wire, against real processes: Mesos' statuses and
//! texts, JSON and protobuf answering the same, the SUBSCRIBE stream's chunked RecordIO
//! framing and its events, and the agent maintenance calls (drain, deactivate, reactivate,
//! mark gone) end to end with a real agent and task.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_tests::rawhttp::{Response, request, request_bytes};
use corral_tests::{Cluster, ClusterOptions, corral_bin, corral_run, require_agent_host};
use corral_wire::mesos::json;
use corral_wire::mesos::v1::master as op;
use prost::Message as _;
use serde_json::{Value, json};

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn post(port: u16, path: &str, body: &str) -> Response {
    request(port, "POST", path, &[JSON, ("Accept", "application/json")], body)
}

/// An operator call answered 200 with a JSON body.
fn call(port: u16, body: Value) -> Value {
    let r = post(port, "/api/v1", &body.to_string());
    let status = r.status;
    let text = r.body();
    assert_eq!(status, 200, "{body} -> {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// An operator call answered with `status` and an empty body.
fn call_empty(port: u16, body: Value, status: u16) {
    let r = post(port, "/api/v1", &body.to_string());
    let got = r.status;
    let text = r.body();
    assert_eq!((got, text.as_str()), (status, ""), "{body}");
}

#[test]
fn operator_api_statuses_and_texts() {
    let c = Cluster::start(ClusterOptions { agents: 0, ..Default::default() });
    let port = c.master_port;
    let r = request(port, "GET", "/api/v1", &[], "");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = request(port, "POST", "/api/v1", &[], "{}");
    assert_eq!((r.status, r.body().as_str()), (400, "Expecting 'Content-Type' to be present"));
    let r = request(port, "POST", "/api/v1", &[("Content-Type", "text/plain")], "{}");
    assert_eq!(r.status, 415);
    let r = request(port, "POST", "/api/v1", &[JSON], "{not json");
    assert_eq!(r.status, 400);
    assert!(r.body().starts_with("Failed to parse body into JSON: "));
    // An unknown call type is an unset `type`.
    let r = request(port, "POST", "/api/v1", &[JSON], r#"{"type":"FORMAT_DISKS"}"#);
    assert_eq!(
        (r.status, r.body().as_str()),
        (400, "Failed to validate master::Call: Expecting 'type' to be present")
    );
    let r = request(port, "POST", "/api/v1", &[JSON], r#"{"type":"DRAIN_AGENT"}"#);
    assert_eq!(
        (r.status, r.body().as_str()),
        (400, "Failed to validate master::Call: Expecting 'drain_agent' to be present")
    );
    let r = request(
        port,
        "POST",
        "/api/v1",
        &[JSON],
        r#"{"type":"DRAIN_AGENT","drain_agent":{"max_grace_period":{"seconds":1}}}"#,
    );
    assert_eq!(
        (r.status, r.body().as_str()),
        (
            400,
            "Failed to convert JSON into Call protobuf: Missing required fields: drain_agent.agent_id"
        )
    );
    let r = request(
        port,
        "POST",
        "/api/v1",
        &[JSON, ("Accept", "text/html")],
        r#"{"type":"GET_HEALTH"}"#,
    );
    assert_eq!(r.status, 406);
    let r = request(port, "POST", "/api/v1", &[JSON], r#"{"type":"UNKNOWN"}"#);
    assert_eq!(r.status, 501);
    let huge = "x".repeat(9 << 20);
    assert_eq!(request(port, "POST", "/api/v1", &[JSON], &huge).status, 413);
    // Calls about things that do not exist: 400, nothing changes.
    let r =
        post(port, "/api/v1", r#"{"type":"TEARDOWN","teardown":{"framework_id":{"value":"x"}}}"#);
    assert_eq!((r.status, r.body().as_str()), (400, "No framework found with ID x"));
    let r = post(
        port,
        "/api/v1",
        r#"{"type":"DEACTIVATE_AGENT","deactivate_agent":{"agent_id":{"value":"x"}}}"#,
    );
    assert_eq!((r.status, r.body().as_str()), (400, "Unknown agent"));
    let r = post(
        port,
        "/api/v1",
        r#"{"type":"UPDATE_WEIGHTS","update_weights":{"weight_infos":[{"role":"eng","weight":-1}]}}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        call(port, json!({"type": "GET_WEIGHTS"})),
        json!({"type": "GET_WEIGHTS", "get_weights": {}})
    );
}

#[test]
fn synchronous_calls_answer_in_json_and_protobuf_alike() {
    if !require_agent_host("synchronous_calls_answer_in_json_and_protobuf_alike") {
        return;
    }
    let c = Cluster::start(ClusterOptions { agents: 1, ..Default::default() });
    let port = c.master_port;
    // The exact body, on every path clients use.
    for path in ["/api/v1", "/api/v1/operator", "/master/api/v1", "/master/api/v1/"] {
        let r = post(port, path, r#"{"type":"GET_HEALTH"}"#);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body(), r#"{"type":"GET_HEALTH","get_health":{"healthy":true}}"#, "{path}");
    }
    // No Accept header: JSON.
    let r = request(port, "POST", "/api/v1", &[JSON], r#"{"type":"GET_VERSION"}"#);
    let v: Value = serde_json::from_str(&r.body()).unwrap();
    assert_eq!(v["get_version"]["version_info"]["version"], "1.11.0");

    call_empty(
        port,
        json!({"type": "UPDATE_WEIGHTS", "update_weights": {"weight_infos": [{"role": "eng", "weight": 2.5}]}}),
        200,
    );
    call_empty(
        port,
        json!({"type": "UPDATE_QUOTA", "update_quota": {"force": true, "quota_configs": [
            {"role": "eng", "guarantees": {"cpus": {"value": 1.0}}, "limits": {"cpus": {"value": 2.0}, "mem": {"value": 512.0}}}]}}),
        200,
    );
    let calls = [
        json!({"type": "GET_QUOTA"}),
        json!({"type": "GET_HEALTH"}),
        json!({"type": "GET_FLAGS"}),
        json!({"type": "GET_VERSION"}),
        json!({"type": "GET_METRICS", "get_metrics": {}}),
        json!({"type": "GET_LOGGING_LEVEL"}),
        json!({"type": "GET_STATE"}),
        json!({"type": "GET_AGENTS"}),
        json!({"type": "GET_FRAMEWORKS"}),
        json!({"type": "GET_EXECUTORS"}),
        json!({"type": "GET_OPERATIONS"}),
        json!({"type": "GET_TASKS"}),
        json!({"type": "GET_ROLES"}),
        json!({"type": "GET_WEIGHTS"}),
        json!({"type": "GET_MASTER"}),
    ];
    for body in calls {
        let from_json = call(port, body.clone());
        assert_eq!(from_json["type"], body["type"]);
        // The same call as protobuf, answered as protobuf, converted with the same mapping.
        let req: op::Call = json::from_slice(body.to_string().as_bytes()).unwrap();
        let r = request_bytes(
            port,
            "POST",
            "/api/v1",
            &[("Content-Type", "application/x-protobuf"), ("Accept", "application/x-protobuf")],
            &req.encode_to_vec(),
        );
        assert_eq!(r.status, 200, "{body}");
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        let resp = op::Response::decode(&r.body_bytes()[..]).unwrap();
        let mut from_pb: Value = serde_json::from_str(&json::to_string(&resp)).unwrap();
        let mut from_json = from_json;
        if body["type"] == "GET_METRICS" {
            // Uptime moves between the two calls; the metric names must agree.
            let names = |v: &mut Value| -> Vec<Value> {
                v["get_metrics"]["metrics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["name"].clone())
                    .collect()
            };
            assert_eq!(names(&mut from_json), names(&mut from_pb));
            continue;
        }
        assert_eq!(from_json, from_pb, "{body}");
    }

    let state = call(port, json!({"type": "GET_STATE"}));
    let agent = &state["get_state"]["get_agents"]["agents"][0];
    assert_eq!(agent["active"], true);
    assert_eq!(agent["version"], "1.11.0");
    assert!(agent["pid"].as_str().unwrap().starts_with("slave(1)@127.0.0.1:"), "{agent}");
    assert_eq!(agent["agent_info"]["id"]["value"], c.agent_id(0).as_str());
    let total = agent["total_resources"].as_array().unwrap();
    assert!(total.iter().any(|r| r["name"] == "cpus" && r["scalar"]["value"] == 4.0), "{agent}");
    let q = call(port, json!({"type": "GET_QUOTA"}));
    let config = &q["get_quota"]["status"]["configs"][0];
    assert_eq!(config["role"], "eng", "{q}");
    assert_eq!(config["guarantees"], json!({"cpus": {"value": 1.0}}), "{q}");
    assert_eq!(config["limits"]["mem"], json!({"value": 512.0}), "{q}");
    let m = call(port, json!({"type": "GET_MASTER"}));
    assert_eq!(m["get_master"]["master_info"]["port"], port);
    let roles = call(port, json!({"type": "GET_ROLES"}));
    assert_eq!(roles["get_roles"]["roles"][0], json!({"name": "eng", "weight": 2.5}));
    let metrics = call(port, json!({"type": "GET_METRICS", "get_metrics": {}}));
    let names: Vec<&str> = metrics["get_metrics"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"master/slaves_active") && names.contains(&"master/tasks_running"));

    // The logging level goes up for a while, then back.
    call_empty(
        port,
        json!({"type": "SET_LOGGING_LEVEL", "set_logging_level": {"level": 1, "duration": {"nanoseconds": 1_500_000_000u64}}}),
        200,
    );
    let level = |port| {
        call(port, json!({"type": "GET_LOGGING_LEVEL"}))["get_logging_level"]["level"].clone()
    };
    assert_eq!(level(port), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while level(port) != 0 {
        assert!(Instant::now() < deadline, "the level never went back to 0");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens an operator SUBSCRIBE and checks the stream's framing; returns it after the
/// SUBSCRIBED and HEARTBEAT records, with SUBSCRIBED parsed.
fn operator_subscribe(port: u16) -> (Response, Value) {
    let mut r = post(port, "/api/v1", r#"{"type":"SUBSCRIBE"}"#);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.header("content-length").is_none());
    assert!(r.header("mesos-stream-id").is_none(), "operator streams carry no stream id");
    let (records, bytes) = r.records(2);
    let expected_tail = b"20\n{\"type\":\"HEARTBEAT\"}";
    assert!(bytes.ends_with(expected_tail), "{:?}", String::from_utf8_lossy(&bytes));
    let first: Value = serde_json::from_slice(&records[0]).unwrap();
    assert_eq!(first["type"], "SUBSCRIBED");
    assert_eq!(first["subscribed"]["heartbeat_interval_seconds"], 15.0);
    (r, first)
}

/// Reads events until one of type `t` arrives (bounded by the stream's read timeout).
fn next_event(r: &mut Response, t: &str) -> Value {
    let mut seen = Vec::new();
    loop {
        let (records, _) = r.records(1);
        for rec in records {
            let e: Value = serde_json::from_slice(&rec).unwrap();
            if e["type"] == t {
                return e;
            }
            seen.push(e["type"].clone());
            assert!(seen.len() < 50, "no {t} in {seen:?}");
        }
    }
}

#[test]
fn subscribe_streams_the_state_then_framework_task_and_agent_events() {
    if !require_agent_host("subscribe_streams_the_state_then_framework_task_and_agent_events") {
        return;
    }
    let mut c = Cluster::start(ClusterOptions { agents: 1, ..Default::default() });
    let port = c.master_port;
    let (mut stream, first) = operator_subscribe(port);
    let agents = &first["subscribed"]["get_state"]["get_agents"]["agents"];
    assert_eq!(agents.as_array().unwrap().len(), 1, "{first}");

    let out = corral_run(&c, &["echo", "hi"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let added = next_event(&mut stream, "FRAMEWORK_ADDED");
    let name = added["framework_added"]["framework"]["framework_info"]["name"].as_str().unwrap();
    assert_eq!(name, "corral-run: echo hi");
    let task = next_event(&mut stream, "TASK_ADDED");
    assert_eq!(task["task_added"]["task"]["state"], "TASK_STAGING");
    let mut states = Vec::new();
    while states.last().map(|s: &Value| s.as_str()) != Some(Some("TASK_FINISHED")) {
        let u = next_event(&mut stream, "TASK_UPDATED");
        states.push(u["task_updated"]["state"].clone());
    }
    assert!(states.contains(&json!("TASK_RUNNING")), "{states:?}");
    let removed = next_event(&mut stream, "FRAMEWORK_REMOVED");
    assert_eq!(removed["framework_removed"]["framework_info"]["name"], name);

    c.add_agent("cpus:1;mem:256");
    let a = next_event(&mut stream, "AGENT_ADDED");
    assert_eq!(a["agent_added"]["agent"]["active"], true);
}

/// GET_AGENTS' entry for `agent`, if registered.
fn agent_entry(port: u16, agent: &str) -> Option<Value> {
    let v = call(port, json!({"type": "GET_AGENTS"}));
    v["get_agents"]["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["agent_info"]["id"]["value"] == agent).cloned())
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn drain_deactivate_reactivate_and_mark_gone_end_to_end() {
    if !require_agent_host("drain_deactivate_reactivate_and_mark_gone_end_to_end") {
        return;
    }
    let mut c = Cluster::start(ClusterOptions { agents: 1, ..Default::default() });
    let port = c.master_port;
    let agent = c.agent_id(0);
    // A framework with a long task (TERM is ignored: only the drain's grace ends it).
    let run = Command::new(corral_bin())
        .args(["run", "--master", &format!("127.0.0.1:{port}"), "--kill-grace-period", "30s", "--"])
        .args(["sh", "-c", "trap '' TERM; sleep 600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the task to run", Duration::from_secs(30), || {
        call(port, json!({"type": "GET_TASKS"}))["get_tasks"]["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["state"] == "TASK_RUNNING"))
    });
    let started = Instant::now();
    call_empty(
        port,
        json!({"type": "DRAIN_AGENT", "drain_agent": {"agent_id": {"value": agent}, "max_grace_period": {"seconds": 1}}}),
        200,
    );
    let a = agent_entry(port, &agent).unwrap();
    assert_eq!(a["deactivated"], true);
    assert_eq!(a["active"], false);
    // The task is killed after the 1 s cap (not its own 30 s grace); once its terminal update
    // is acknowledged, the agent is DRAINED.
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TASK_KILLED"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    wait_for("DRAINED", Duration::from_secs(10), || {
        agent_entry(port, &agent).unwrap()["drain_info"]["state"] == "DRAINED"
    });
    let legacy = c.state()["slaves"][0].clone();
    assert_eq!(legacy["drain_info"]["state"], "DRAINED");
    assert_eq!(legacy["deactivated"], true);
    // A drained agent gets no offers: a task cannot start while it is the only agent.
    let out = Command::new(corral_bin())
        .args(["run", "--master", &format!("127.0.0.1:{port}"), "--", "true"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let tasks = call(port, json!({"type": "GET_TASKS"}));
    assert!(tasks["get_tasks"]["tasks"].as_array().is_none_or(|t| t.is_empty()), "{tasks}");
    // Reactivated: offered again, and the waiting task runs.
    call_empty(
        port,
        json!({"type": "REACTIVATE_AGENT", "reactivate_agent": {"agent_id": {"value": agent}}}),
        200,
    );
    let a = agent_entry(port, &agent).unwrap();
    assert!(a.get("drain_info").is_none(), "{a}");
    assert_eq!(a["active"], true);
    let done = out.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stdout));
    // Deactivate, then gone: the agent is refused and exits; it is listed no more.
    call_empty(
        port,
        json!({"type": "DEACTIVATE_AGENT", "deactivate_agent": {"agent_id": {"value": agent}}}),
        200,
    );
    call_empty(
        port,
        json!({"type": "MARK_AGENT_GONE", "mark_agent_gone": {"agent_id": {"value": agent}}}),
        200,
    );
    assert!(agent_entry(port, &agent).is_none());
    wait_for("the agent to exit", Duration::from_secs(10), || {
        c.agents[0].child.try_wait().ok().flatten().is_some()
    });
    let log = c.agents[0].log_text();
    assert!(log.contains("marked gone"), "{log}");
}
