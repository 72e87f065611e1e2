//! A custom executor end to end: `tests/python/custom_executor.py` (standard library only,
//! written against the v1 executor API) is started by a real agent for the tasks a framework
//! gives it, subscribes to `/api/v1/executor`, runs two tasks from one ACCEPT, passes
//! MESSAGEs both ways, reports its tasks' updates (acknowledged back to it), is told to KILL
//! one, and is shut down once it has no task left.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use corral_tests::{Cluster, ClusterOptions, block_on, require_agent_host};
use corral_tools::client::Scheduler;
use corral_wire::mesos::IdExt as _;
use corral_wire::mesos::v1::{self, scheduler::event};
use corral_wire::resources::Resources;

const TEST: &str = "a_custom_executor_runs_tasks_and_talks_both_ways";

fn task(offer: &v1::Offer, id: &str, data: &str, executor: &v1::ExecutorInfo) -> v1::TaskInfo {
    v1::TaskInfo {
        name: id.into(),
        task_id: v1::TaskId::from_str(id),
        agent_id: offer.agent_id.clone(),
        resources: Resources::parse("cpus:0.1;mem:32").unwrap().to_mesos(None),
        executor: Some(executor.clone()),
        data: Some(data.as_bytes().to_vec()),
        ..Default::default()
    }
}

async fn next(s: &mut Scheduler) -> v1::scheduler::Event {
    tokio::time::timeout(Duration::from_secs(30), s.next_event())
        .await
        .expect("an event within 30 s")
        .unwrap()
        .unwrap()
}

/// Waits for `task` to reach `state` (acknowledging every update); returns the updates seen.
async fn wait_state(s: &mut Scheduler, task: &str, state: v1::TaskState) -> Vec<v1::TaskStatus> {
    let mut seen = Vec::new();
    loop {
        let ev = next(s).await;
        if let Some(u) = ev.update {
            s.acknowledge(&u.status).await.unwrap();
            let done = u.status.task_id.value == task && u.status.state() == state;
            seen.push(u.status);
            if done {
                return seen;
            }
        } else if let Some(o) = ev.offers {
            let ids = o.offers.into_iter().map(|o| o.id).collect();
            s.decline(ids, Some(60.0)).await.unwrap();
        }
    }
}

#[test]
fn a_custom_executor_runs_tasks_and_talks_both_ways() {
    if !require_agent_host(TEST) {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/custom_executor.py");
    let c = Cluster::start(ClusterOptions::default());
    let addr = c.master_addr();
    let executor = v1::ExecutorInfo {
        r#type: Some(v1::executor_info::Type::Custom as i32),
        executor_id: v1::ExecutorId::from_str("py-exec"),
        name: Some("python executor".into()),
        // The script travels in the command: a task's /tmp is its own, so a checkout under
        // /tmp (as CI's clean clone is) is not visible from inside the executor's container.
        command: Some(v1::CommandInfo {
            value: Some(format!(
                "exec python3 -c \"import base64; exec(base64.b64decode('{}'))\"",
                base64::engine::general_purpose::STANDARD.encode(std::fs::read(&script).unwrap())
            )),
            ..Default::default()
        }),
        resources: Resources::parse("cpus:0.1;mem:64").unwrap().to_mesos(None),
        ..Default::default()
    };
    let info =
        v1::FrameworkInfo { user: "root".into(), name: "exec-fw".into(), ..Default::default() };
    let agent = block_on(async {
        let mut s = Scheduler::subscribe(&addr, info).await.unwrap();
        let offer = loop {
            if let Some(mut o) = next(&mut s).await.offers {
                break o.offers.remove(0);
            }
        };
        let tasks = vec![
            task(&offer, "waiter", "wait", &executor),
            task(&offer, "talker", "message", &executor),
        ];
        s.launch(vec![offer.id.clone()], tasks, Some(60.0)).await.unwrap();
        // talker: RUNNING, a MESSAGE from the executor, FINISHED.
        let mut got_message = false;
        let mut finished = false;
        let mut waiter_running = false;
        while !(got_message && finished && waiter_running) {
            let ev = next(&mut s).await;
            match ev.r#type() {
                event::Type::Message => {
                    let m = ev.message.unwrap();
                    assert_eq!(m.executor_id.value, "py-exec");
                    assert_eq!(String::from_utf8_lossy(&m.data), "hello from talker");
                    got_message = true;
                }
                event::Type::Update => {
                    let st = ev.update.unwrap().status;
                    s.acknowledge(&st).await.unwrap();
                    assert_eq!(st.executor_id.as_ref().unwrap().value, "py-exec");
                    assert_eq!(st.source(), v1::task_status::Source::Executor, "{st:?}");
                    match (st.task_id.value.as_str(), st.state()) {
                        ("talker", v1::TaskState::TaskFinished) => finished = true,
                        ("waiter", v1::TaskState::TaskRunning) => waiter_running = true,
                        ("talker", v1::TaskState::TaskRunning) => {}
                        other => panic!("unexpected {other:?}: {st:?}"),
                    }
                }
                _ => {}
            }
        }
        // The scheduler's MESSAGE reaches the executor, which echoes it.
        let mut call = v1::scheduler::Call {
            framework_id: Some(v1::FrameworkId::from_str(s.framework_id())),
            r#type: Some(v1::scheduler::call::Type::Message as i32),
            ..Default::default()
        };
        call.message = Some(v1::scheduler::call::Message {
            agent_id: offer.agent_id.clone(),
            executor_id: v1::ExecutorId::from_str("py-exec"),
            data: b"ping".to_vec(),
        });
        s.call(call).await.unwrap();
        loop {
            let ev = next(&mut s).await;
            if let Some(m) = ev.message {
                assert_eq!(String::from_utf8_lossy(&m.data), "echo:ping");
                break;
            }
        }
        // KILL goes through the executor.
        s.kill("waiter", None).await.unwrap();
        let seen = wait_state(&mut s, "waiter", v1::TaskState::TaskKilled).await;
        assert_eq!(seen.last().unwrap().source(), v1::task_status::Source::Executor);
        s.teardown().await.unwrap();
        offer.agent_id.value
    });
    // The executor, out of tasks, was shut down; its log shows the whole session, the
    // acknowledgements included.
    let runs = c.dir.path().join("agent-0/slaves").join(&agent).join("frameworks");
    let fw = std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap().path();
    let run = std::fs::read_dir(fw.join("executors/py-exec/runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(run.join("stdout")).unwrap_or_default();
        if log.contains("EVENT SHUTDOWN") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for line in [
        "EVENT SUBSCRIBED py-exec",
        "EVENT LAUNCH waiter wait",
        "EVENT LAUNCH talker message",
        "EVENT ACKNOWLEDGED talker",
        "EVENT MESSAGE ping",
        "EVENT KILL waiter",
        "EVENT SHUTDOWN",
    ] {
        assert!(log.contains(line), "no '{line}' in the executor's stdout:\n{log}");
    }
}
