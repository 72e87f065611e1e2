//! End-to-end tests on real processes: a `corral master` and `corral agent`s on loopback,
//! frameworks speaking the v1 scheduler API over HTTP.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use corral_tests::{Cluster, ClusterOptions, require_agent_host};
use corral_tools::client::{MasterAddr, Scheduler, command_task};
use corral_wire::mesos::is_terminal;
use corral_wire::mesos::v1::scheduler::event;
use corral_wire::mesos::v1::{self, TaskState};
use corral_wire::resources::Resources;
use nix::sys::signal::Signal;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn framework(name: &str, caps: &[v1::framework_info::capability::Type]) -> v1::FrameworkInfo {
    v1::FrameworkInfo {
        user: "root".into(),
        name: name.into(),
        capabilities: caps
            .iter()
            .map(|c| v1::framework_info::Capability { r#type: Some(*c as i32) })
            .collect(),
        ..Default::default()
    }
}

/// Launches `n` short tasks as one framework, packing each offer; returns every terminal
/// update received per task as (state, uuid).
async fn run_short_tasks(
    master: MasterAddr,
    name: &str,
    n: usize,
) -> BTreeMap<String, Vec<(TaskState, Vec<u8>)>> {
    let mut sched = Scheduler::subscribe(&master, framework(name, &[])).await.expect("subscribe");
    let per_task = Resources::new().with_scalar("cpus", 0.1).with_scalar("mem", 16.0);
    let mut launched = 0usize;
    let mut terminal: BTreeMap<String, Vec<(TaskState, Vec<u8>)>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut done_at: Option<tokio::time::Instant> = None;
    loop {
        let wait = match done_at {
            // Keep listening a little after the last task ended: a duplicate would show.
            Some(t) => t + Duration::from_secs(2),
            None => deadline,
        };
        let ev = match tokio::time::timeout_at(wait, sched.next_event()).await {
            Ok(Some(Ok(ev))) => ev,
            Ok(other) => panic!("{name}: event stream ended: {other:?}"),
            Err(_) if done_at.is_some() => break,
            Err(_) => panic!("{name}: timed out with {} of {n} tasks terminal", terminal.len()),
        };
        match ev.r#type() {
            event::Type::Offers => {
                for offer in ev.offers.unwrap().offers {
                    let mut free = Resources::from_mesos(&offer.resources).unwrap();
                    let mut tasks = Vec::new();
                    while launched < n && free.contains(&per_task) {
                        let id = format!("{name}-{launched:03}");
                        tasks.push(command_task(
                            &id,
                            &id,
                            &offer.agent_id,
                            &["true".to_string()],
                            &per_task,
                        ));
                        free.subtract(&per_task);
                        launched += 1;
                    }
                    if tasks.is_empty() {
                        sched.decline(vec![offer.id], Some(60.0)).await.unwrap();
                    } else {
                        sched.launch(vec![offer.id], tasks, Some(0.05)).await.unwrap();
                    }
                }
            }
            event::Type::Update => {
                let status = ev.update.unwrap().status;
                sched.acknowledge(&status).await.unwrap();
                if is_terminal(status.state()) {
                    terminal
                        .entry(status.task_id.value.clone())
                        .or_default()
                        .push((status.state(), status.uuid.clone().unwrap_or_default()));
                    if terminal.len() == n && done_at.is_none() {
                        done_at = Some(tokio::time::Instant::now());
                    }
                }
            }
            _ => {}
        }
    }
    sched.teardown().await.unwrap();
    terminal
}

#[test]
fn three_agents_two_frameworks_200_tasks_each_terminal_exactly_once() {
    if !require_agent_host("three_agents_two_frameworks_200_tasks_each_terminal_exactly_once") {
        return;
    }
    let cluster = Cluster::start(ClusterOptions {
        agents: 3,
        agent_resources: "cpus:2;mem:2048;ports:[31000-31100]".into(),
        ..Default::default()
    });
    let addr = cluster.master_addr();
    let started = Instant::now();
    let (a, b) = runtime().block_on(async {
        tokio::join!(
            run_short_tasks(addr.clone(), "fw-a", 100),
            run_short_tasks(addr.clone(), "fw-b", 100)
        )
    });
    eprintln!("200 tasks on 3 agents in {:?}", started.elapsed());
    for (name, got) in [("fw-a", a), ("fw-b", b)] {
        assert_eq!(
            got.len(),
            100,
            "{name}: every task reached a terminal state\n{}",
            cluster.logs()
        );
        for (task, updates) in got {
            assert_eq!(updates.len(), 1, "{task}: exactly one terminal update, got {updates:?}");
            assert_eq!(updates[0].0, TaskState::TaskFinished, "{task}");
            assert_eq!(updates[0].1.len(), 16, "{task}: agent updates carry a uuid");
        }
    }
    // Everything was released: nothing is used on any agent.
    let st = cluster.state();
    for s in st["slaves"].as_array().unwrap() {
        assert_eq!(s["used_resources"]["cpus"], 0.0, "{s}");
    }
    let completed: usize = st["completed_frameworks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["completed_tasks"].as_array().unwrap().len())
        .sum();
    assert_eq!(completed, 200);
}

/// Launches one long task on `agent` and waits for TASK_RUNNING.
async fn launch_sleeper(sched: &mut Scheduler, agent: &str, task_id: &str) {
    let per_task = Resources::new().with_scalar("cpus", 0.1).with_scalar("mem", 16.0);
    let mut launched = false;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), sched.next_event())
            .await
            .expect("an event in 30 s")
            .expect("stream open")
            .expect("valid event");
        match ev.r#type() {
            event::Type::Offers => {
                for offer in ev.offers.unwrap().offers {
                    if !launched && offer.agent_id.value == agent {
                        let argv = ["sleep".to_string(), "600".to_string()];
                        let t = command_task(task_id, task_id, &offer.agent_id, &argv, &per_task);
                        sched.launch(vec![offer.id], vec![t], Some(3600.0)).await.unwrap();
                        launched = true;
                    } else {
                        sched.decline(vec![offer.id], Some(3600.0)).await.unwrap();
                    }
                }
            }
            event::Type::Update => {
                let s = ev.update.unwrap().status;
                sched.acknowledge(&s).await.unwrap();
                if s.task_id.value == task_id && s.state() == TaskState::TaskRunning {
                    return;
                }
                assert!(!is_terminal(s.state()), "{task_id} ended early: {s:?}");
            }
            _ => {}
        }
    }
}

