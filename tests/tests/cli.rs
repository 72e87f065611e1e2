//! The `corral` binary as a user runs it: `corral run` exit codes and Ctrl-C, `corral dev`
//! starting and stopping clean, the table commands, and an independent scheduler written in
//! Python from the API reference alone (`tests/python/reference_scheduler.py`).

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_tests::{
    Cluster, ClusterOptions, cgroup_populated, corral_bin, corral_run, free_port,
    require_agent_host,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Pids of processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

/// Waits up to `timeout` for every process mentioning `needle` to be gone; returns a
/// description (state, parent, cgroup) of any that remain, for the failure message.
fn leftovers(needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = processes_mentioning(needle);
        if pids.is_empty() {
            return Vec::new();
        }
        if Instant::now() >= deadline {
            return pids
                .iter()
                .map(|p| {
                    let status =
                        std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                    let pick = |k: &str| {
                        status.lines().find(|l| l.starts_with(k)).unwrap_or("").to_string()
                    };
                    let cg =
                        std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default();
                    format!(
                        "pid {p}: {} {} cgroup {}",
                        pick("State:"),
                        pick("PPid:"),
                        cg.replace('\n', " ")
                    )
                })
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn task_cgroups(cluster: &Cluster) -> Vec<std::path::PathBuf> {
    cluster
        .agent_cgroups
        .iter()
        .flat_map(|cg| {
            std::fs::read_dir(cg)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
        })
        .collect()
}

#[test]
fn corral_run_exit_codes_and_ctrl_c() {
    if !require_agent_host("corral_run_exit_codes_and_ctrl_c") {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default());
    let ok = corral_run(&cluster, &["echo", "hello"]);
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "hello\n");
    assert!(stderr.contains("TASK_FINISHED"), "{stderr}");
    assert_eq!(ok.status.code(), Some(0));

    let failed = corral_run(&cluster, &["sh", "-c", "exit 3"]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("TASK_FAILED") && stderr.contains("exited with status 3"), "{stderr}");
    assert_eq!(failed.status.code(), Some(3));

    // Ctrl-C: the task is killed, nothing of it is left.
    let mut child = Command::new(corral_bin())
        .args(["run", "--master", cluster.master_addr().host_port(), "--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("TASK_RUNNING") {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("TASK_RUNNING")), "{seen:?}");
    assert!(!processes_mentioning("sleep\u{0}60").is_empty(), "the task runs");
    let interrupted = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(rest.iter().any(|l| l.contains("TASK_KILLED")), "{rest:?}");
    assert_eq!(status.code(), Some(130));
    // sleep exits on SIGTERM: killed within the grace period, not after it.
    assert!(interrupted.elapsed() < Duration::from_secs(3), "took {:?}", interrupted.elapsed());
    let left = leftovers("sleep\u{0}60", Duration::from_secs(2));
    assert!(left.is_empty(), "no task process left: {left:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !task_cgroups(&cluster).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(task_cgroups(&cluster).is_empty(), "no task cgroup left: {:?}", task_cgroups(&cluster));
}

#[test]
fn a_task_ignoring_sigterm_is_killed_after_the_grace_period() {
    if !require_agent_host("a_task_ignoring_sigterm_is_killed_after_the_grace_period") {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default());
    // TASK_RUNNING is sent once the process exists, which can be before the shell has run
    // `trap`: the task says when SIGTERM is ignored by touching a file in its sandbox.
    let script = "trap '' TERM; touch \"$MESOS_SANDBOX/trap-set\"; sleep 120";
    let mut child = Command::new(corral_bin())
        .args(["run", "--master", cluster.master_addr().host_port(), "--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("TASK_RUNNING") {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file_under(cluster.dir.path(), "trap-set") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        file_under(cluster.dir.path(), "trap-set"),
        "the task never set its trap\n{}",
        cluster.logs()
    );
    let interrupted = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    child.wait().unwrap();
    let took = interrupted.elapsed();
    assert!(rest.iter().any(|l| l.contains("TASK_KILLED")), "{rest:?}");
    // The default grace period is 3 s, then cgroup.kill.
    assert!(took >= Duration::from_millis(2500), "killed before the grace period: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let left = leftovers("sleep\u{0}120", Duration::from_secs(2));
    assert!(left.is_empty(), "no task process left: {left:?}\n{}", cluster.logs());
    for cg in &cluster.agent_cgroups {
        assert!(!cgroup_populated(cg), "{} still has processes", cg.display());
    }
}

#[test]
fn tables_list_agents_frameworks_and_tasks() {
    if !require_agent_host("tables_list_agents_frameworks_and_tasks") {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default());
    assert_eq!(corral_run(&cluster, &["true"]).status.code(), Some(0));
    let table = |what: &str, json: bool| {
        let mut c = Command::new(corral_bin());
        c.args([what, "--master", &format!("http://{}", cluster.master_addr().host_port())]);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let agents = table("agents", false);
    assert!(agents.starts_with("ID") && agents.contains(&cluster.agent_id(0)), "{agents}");
    let fws = table("frameworks", false);
    assert!(fws.contains("corral-run: true") && fws.contains("completed"), "{fws}");
    let tasks = table("tasks", false);
    assert!(tasks.contains("TASK_FINISHED"), "{tasks}");
    let json: serde_json::Value = serde_json::from_str(&table("tasks", true)).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["state"], "TASK_FINISHED");
}

#[test]
fn corral_dev_comes_up_runs_a_task_and_stops_clean() {
    if !require_agent_host("corral_dev_comes_up_runs_a_task_and_stops_clean") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("dev");
    let port = free_port();
    let mut dev = Command::new(corral_bin())
        .args([
            "dev",
            "--agents",
            "2",
            "--port",
            &port.to_string(),
            "--work-dir",
            &work.display().to_string(),
        ])
        .args(["--agent-resources", "cpus:1;mem:512;ports:[32000-32010]"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(dev.stdout.take().unwrap()).lines();
    let up = out.next().unwrap().unwrap();
    assert!(up.contains("is up") && up.contains("2 agent(s)"), "{up}");
    let run = Command::new(corral_bin())
        .args(["run", "--master", &format!("127.0.0.1:{port}"), "--", "echo", "from-dev"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "from-dev\n");
    let work_str = work.display().to_string();
    let agent_pids: Vec<u32> = processes_mentioning(&work_str)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("\u{0}agent\u{0}"))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(agent_pids.len(), 2, "two agent processes");
    // A long task on the cluster, to prove Ctrl-C kills tasks too (`sleep 317`: no other test
    // in this binary runs it, so the leftover check below sees only this one).
    let mut long = Command::new(corral_bin())
        .args(["run", "--master", &format!("127.0.0.1:{port}"), "--", "sleep", "317"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for line in BufReader::new(long.stderr.take().unwrap()).lines() {
        if line.unwrap().contains("TASK_RUNNING") {
            break;
        }
    }
    // Kill one agent alone: the master and the other agent keep running, and whatever the
    // dead agent ran is still cleaned up when the cluster stops.
    kill(Pid::from_raw(agent_pids[0] as i32), Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "master still serves");
    assert!(Path::new(&format!("/proc/{}", agent_pids[1])).exists(), "the other agent still runs");
    kill(Pid::from_raw(dev.id() as i32), Signal::SIGINT).unwrap();
    let status = dev.wait().unwrap();
    assert!(status.success(), "{status}");
    let _ = long.kill();
    let _ = long.wait();
    assert!(processes_mentioning(&work_str).is_empty(), "no master or agent left");
    let left = leftovers("sleep\u{0}317", Duration::from_secs(2));
    assert!(left.is_empty(), "no task left: {left:?}");
    let root = corral_tests::cgroup_root().unwrap();
    for p in [port + 1, port + 2] {
        let cg = root.join(format!("corral-dev-agent-{p}"));
        assert!(!cg.exists(), "{} left behind", cg.display());
    }
}

#[test]
fn a_scheduler_written_from_the_reference_launches_and_kills_tasks() {
    if !require_agent_host("a_scheduler_written_from_the_reference_launches_and_kills_tasks") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/reference_scheduler.py");
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!(
            "SKIP a_scheduler_written_from_the_reference_launches_and_kills_tasks: no python3"
        );
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default());
    let master = cluster.master_addr().host_port().to_string();
    let run = |extra: &[&str]| {
        let out = Command::new("python3")
            .arg(&script)
            .args(["--master", &master, "--timeout", "60"])
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&["--cmd", "echo hello-from-python"]);
    assert_eq!(code, Some(0), "{text}\n{}", cluster.logs());
    assert!(text.contains("TASK_FINISHED") && text.contains("RESULT OK"), "{text}");
    let (code, text) = run(&["--cmd", "sleep 30", "--kill-after", "1"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("TASK_KILLED"), "{text}");
    let (code, text) = run(&["--cmd", "exit 3"]);
    assert_eq!(code, Some(1), "a failed task is reported as such: {text}");
}

/// Whether a file called `name` exists anywhere below `dir`.
fn file_under(dir: &std::path::Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            file_under(&path, name)
        } else {
            e.file_name() == name
        }
    })
}
