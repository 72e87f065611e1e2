//! Hostile and broken clients against a real master: a SUBSCRIBE client that stops reading
//! never holds the master back (its bounded stream is dropped and the framework counts as
//! disconnected, while everyone else is served), and a framework cannot touch another's
//! tasks or stream (Mesos' 400s, or the answer it gives for a task it does not know, with no
//! effect on the other framework).

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use corral_tests::rawhttp::request;
use corral_tests::{Cluster, ClusterOptions, block_on, require_agent_host};
use corral_tools::client::{Scheduler, command_task};
use corral_wire::mesos::v1::{self, scheduler::event};
use corral_wire::mesos::{IdExt as _, is_terminal};
use corral_wire::resources::Resources;

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Subscribes over a raw socket and reads only the headers and the first chunk; returns the
/// socket (never read again), the stream id and the framework id.
fn stuck_subscriber(port: u16) -> (TcpStream, String, String) {
    let body = r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"root","name":"stuck","failover_timeout":3600}}}"#;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A small receive window, so the server's writes back up quickly.
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "POST /api/v1/scheduler HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut stream_id = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("mesos-stream-id:") {
            stream_id = v.trim().to_string();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut size = String::new();
    r.read_line(&mut size).unwrap();
    let mut first = String::new();
    r.read_line(&mut first).unwrap(); // "<len>" of the record
    let mut rec = String::new();
    r.read_line(&mut rec).unwrap();
    let fid = rec.split(r#""framework_id":{"value":""#).nth(1).unwrap().split('"').next().unwrap();
    (s, stream_id, fid.to_string())
}

#[test]
fn a_subscriber_that_stops_reading_is_dropped_and_holds_nobody_back() {
    let c = Cluster::start(ClusterOptions { agents: 0, ..Default::default() });
    let port = c.master_port;
    let (_socket, stream_id, fid) = stuck_subscriber(port);
    // Flood its stream: every explicit reconciliation of an unknown task is one UPDATE event
    // of about 300 bytes, so each call queues ~6 MB; the stream's queue holds 64 MiB.
    let tasks: Vec<String> =
        (0..20_000).map(|i| format!(r#"{{"task_id":{{"value":"ghost-{i}"}}}}"#)).collect();
    let call = format!(
        r#"{{"type":"RECONCILE","framework_id":{{"value":"{fid}"}},"reconcile":{{"tasks":[{}]}}}}"#,
        tasks.join(",")
    );
    let headers = [JSON, ("Mesos-Stream-Id", stream_id.as_str())];
    let started = Instant::now();
    let mut dropped = false;
    let mut calls = 0;
    for _ in 0..60 {
        calls += 1;
        let r = request(port, "POST", "/api/v1/scheduler", &headers, &call);
        // Everyone else is served meanwhile, promptly.
        let t = Instant::now();
        assert_eq!(request(port, "GET", "/health", &[], "").status, 200);
        assert!(t.elapsed() < Duration::from_secs(2), "/health took {:?}", t.elapsed());
        if r.status == 403 {
            // The stream was dropped: the framework is no longer subscribed.
            assert_eq!(r.body(), "Framework is not subscribed");
            dropped = true;
            break;
        }
        assert_eq!(r.status, 202);
    }
    assert!(dropped, "1,200,000 undelivered events and the stream is still attached");
    // Not before its queue's 64 MiB were used: a burst of thousands of events is no reason.
    assert!(calls >= 8, "dropped after {calls} calls of 20,000 events");
    assert!(started.elapsed() < Duration::from_secs(60));
    let st = c.state();
    let fw = st["frameworks"].as_array().unwrap().iter().find(|f| f["id"] == fid.as_str()).unwrap();
    assert_eq!(fw["connected"], false, "{fw}");
    assert!(c.logs().contains("subscriber too slow; closing its event stream"));
}

#[test]
fn a_framework_cannot_touch_another_frameworks_tasks_or_stream() {
    if !require_agent_host("a_framework_cannot_touch_another_frameworks_tasks_or_stream") {
        return;
    }
    let c = Cluster::start(ClusterOptions::default());
    let addr = c.master_addr();
    let port = c.master_port;
    block_on(async {
        let info = |name: &str| v1::FrameworkInfo {
            user: "root".into(),
            name: name.into(),
            ..Default::default()
        };
        let mut a = Scheduler::subscribe(&addr, info("a")).await.unwrap();
        let mut b = Scheduler::subscribe(&addr, info("b")).await.unwrap();
        // a runs a task.
        let offer = loop {
            let ev = a.next_event().await.unwrap().unwrap();
            if let Some(mut o) = ev.offers {
                break o.offers.remove(0);
            }
        };
        let argv = vec!["sleep".to_string(), "600".into()];
        let r = Resources::parse("cpus:0.1;mem:32").unwrap();
        let task = command_task("a-task", "a-task", &offer.agent_id, &argv, &r);
        a.launch(vec![offer.id.clone()], vec![task], None).await.unwrap();
        loop {
            let ev = a.next_event().await.unwrap().unwrap();
            if let Some(u) = ev.update {
                a.acknowledge(&u.status).await.unwrap();
                if u.status.state() == v1::TaskState::TaskRunning {
                    break;
                }
            }
        }
        // b kills a's task by id: to b it is a task it does not know (TASK_LOST), and a's
        // task runs on.
        b.kill("a-task", None).await.unwrap();
        let st = loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), b.next_event())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if ev.r#type() == event::Type::Update {
                break ev.update.unwrap().status;
            }
        };
        assert_eq!(st.task_id.value, "a-task");
        assert_eq!(st.state(), v1::TaskState::TaskLost, "{st:?}");
        // b acknowledges an update of a's task with a made-up uuid: ignored.
        let bogus = v1::TaskStatus {
            task_id: v1::TaskId::from_str("a-task"),
            agent_id: Some(offer.agent_id.clone()),
            uuid: Some(uuid::Uuid::new_v4().as_bytes().to_vec()),
            ..Default::default()
        };
        b.acknowledge(&bogus).await.unwrap();
        // b speaks as a (a's framework id, b's stream id): 400, nothing happens.
        let kill_as_a = format!(
            r#"{{"type":"KILL","framework_id":{{"value":"{}"}},"kill":{{"task_id":{{"value":"a-task"}}}}}}"#,
            a.framework_id()
        );
        let r = request(
            port,
            "POST",
            "/api/v1/scheduler",
            &[JSON, ("Mesos-Stream-Id", b.stream_id())],
            &kill_as_a,
        );
        assert_eq!(r.status, 400);
        assert!(r.body().contains("didn't match the stream ID"));
        let tasks = corral_tools::client::state(&addr).await.unwrap();
        let fa = tasks["frameworks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "a")
            .unwrap()
            .clone();
        assert_eq!(fa["tasks"][0]["state"], "TASK_RUNNING", "{fa}");
        // a's own kill works.
        a.kill("a-task", None).await.unwrap();
        loop {
            let ev = a.next_event().await.unwrap().unwrap();
            if let Some(u) = ev.update {
                a.acknowledge(&u.status).await.unwrap();
                if is_terminal(u.status.state()) {
                    assert_eq!(u.status.state(), v1::TaskState::TaskKilled);
                    break;
                }
            }
        }
        a.teardown().await.unwrap();
        b.teardown().await.unwrap();
    });
}
