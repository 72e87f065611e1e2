//! `kill -9` at random moments while the agent's checkpoint code writes, 200 times: every
//! time, what is on disk reads back whole (the old version or the new one, never a mix).
//!
//! The writer is this test binary re-run as a child (`CORRAL_TORN_CHILD` set): it rewrites an
//! agent checkpoint and a task checkpoint of varying size as fast as it can, with the same
//! functions the agent uses. The parent kills it after a random delay and reads back.

// Tests measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use corral_agent::checkpoint::{self, AgentCheckpoint, RecoverMode, TaskCheckpoint};
use corral_wire::proto::{FrameworkRef, StatusUpdate, TaskSpec};

const TRIALS: usize = 200;
const CHILD_ENV: &str = "CORRAL_TORN_CHILD";
const TEST_NAME: &str = "kill_9_during_checkpoint_writes_never_leaves_a_torn_file";

fn task(version: u64) -> TaskCheckpoint {
    // 1 to 300 updates: the file is a few hundred bytes to ~40 KB, so writes take a while.
    let n = 1 + (version % 300) as usize;
    TaskCheckpoint {
        framework: FrameworkRef { id: "fw-torn".into(), ..Default::default() },
        spec: TaskSpec {
            task_id: "t-torn".into(),
            name: format!("v{version}"),
            ..Default::default()
        },
        container_id: Some("c-torn".into()),
        executor_container: None,
        agent_id: "a-S0".into(),
        state: 1,
        phase: 2,
        killing: false,
        updates: (0..n)
            .map(|i| StatusUpdate {
                framework_id: "fw-torn".into(),
                task_id: "t-torn".into(),
                state: 1,
                reason: None,
                source: 1,
                message: format!("update {i} of version {version}"),
                uuid: [(i % 251) as u8; 16],
                timestamp_ns: version,
                container_id: Some("c-torn".into()),
            })
            .collect(),
    }
}

fn child(dir: &Path) -> ! {
    let first: u64 =
        std::env::var("CORRAL_TORN_FIRST").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut v = first;
    loop {
        checkpoint::write_agent(
            dir,
            &AgentCheckpoint { agent_id: format!("a-{v}"), boot_id: "b".into() },
        )
        .unwrap();
        checkpoint::write_task(dir, &task(v)).unwrap();
        if v == first {
            std::fs::write(dir.join("ready"), "").unwrap();
        }
        v += 1;
    }
}

#[test]
fn kill_9_during_checkpoint_writes_never_leaves_a_torn_file() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut seed = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
    let mut next = || {
        // xorshift64*: random kill moments without a dependency.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut mid_write, mut versions) = (0, std::collections::BTreeSet::new());
    let started = Instant::now();
    for trial in 0..TRIALS {
        let _ = std::fs::remove_file(dir.path().join("ready"));
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            // Each trial writes versions of its own: the old file and the new never look alike.
            .env("CORRAL_TORN_FIRST", (trial as u64 * 1_000_003).to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.path().join("ready").exists() {
            assert!(Instant::now() < deadline, "trial {trial}: the writer never got going");
            std::thread::sleep(Duration::from_micros(200));
        }
        // Anywhere in the next 0-20 ms: many writes, each taking a few fsyncs.
        std::thread::sleep(Duration::from_micros(next() % 20_000));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        c.wait().unwrap();
        let tasks_dir = checkpoint::task_path(dir.path(), "fw-torn", "t-torn");
        let temp_left = std::fs::read_dir(tasks_dir.parent().unwrap())
            .unwrap()
            .chain(std::fs::read_dir(checkpoint::meta_dir(dir.path())).unwrap())
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.'));
        if temp_left {
            mid_write += 1;
        }
        // What a restarted agent does: read everything, strictly.
        let r = checkpoint::recover(dir.path(), RecoverMode::Strict)
            .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        assert!(r.agent.is_some(), "trial {trial}: agent checkpoint readable");
        assert_eq!(r.tasks.len(), 1, "trial {trial}");
        let t = &r.tasks[0];
        let v: u64 = t.spec.name.trim_start_matches('v').parse().unwrap();
        assert_eq!(*t, task(v), "trial {trial}: a whole version");
        versions.insert(v);
    }
    eprintln!(
        "{TRIALS} kills in {:?}: {mid_write} left a temp file (killed mid-write), {} distinct versions read back",
        started.elapsed(),
        versions.len()
    );
    assert!(mid_write > 0, "no kill landed in the middle of a write: the test proves nothing");
}
