//! Agent restarts that lose nothing, on real processes: `kill -9` of an agent while its tasks
//! print, a restart a second later, and then every task, every line and every status update
//! accounted for. Also a corrupted checkpoint under `--recover strict` and `non-strict`.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_tests::{Cluster, ClusterOptions, require_agent_host};
use corral_tools::client::{Scheduler, command_task};
use corral_wire::mesos::is_terminal;
use corral_wire::mesos::v1::scheduler::event;
use corral_wire::mesos::v1::{self, TaskState};
use corral_wire::resources::Resources;

const TASKS: usize = 20;
/// Lines per task, one every 10 ms.
const LINES: usize = 300;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn framework() -> v1::FrameworkInfo {
    v1::FrameworkInfo {
        user: "root".into(),
        name: "printer".into(),
        // Unreachable agents would mean TASK_UNREACHABLE rather than TASK_LOST: neither may come.
        capabilities: vec![v1::framework_info::Capability {
            r#type: Some(v1::framework_info::capability::Type::PartitionAware as i32),
        }],
        ..Default::default()
    }
}

/// Every file named `name` below `dir`.
fn files_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            files_named(&p, name, out);
        } else if e.file_name() == name {
            out.push(p);
        }
    }
}

/// Container id -> (init pid, task pid) for every container under the agent's cgroup.
fn container_pids(cluster: &Cluster) -> BTreeMap<String, (i32, Option<i32>)> {
    let work = cluster.dir.path().join("agent-0");
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(&cluster.agent_cgroups[0]) else { return out };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let cid = e.file_name().to_string_lossy().into_owned();
        let init: i32 = std::fs::read_to_string(work.join("containers").join(&cid).join("init"))
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
        let task = procs.lines().filter_map(|l| l.parse::<i32>().ok()).find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sh")
        });
        out.insert(cid, (init, task));
    }
    out
}