/// Waits for the update of `task_id` in a state other than RUNNING and for the FAILURE
/// event naming the lost agent; returns the update and how many FAILUREs came.
async fn wait_lost(sched: &mut Scheduler, task_id: &str) -> (v1::TaskStatus, usize) {
    let mut failures = 0;
    let mut update = None;
    while update.is_none() || failures == 0 {
        let ev = tokio::time::timeout(Duration::from_secs(30), sched.next_event())
            .await
            .expect("an update and a FAILURE in 30 s")
            .expect("stream open")
            .expect("valid event");
        match ev.r#type() {
            event::Type::Failure => failures += 1,
            event::Type::Update => {
                let s = ev.update.unwrap().status;
                if s.task_id.value == task_id && s.state() != TaskState::TaskRunning {
                    update = Some(s);
                }
            }
            _ => {}
        }
    }
    (update.expect("loop ends with an update"), failures)
}

#[test]
fn sigkilled_agent_tasks_become_lost_or_unreachable_and_it_is_never_offered_again() {
    if !require_agent_host(
        "sigkilled_agent_tasks_become_lost_or_unreachable_and_it_is_never_offered_again",
    ) {
        return;
    }
    let mut cluster = Cluster::start(ClusterOptions {
        agents: 2,
        agent_ping_timeout: "500ms".into(),
        max_agent_ping_timeouts: 3,
        ..Default::default()
    });
    let victim = cluster.agent_id(0);
    let survivor = cluster.agent_id(1);
    let addr = cluster.master_addr();
    let rt = runtime();
    let (mut plain, mut aware) = rt.block_on(async {
        let mut plain = Scheduler::subscribe(&addr, framework("plain", &[])).await.unwrap();
        let mut aware = Scheduler::subscribe(
            &addr,
            framework("aware", &[v1::framework_info::capability::Type::PartitionAware]),
        )
        .await
        .unwrap();
        launch_sleeper(&mut plain, &victim, "plain-sleeper").await;
        launch_sleeper(&mut aware, &victim, "aware-sleeper").await;
        (plain, aware)
    });
    let killed_at = Instant::now();
    cluster.agents[0].stop(Signal::SIGKILL, Duration::from_secs(5));
    let (lost, unreachable) = rt.block_on(async {
        tokio::join!(wait_lost(&mut plain, "plain-sleeper"), wait_lost(&mut aware, "aware-sleeper"))
    });
    let elapsed = killed_at.elapsed();
    // 3 missed pings at 500 ms: declared between ~1 s and 2 s after the kill, plus slack.
    assert!(elapsed >= Duration::from_millis(900), "declared lost too early: {elapsed:?}");
    assert!(elapsed <= Duration::from_secs(5), "declared lost too late: {elapsed:?}");
    assert_eq!(lost.0.state(), TaskState::TaskLost, "{:?}", lost.0);
    assert_eq!(lost.0.reason(), v1::task_status::Reason::AgentRemoved);
    assert!(lost.0.uuid.is_none());
    assert_eq!(unreachable.0.state(), TaskState::TaskUnreachable, "{:?}", unreachable.0);
    assert!(unreachable.0.unreachable_time.is_some());
    assert_eq!(lost.1 + unreachable.1, 2, "each framework got one FAILURE for the agent");

    // Its resources are never offered again: revive both and watch the offers.
    rt.block_on(async {
        plain.revive().await.unwrap();
        aware.revive().await.unwrap();
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut survivor_offered = false;
        for sched in [&mut plain, &mut aware] {
            while let Ok(Some(Ok(ev))) = tokio::time::timeout_at(until, sched.next_event()).await {
                for offer in ev.offers.map(|o| o.offers).unwrap_or_default() {
                    assert_ne!(offer.agent_id.value, victim, "the lost agent was offered again");
                    survivor_offered |= offer.agent_id.value == survivor;
                    sched.decline(vec![offer.id], Some(0.2)).await.unwrap();
                }
            }
        }
        assert!(survivor_offered, "the surviving agent keeps being offered");
    });
    let st = cluster.state();
    assert_eq!(st["unreachable_slaves"], 1);
    assert!(st["slaves"].as_array().unwrap().iter().all(|s| s["id"] != victim.as_str()));
}

#[test]
fn a_task_runs_on_the_cluster_and_its_sandbox_is_readable() {
    if !require_agent_host("a_task_runs_on_the_cluster_and_its_sandbox_is_readable") {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default());
    let out = corral_tests::corral_run(&cluster, &["sh", "-c", "echo hello; echo oops >&2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "hello\n");
    assert!(stderr.contains("TASK_RUNNING"), "{stderr}");
    assert!(stderr.contains("TASK_FINISHED"), "{stderr}");
    assert!(stderr.contains("oops"), "task stderr is printed: {stderr}");
}
