//! `corral logs` on a real cluster: a task whose stdout rotates every 2 KB, followed with
//! `-f` while it prints and read whole after it ended.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use corral_tests::{Cluster, ClusterOptions, corral_bin, require_agent_host};
use corral_tools::client::{Scheduler, command_task};
use corral_wire::mesos::is_terminal;
use corral_wire::mesos::v1::scheduler::event;
use corral_wire::mesos::v1::{self, TaskState};
use corral_wire::resources::Resources;

const LINES: usize = 300;

fn expected() -> String {
    (0..LINES).map(|i| format!("line {i:04} {}\n", "x".repeat(40))).collect()
}

#[test]
fn logs_follow_a_rotating_stdout_without_a_gap_or_a_repeat() {
    if !require_agent_host("logs_follow_a_rotating_stdout_without_a_gap_or_a_repeat") {
        return;
    }
    let cluster = Cluster::start(ClusterOptions {
        agent_flags: ["--task-log-max-size", "2KB", "--task-log-keep", "100"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let addr = cluster.master_addr();
    let agent_state = corral_tests::block_on(corral_tools::client::get_json(&format!(
        "http://127.0.0.1:{}/state",
        cluster.agent_ports[0]
    )))
    .unwrap();
    let out = &agent_state["task_output"];
    assert_eq!(out["engine"], "io_uring", "this host has io_uring: {agent_state}");
    assert_eq!(
        (out["rotate_max_size"].as_u64(), out["rotate_keep"].as_u64()),
        (Some(2000), Some(100))
    );
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut sched = rt
        .block_on(Scheduler::subscribe(
            &addr,
            v1::FrameworkInfo { user: "root".into(), name: "logs".into(), ..Default::default() },
        ))
        .unwrap();
    // A second of quiet first, so `logs -f` is attached before the first rotation.
    let script = format!(
        "sleep 1; i=0; while [ $i -lt {LINES} ]; do printf 'line %04d %s\\n' $i {}; i=$((i+1)); sleep 0.01; done",
        "x".repeat(40)
    );
    let argv = ["sh".to_string(), "-c".to_string(), script];
    let per_task = Resources::new().with_scalar("cpus", 0.1).with_scalar("mem", 32.0);
    let mut follower = None;
    rt.block_on(async {
        let mut launched = false;
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), sched.next_event())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            match ev.r#type() {
                event::Type::Offers => {
                    for offer in ev.offers.unwrap().offers {
                        if launched {
                            sched.decline(vec![offer.id], None).await.unwrap();
                            continue;
                        }
                        let t =
                            command_task("printer", "printer", &offer.agent_id, &argv, &per_task);
                        sched.launch(vec![offer.id], vec![t], None).await.unwrap();
                        launched = true;
                    }
                }
                event::Type::Update => {
                    let status = ev.update.unwrap().status;
                    sched.acknowledge(&status).await.unwrap();
                    if status.state() == TaskState::TaskRunning && follower.is_none() {
                        follower = Some(
                            Command::new(corral_bin())
                                .args(["logs", "-f", "printer", "--master", addr.host_port()])
                                .args(["--interval", "50ms"])
                                .stdout(Stdio::piped())
                                .stderr(Stdio::piped())
                                .spawn()
                                .unwrap(),
                        );
                    }
                    if is_terminal(status.state()) {
                        assert_eq!(status.state(), TaskState::TaskFinished, "{status:?}");
                        break;
                    }
                }
                _ => {}
            }
        }
    });
    let followed = follower.unwrap().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&followed.stderr);
    assert!(followed.status.success(), "corral logs -f: {stderr}");
    let got = String::from_utf8(followed.stdout).unwrap();
    let want = expected();
    assert!(
        got == want,
        "followed {} bytes, expected {}; stderr: {stderr}\n{}",
        got.len(),
        want.len(),
        cluster.logs()
    );
    // It did rotate: the log is spread over many files.
    let whole = Command::new(corral_bin())
        .args(["logs", "printer", "--master", addr.host_port()])
        .output()
        .unwrap();
    assert!(whole.status.success(), "{}", String::from_utf8_lossy(&whole.stderr));
    assert_eq!(String::from_utf8(whole.stdout).unwrap(), want, "rotated files, then stdout");
    let mut rotated = 0;
    let slaves = cluster.dir.path().join("agent-0").join("slaves");
    let mut stack = vec![slaves];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().starts_with("stdout.") {
                rotated += 1;
                assert!(e.metadata().unwrap().len() <= 2000, "a file never exceeds the size");
            }
        }
    }
    assert!(rotated >= 5, "stdout rotated ({rotated} rotated files)");
    rt.block_on(sched.teardown()).unwrap();
}
