//! The master's legacy (unversioned) JSON endpoints as the Mesos web UI and CLI read them:
//! `/slaves`, `/frameworks`, `/tasks` (limit, offset, order, filters), `/flags`,
//! `/state-summary`, `/roles`, `/metrics/snapshot`; each also under `/master/…`, with a
//! trailing slash, and as JSONP. One real agent and a finished task give them content.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use corral_tests::{Cluster, ClusterOptions, corral_run, require_agent_host};
use serde_json::Value;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// GET: status, content type, body.
fn get(cluster: &Cluster, path: &str) -> (u16, String, String) {
    let url = cluster.master_addr().url(path);
    runtime().block_on(async {
        let resp = reqwest::get(&url).await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, ctype, resp.text().await.unwrap())
    })
}

/// GET as JSON, checked the same under `/master/…` and with a trailing slash.
fn json(cluster: &Cluster, path: &str) -> Value {
    let (status, ctype, body) = get(cluster, path);
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(ctype, "application/json", "{path}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let (base, query) = path.split_once('?').map_or((path, ""), |(b, q)| (b, q));
    let sep = if query.is_empty() { "" } else { "?" };
    for alias in [format!("/master{base}{sep}{query}"), format!("{base}/{sep}{query}")] {
        let (s, _, b) = get(cluster, &alias);
        assert_eq!(s, 200, "{alias}: {b}");
        let other: Value = serde_json::from_str(&b).unwrap();
        // Volatile numbers aside (uptime), the same document.
        assert_eq!(keys(&other), keys(&v), "{alias} vs {path}");
    }
    v
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn legacy_endpoints_answer_in_mesos_shapes() {
    if !require_agent_host("legacy_endpoints_answer_in_mesos_shapes") {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default());
    for cmd in [["sh", "-c", "exit 0"], ["sh", "-c", "exit 3"]] {
        let out = corral_run(&cluster, &cmd);
        assert!(out.status.code().is_some(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let agent_id = cluster.agent_id(0);

    // /slaves, and its filter.
    let slaves = json(&cluster, "/slaves");
    assert_eq!(keys(&slaves), ["recovered_slaves", "slaves"]);
    let a = &slaves["slaves"][0];
    for k in [
        "id",
        "hostname",
        "port",
        "pid",
        "attributes",
        "resources",
        "used_resources",
        "offered_resources",
        "reserved_resources",
        "unreserved_resources",
        "active",
        "registered_time",
        "version",
        "capabilities",
    ] {
        assert!(a.get(k).is_some(), "/slaves agent lacks {k}: {a}");
    }
    assert_eq!(a["id"], agent_id.as_str());
    assert_eq!(a["resources"]["cpus"], 4.0);
    let filtered = json(&cluster, &format!("/slaves?slave_id={agent_id}"));
    assert_eq!(filtered["slaves"].as_array().unwrap().len(), 1);
    let none = json(&cluster, "/slaves?slave_id=nope");
    assert_eq!(none["slaves"].as_array().unwrap().len(), 0);

    // /frameworks: the two corral run frameworks tore down: completed.
    let fws = json(&cluster, "/frameworks");
    assert_eq!(keys(&fws), ["completed_frameworks", "frameworks", "unregistered_frameworks"]);
    let completed = fws["completed_frameworks"].as_array().unwrap();
    assert_eq!(completed.len(), 2, "{fws}");
    let fid = completed[0]["id"].as_str().unwrap().to_string();
    let one = json(&cluster, &format!("/frameworks?framework_id={fid}"));
    assert_eq!(one["completed_frameworks"].as_array().unwrap().len(), 1);

    // /tasks: both, newest first by default; paging and order; filters; bad input is 400.
    let tasks = json(&cluster, "/tasks");
    let list = tasks["tasks"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{tasks}");
    let states: Vec<&str> = list.iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["TASK_FAILED", "TASK_FINISHED"], "newest first");
    for k in [
        "id",
        "name",
        "framework_id",
        "executor_id",
        "slave_id",
        "state",
        "resources",
        "role",
        "statuses",
    ] {
        assert!(list[0].get(k).is_some(), "task lacks {k}: {}", list[0]);
    }
    let asc = json(&cluster, "/tasks?order=asc");
    assert_eq!(asc["tasks"][0]["state"], "TASK_FINISHED");
    let page = json(&cluster, "/tasks?limit=1&offset=1");
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(page["tasks"][0]["state"], "TASK_FINISHED");
    assert_eq!(json(&cluster, "/tasks?limit=-1")["tasks"].as_array().unwrap().len(), 2);
    let by_fw = json(&cluster, &format!("/tasks?framework_id={fid}"));
    assert_eq!(by_fw["tasks"].as_array().unwrap().len(), 1);
    let tid = list[0]["id"].as_str().unwrap();
    assert_eq!(json(&cluster, &format!("/tasks?task_id={tid}"))["tasks"][0]["id"], tid);
    for bad in ["/tasks?limit=x", "/tasks?order=sideways", "/tasks?offset=-1"] {
        assert_eq!(get(&cluster, bad).0, 400, "{bad}");
    }

    // /flags.
    let flags = json(&cluster, "/flags");
    assert!(flags["flags"].is_object() && !flags["flags"].as_object().unwrap().is_empty());

    // /state-summary: counters per agent and framework.
    let summary = json(&cluster, "/state-summary");
    assert_eq!(keys(&summary), ["frameworks", "hostname", "slaves"]);
    let s = &summary["slaves"][0];
    assert_eq!(s["TASK_FINISHED"], 1);
    assert_eq!(s["TASK_FAILED"], 1);
    assert_eq!(s["TASK_RUNNING"], 0);
    assert_eq!(s["framework_ids"].as_array().unwrap().len(), 2);
    let f = &summary["frameworks"][0];
    assert_eq!(f["slave_ids"][0], agent_id.as_str());
    assert!(f.get("tasks").is_none(), "a summary carries counts, not tasks");

    // /roles: the role of a subscribed framework, with its weight and frameworks.
    let rt = runtime();
    let sched = rt.block_on(async {
        let info = corral_wire::mesos::v1::FrameworkInfo {
            user: "root".into(),
            name: "roles-probe".into(),
            roles: vec!["analytics".into()],
            capabilities: vec![corral_wire::mesos::v1::framework_info::Capability {
                r#type: Some(
                    corral_wire::mesos::v1::framework_info::capability::Type::MultiRole as i32,
                ),
            }],
            ..Default::default()
        };
        corral_tools::client::Scheduler::subscribe(&cluster.master_addr(), info).await.unwrap()
    });
    let roles = json(&cluster, "/roles");
    let role = roles["roles"].as_array().unwrap().iter().find(|r| r["name"] == "analytics");
    let role = role.unwrap_or_else(|| panic!("no 'analytics' role: {roles}"));
    assert_eq!(role["weight"], 1.0);
    assert_eq!(role["frameworks"][0], sched.framework_id());
    assert!(role["quota"].is_object() && role["allocated"].is_object());
    drop(sched);

    // /metrics/snapshot: Mesos' names.
    let m = json(&cluster, "/metrics/snapshot");
    assert_eq!(m["master/elected"], 1.0);
    assert_eq!(m["master/slaves_active"], 1.0);
    assert_eq!(m["master/tasks_finished"], 1.0);
    assert_eq!(m["master/tasks_failed"], 1.0);
    assert_eq!(m["master/tasks_running"], 0.0);
    assert_eq!(m["master/cpus_total"], 4.0);
    assert_eq!(m["master/cpus_used"], 0.0);
    assert!(m["master/valid_status_updates"].as_f64().unwrap() >= 4.0, "{m}");
    assert!(m["master/uptime_secs"].as_f64().unwrap() > 0.0);
    // The offer path, always on: each `corral run` above was offered, accepted and ran.
    let count = |k: &str| m[k].as_f64().unwrap_or_else(|| panic!("no {k} in {m}"));
    assert!(count("allocator/mesos/allocation_run_ms/count") >= 2.0);
    assert!(count("allocator/mesos/allocation_run_ms/p99") >= 0.0);
    assert!(count("master/offer_path/offered_ms/count") >= 2.0, "{m}");
    assert!(count("master/offer_path/accepted_ms/count") >= 2.0, "{m}");
    assert!(count("master/offer_path/running_ms/count") >= 1.0, "{m}");
    assert!(
        count("master/offer_path/accepted_ms/max") >= count("master/offer_path/accepted_ms/p50")
    );
    // The same in Prometheus' text format, per framework and role.
    let (status, ctype, text) = get(&cluster, "/metrics");
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(text.contains("# TYPE corral_master_allocation_run_seconds histogram"), "{text}");
    assert!(text.contains("corral_master_offers_sent_total "), "{text}");
    let accepted = text
        .lines()
        .filter(|l| l.starts_with("corral_offer_accepted_latency_seconds_count{"))
        .count();
    assert!(accepted >= 2, "one series per framework that accepted: {text}");
    assert!(text.contains("role=\"*\""), "{text}");
    assert!(text.ends_with("# EOF\n"));

    // JSONP on every one of them.
    for path in [
        "/slaves",
        "/frameworks",
        "/tasks",
        "/flags",
        "/state-summary",
        "/roles",
        "/metrics/snapshot",
    ] {
        let (status, ctype, body) = get(&cluster, &format!("{path}?jsonp=cb"));
        assert_eq!(status, 200, "{path}");
        assert_eq!(ctype, "text/javascript", "{path}");
        assert!(body.starts_with("cb({") && body.ends_with("});"), "{path}: {body}");
    }
}