#[test]
fn kill_9_of_the_agent_loses_no_task_no_line_and_no_update() {
    if !require_agent_host("kill_9_of_the_agent_loses_no_task_no_line_and_no_update") {
        return;
    }
    let mut cluster = Cluster::start(ClusterOptions {
        agents: 1,
        agent_resources: "cpus:4;mem:4096;ports:[31000-31100]".into(),
        ..Default::default()
    });
    let addr = cluster.master_addr();
    let agent_id = cluster.agent_id(0);
    let rt = runtime();
    let mut sched = rt.block_on(Scheduler::subscribe(&addr, framework())).unwrap();
    let script =
        format!("i=0; while [ $i -lt {LINES} ]; do echo \"line $i\"; i=$((i+1)); sleep 0.01; done");
    let per_task = Resources::new().with_scalar("cpus", 0.1).with_scalar("mem", 32.0);
    // Task id -> states in arrival order.
    let mut states: BTreeMap<String, Vec<TaskState>> = BTreeMap::new();
    let mut launched = 0;
    let mut killed_at: Option<Instant> = None;
    let mut before: BTreeMap<String, (i32, Option<i32>)> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    rt.block_on(async {
        loop {
            let running = states.values().filter(|s| s.contains(&TaskState::TaskRunning)).count();
            // Once all run: kill -9 the agent, then bring it back a second later.
            if running == TASKS && killed_at.is_none() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                before = container_pids(&cluster);
                assert_eq!(before.len(), TASKS, "one container per task");
                cluster.kill_agent(0);
                killed_at = Some(Instant::now());
                tokio::time::sleep(Duration::from_secs(1)).await;
                for (cid, (init, _)) in &before {
                    assert!(
                        Path::new(&format!("/proc/{init}")).exists(),
                        "container {cid}: its init survives the agent"
                    );
                }
                cluster.start_agent_again(0);
                // Taken over: the same inits and the same task processes in the same cgroups.
                let log = cluster.agents[0].log.clone();
                let registered = Instant::now() + Duration::from_secs(20);
                while !std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("registered agent_id")
                {
                    assert!(Instant::now() < registered, "no re-registration\n{}", cluster.logs());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_eq!(container_pids(&cluster), before, "same pids, same cgroups");
            }
            let terminal = states.values().filter(|s| s.iter().any(|st| is_terminal(*st))).count();
            if terminal == TASKS {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = match tokio::time::timeout(left, sched.next_event()).await {
                Ok(Some(Ok(ev))) => ev,
                other => panic!("event stream: {other:?}\n{}", cluster.logs()),
            };
            match ev.r#type() {
                event::Type::Offers => {
                    for offer in ev.offers.unwrap().offers {
                        let mut free = Resources::from_mesos(&offer.resources).unwrap();
                        let mut tasks = Vec::new();
                        while launched < TASKS && free.contains(&per_task) {
                            let id = format!("printer-{launched:02}");
                            let argv = ["sh".to_string(), "-c".to_string(), script.clone()];
                            tasks.push(command_task(&id, &id, &offer.agent_id, &argv, &per_task));
                            free.subtract(&per_task);
                            launched += 1;
                        }
                        if tasks.is_empty() {
                            sched.decline(vec![offer.id], Some(60.0)).await.unwrap();
                        } else {
                            sched.launch(vec![offer.id], tasks, None).await.unwrap();
                        }
                    }
                }
                event::Type::Update => {
                    let status = ev.update.unwrap().status;
                    sched.acknowledge(&status).await.unwrap();
                    states.entry(status.task_id.value.clone()).or_default().push(status.state());
                }
                _ => {}
            }
        }
    });
    let logs = cluster.logs();
    assert!(killed_at.is_some(), "the agent was killed while its tasks ran");
    // The same agent, re-registered: one agent, the same id.
    let st = cluster.state();
    let slaves = st["slaves"].as_array().unwrap();
    assert_eq!(slaves.len(), 1, "{st}");
    assert_eq!(slaves[0]["id"], agent_id.as_str(), "re-registered under its id");
    assert!(logs.contains("taking over the container"), "{logs}");
    for (task, seen) in &states {
        assert!(
            !seen.iter().any(|s| matches!(
                s,
                TaskState::TaskLost
                    | TaskState::TaskGone
                    | TaskState::TaskUnreachable
                    | TaskState::TaskFailed
                    | TaskState::TaskDropped
            )),
            "{task}: {seen:?}\n{logs}"
        );
        assert!(seen.contains(&TaskState::TaskFinished), "{task}: {seen:?}\n{logs}");
        // At least once, in order: nothing after the terminal update but its duplicates.
        let first_terminal = seen.iter().position(|s| is_terminal(*s)).unwrap();
        assert!(
            seen[first_terminal..].iter().all(|s| *s == TaskState::TaskFinished),
            "{task}: {seen:?}"
        );
    }
    // The same processes went on in the same cgroups: the inits recorded their task's end in
    // place; no container was started twice.
    let runs: BTreeSet<String> = {
        let mut v = Vec::new();
        files_named(&cluster.dir.path().join("agent-0").join("slaves"), "stdout", &mut v);
        v.iter()
            .map(|p| p.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let containers: BTreeSet<String> = before.keys().cloned().collect();
    assert_eq!(runs, containers, "each task ran in the one container it had before the kill");
    // Every line of every task, exactly once, in order, across the agent's death.
    let expected: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    let mut outs = Vec::new();
    files_named(&cluster.dir.path().join("agent-0").join("slaves"), "stdout", &mut outs);
    assert_eq!(outs.len(), TASKS);
    for out in outs {
        let got = std::fs::read_to_string(&out).unwrap();
        if got != expected {
            let lines: Vec<&str> = got.lines().collect();
            panic!(
                "{}: {} lines, expected {LINES}; first difference at line {:?}",
                out.display(),
                lines.len(),
                lines.iter().enumerate().find(|(i, l)| **l != format!("line {i}")).map(|(i, _)| i)
            );
        }
    }
    rt.block_on(sched.teardown()).unwrap();
}

#[test]
fn processes_keep_their_pid_and_cgroup_across_the_restart() {
    if !require_agent_host("processes_keep_their_pid_and_cgroup_across_the_restart") {
        return;
    }
    // The fallback engine takes over output just the same.
    let mut cluster = Cluster::start(ClusterOptions {
        agent_flags: vec!["--task-output-engine".into(), "poll-splice".into()],
        ..Default::default()
    });
    let agent_state = corral_tests::block_on(corral_tools::client::get_json(&format!(
        "http://127.0.0.1:{}/state",
        cluster.agent_ports[0]
    )))
    .unwrap();
    assert_eq!(agent_state["task_output"]["engine"], "poll+splice", "{agent_state}");
    let addr = cluster.master_addr();
    let rt = runtime();
    let mut sched = rt.block_on(Scheduler::subscribe(&addr, framework())).unwrap();
    let running = rt.block_on(launch_sleepers(&mut sched, 3));
    let before = container_pids(&cluster);
    assert_eq!(before.len(), 3);
    assert!(before.values().all(|(init, task)| *init > 0 && task.is_some()), "{before:?}");
    cluster.kill_agent(0);
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_agent_again(0);
    // Re-registered: the master shows the agent active with its three tasks running.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = cluster.state();
        let log = std::fs::read_to_string(&cluster.agents[0].log).unwrap_or_default();
        if log.contains("registered agent_id") {
            let tasks = st["frameworks"][0]["tasks"].as_array().cloned().unwrap_or_default();
            assert_eq!(tasks.len(), 3, "{st}");
            assert!(tasks.iter().all(|t| t["state"] == "TASK_RUNNING"), "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "no re-registration\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(container_pids(&cluster), before, "same containers, same inits, same tasks");
    // Their usage is sampled again by the new agent.
    let stats_url = format!("http://127.0.0.1:{}/monitor/statistics", cluster.agent_ports[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = corral_tests::block_on(corral_tools::client::get_json(&stats_url)).unwrap();
        let n = stats.as_array().map_or(0, Vec::len);
        if n == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "adopted tasks in /monitor/statistics: {stats}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The adopted tasks can still be killed, and their containers go.
    rt.block_on(async {
        for id in &running {
            sched.kill(id, None).await.unwrap();
        }
        let mut killed = 0;
        while killed < 3 {
            let ev = sched.next_event().await.unwrap().unwrap();
            if ev.r#type() == event::Type::Update {
                let status = ev.update.unwrap().status;
                sched.acknowledge(&status).await.unwrap();
                if status.state() == TaskState::TaskKilled {
                    killed += 1;
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !container_pids(&cluster).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(container_pids(&cluster).is_empty(), "containers removed after the kill");
    rt.block_on(sched.teardown()).unwrap();
}

/// Launches `n` tasks that sleep, acknowledging updates; returns once all run.
async fn launch_sleepers(sched: &mut Scheduler, n: usize) -> BTreeSet<String> {
    let per_task = Resources::new().with_scalar("cpus", 0.1).with_scalar("mem", 32.0);
    let argv = ["sh".to_string(), "-c".to_string(), "sleep 600".to_string()];
    let mut running = BTreeSet::new();
    let mut launched = 0;
    while running.len() < n {
        let ev = sched.next_event().await.unwrap().unwrap();
        match ev.r#type() {
            event::Type::Offers => {
                for offer in ev.offers.unwrap().offers {
                    let tasks: Vec<_> = (launched..n)
                        .map(|i| {
                            let id = format!("sleeper-{i}");
                            command_task(&id, &id, &offer.agent_id, &argv, &per_task)
                        })
                        .collect();
                    launched = n;
                    if tasks.is_empty() {
                        sched.decline(vec![offer.id], None).await.unwrap();
                    } else {
                        sched.launch(vec![offer.id], tasks, None).await.unwrap();
                    }
                }
            }
            event::Type::Update => {
                let status = ev.update.unwrap().status;
                sched.acknowledge(&status).await.unwrap();
                // TASK_STARTING comes first when the task is slow to start (a loaded host).
                if status.state() == TaskState::TaskStarting {
                    continue;
                }
                assert_eq!(status.state(), TaskState::TaskRunning);
                running.insert(status.task_id.value.clone());
            }
            _ => {}
        }
    }
    running
}

#[test]
fn a_flipped_byte_stops_a_strict_agent_and_costs_a_non_strict_one_just_that_task() {
    if !require_agent_host(
        "a_flipped_byte_stops_a_strict_agent_and_costs_a_non_strict_one_just_that_task",
    ) {
        return;
    }
    let (mut cluster, rt, mut sched) = cluster_and_framework();
    let running = rt.block_on(launch_sleepers(&mut sched, 3));
    let before = container_pids(&cluster);
    cluster.kill_agent(0);
    // One byte of one task's checkpoint flipped, as a bad disk would.
    let mut ckpts = Vec::new();
    files_named_suffix(&cluster.dir.path().join("agent-0").join("meta"), ".ckpt", &mut ckpts);
    ckpts.retain(|p| p.file_name().unwrap() != "agent.ckpt");
    ckpts.sort();
    assert_eq!(ckpts.len(), 3, "{ckpts:?}");
    let bad = ckpts[1].clone();
    let bad_task = bad.file_stem().unwrap().to_string_lossy().into_owned();
    let mut bytes = std::fs::read(&bad).unwrap();
    let at = bytes.len() - 7;
    bytes[at] ^= 0x10;
    std::fs::write(&bad, bytes).unwrap();

    // Strict (the default): the agent refuses to start and says which file.
    cluster.start_agent_again(0);
    let status = cluster.agents[0].child.wait().unwrap();
    let log = cluster.agents[0].log_text();
    assert!(!status.success(), "a strict agent does not start on a corrupt checkpoint\n{log}");
    assert!(log.contains(&bad.display().to_string()) && log.contains("checksum"), "{log}");
    for (init, _) in before.values() {
        assert!(Path::new(&format!("/proc/{init}")).exists(), "a refused start touches no task");
    }

    // Non-strict: that task is skipped (its container removed), the other two are taken over.
    let mut args = cluster.agent_args(0).to_vec();
    args.extend(["--recover".to_string(), "non-strict".to_string()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.agents[0] = corral_tests::spawn("agent-0-non-strict", cluster.dir.path(), &argv);
    let mut gone = None;
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while gone.is_none() {
            let ev = tokio::time::timeout_at(deadline, sched.next_event())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if ev.r#type() == event::Type::Update {
                let status = ev.update.unwrap().status;
                sched.acknowledge(&status).await.unwrap();
                if status.task_id.value != bad_task {
                    // At least once: a RUNNING whose ack the killed agent never saw, again.
                    assert!(
                        matches!(status.state(), TaskState::TaskStarting | TaskState::TaskRunning),
                        "only the skipped task changes: {status:?}"
                    );
                    continue;
                }
                gone = Some(status.state());
            }
        }
    });
    assert_eq!(gone, Some(TaskState::TaskGone), "the master learns the skipped task is gone");
    let after = container_pids(&cluster);
    assert_eq!(after.len(), 2, "{after:?}");
    for (cid, pids) in &after {
        assert_eq!(before.get(cid), Some(pids), "the other tasks keep their processes");
    }
    assert_eq!(running.len(), 3);
    rt.block_on(sched.teardown()).unwrap();
}

/// Every file whose name ends with `suffix` below `dir`.
fn files_named_suffix(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            files_named_suffix(&p, suffix, out);
        } else if e.file_name().to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
}

#[test]
fn after_a_reboot_nothing_is_adopted_and_the_agent_registers_anew() {
    if !require_agent_host("after_a_reboot_nothing_is_adopted_and_the_agent_registers_anew") {
        return;
    }
    let (mut cluster, rt, mut sched) = cluster_and_framework();
    rt.block_on(launch_sleepers(&mut sched, 1));
    let old_id = cluster.agent_id(0);
    let before = container_pids(&cluster);
    cluster.kill_agent(0);
    // The checkpoint now says another boot: what a restart after a reboot finds.
    let work = cluster.dir.path().join("agent-0");
    let a = corral_agent::checkpoint::AgentCheckpoint {
        agent_id: old_id.clone(),
        boot_id: "00000000-0000-0000-0000-000000000000".into(),
    };
    corral_agent::checkpoint::write_agent(&work, &a).unwrap();
    cluster.start_agent_again(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_id = loop {
        let st = cluster.state();
        let ids: Vec<String> = st["slaves"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["active"] == true)
            .map(|s| s["id"].as_str().unwrap().to_string())
            .filter(|id| *id != old_id)
            .collect();
        if let Some(id) = ids.first() {
            break id.clone();
        }
        assert!(Instant::now() < deadline, "no new registration\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(new_id, old_id);
    for (init, _) in before.values() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(*init) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(*init), "the stale container is removed");
    }
    let moved = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("meta."));
    assert!(moved, "the old checkpoints are moved aside");
    rt.block_on(sched.teardown()).unwrap();
}

#[test]
fn a_task_that_ends_while_the_agent_is_down_keeps_its_exit_status_and_output() {
    if !require_agent_host(
        "a_task_that_ends_while_the_agent_is_down_keeps_its_exit_status_and_output",
    ) {
        return;
    }
    let (mut cluster, rt, mut sched) = cluster_and_framework();
    let per_task = Resources::new().with_scalar("cpus", 0.1).with_scalar("mem", 32.0);
    // It waits for the agent to be gone, prints 100 lines and fails with status 3.
    let script = "while [ ! -e \"$MESOS_SANDBOX/go\" ]; do sleep 0.02; done; \
                  i=0; while [ $i -lt 100 ]; do echo \"late $i\"; i=$((i+1)); done; exit 3";
    let argv = ["sh".to_string(), "-c".to_string(), script.to_string()];
    rt.block_on(async {
        loop {
            let ev = sched.next_event().await.unwrap().unwrap();
            match ev.r#type() {
                event::Type::Offers => {
                    let offer = ev.offers.unwrap().offers.remove(0);
                    let t = command_task("late", "late", &offer.agent_id, &argv, &per_task);
                    sched.launch(vec![offer.id], vec![t], None).await.unwrap();
                }
                event::Type::Update => {
                    let status = ev.update.unwrap().status;
                    sched.acknowledge(&status).await.unwrap();
                    if status.state() == TaskState::TaskStarting {
                        continue;
                    }
                    assert_eq!(status.state(), TaskState::TaskRunning);
                    break;
                }
                _ => {}
            }
        }
    });
    let before = container_pids(&cluster);
    let (cid, (init, _)) = before.iter().next().map(|(c, p)| (c.clone(), *p)).unwrap();
    cluster.kill_agent(0);
    let mut sandbox = Vec::new();
    files_named(&cluster.dir.path().join("agent-0").join("slaves"), "stdout", &mut sandbox);
    let stdout = sandbox.remove(0);
    std::fs::write(stdout.parent().unwrap().join("go"), "").unwrap();
    // The task ends with nobody to tell: the init records it and keeps the output.
    let exit_file =
        cluster.dir.path().join("agent-0").join("containers").join(&cid).join("exit_status");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exit_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&exit_file).unwrap(), "exited 3\n");
    assert_eq!(std::fs::read_to_string(&stdout).unwrap(), "", "the output waits in the pipe");
    assert!(Path::new(&format!("/proc/{init}")).exists(), "the init holds it");
    cluster.start_agent_again(0);
    let failed = rt.block_on(async {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(20), sched.next_event())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if ev.r#type() == event::Type::Update {
                let status = ev.update.unwrap().status;
                sched.acknowledge(&status).await.unwrap();
                if is_terminal(status.state()) {
                    break status;
                }
                // At least once: the RUNNING whose ack the killed agent never saw comes again.
                assert!(
                    matches!(status.state(), TaskState::TaskStarting | TaskState::TaskRunning),
                    "{status:?}"
                );
            }
        }
    });
    assert_eq!(failed.state(), TaskState::TaskFailed, "{failed:?}");
    assert_eq!(failed.message(), "Command exited with status 3");
    let want: String = (0..100).map(|i| format!("late {i}\n")).collect();
    assert_eq!(std::fs::read_to_string(&stdout).unwrap(), want, "every line, after the restart");
    assert!(!alive(init), "then the container is gone");
    rt.block_on(sched.teardown()).unwrap();
}

/// Whether `pid` runs: exists and is not a zombie (an orphaned init is reaped by whoever
/// adopted it, which may take a while).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// A one-agent cluster and a subscribed framework.
fn cluster_and_framework() -> (Cluster, tokio::runtime::Runtime, Scheduler) {
    let cluster = Cluster::start(ClusterOptions::default());
    let rt = runtime();
    let sched = rt.block_on(Scheduler::subscribe(&cluster.master_addr(), framework())).unwrap();
    (cluster, rt, sched)
}
