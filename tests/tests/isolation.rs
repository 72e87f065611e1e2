//! Task isolation on this host, as a user sees it through `corral run`: the task's own pid
//! namespace (it sees only its own processes), its own cgroup, a private `/tmp`, dropped
//! capabilities, no leaked descriptors, an optional loopback-only network; and the isolation
//! policy: `strict` refusing to start where a controller is missing (naming it and the file),
//! `best-effort` saying in the master's `/state` what it does not enforce.
//!
//! Limits themselves (memory.max, pids.max, cpu.max) need controllers this host's cgroup2 may
//! lack: the VM suite (`tests/vm.rs`) proves them in a real kernel.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_tests::{
    Cluster, ClusterOptions, cgroup_root, corral_bin, corral_run, require_agent_host,
};

/// The required controllers the cgroup2 root does not offer, in the agent's order.
fn missing_required_controllers() -> Vec<String> {
    let root = cgroup_root().expect("cgroup2 root");
    let have = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !have.split_whitespace().any(|h| h == *c))
        .map(String::from)
        .collect()
}

#[test]
fn a_task_sees_only_its_own_processes_cgroup_tmp_and_capabilities() {
    if !require_agent_host("isolation::a_task_sees_only_its_own_processes") {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default());
    let probe = format!("corral-isolation-probe-{}", std::process::id());
    let script = format!(
        "echo pid=$$; cat /proc/self/cgroup; echo procs: $(ls /proc | grep -E '^[0-9]+$'); \
         echo fds: $(ls /proc/self/fd); grep -E '^Cap(Bnd|Eff)' /proc/self/status; \
         echo host=$(hostname); echo x > /tmp/{probe}; echo tmp: $(ls /tmp)"
    );
    let out = corral_run(&cluster, &["sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    // pid 1 is the container's init; the shell is its child.
    assert!(stdout.lines().any(|l| l == "pid=2"), "{stdout}");
    // Only the container's own processes: the init, the shell, the command substitution's
    // subshell and ls.
    let procs: Vec<u32> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("procs: "))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(procs.contains(&1) && procs.contains(&2), "{procs:?}");
    assert!(procs.iter().all(|p| *p < 10), "processes outside the container: {procs:?}");
    // The task's own cgroup, under the agent's.
    let root = cgroup_root().unwrap();
    let agent_cg = cluster.agent_cgroups[0].strip_prefix(&root).unwrap().display().to_string();
    let own = stdout.lines().find(|l| l.starts_with("0::/")).unwrap();
    assert!(own.starts_with(&format!("0::/{agent_cg}/")), "{own} not under {agent_cg}");
    // stdin, stdout, stderr, and ls's own directory: no descriptor of the agent or init.
    assert!(stdout.lines().any(|l| l == "fds: 0 1 2 3"), "{stdout}");
    // Docker's default capability set, nothing more.
    assert!(stdout.contains("CapBnd:\t00000000a80425fb"), "{stdout}");
    assert!(stdout.contains("CapEff:\t00000000a80425fb"), "{stdout}");
    // Hostname: the agent's (its own uts namespace, set to it).
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert!(stdout.lines().any(|l| l == format!("host={host}")), "{stdout}");
    // A private /tmp: the file landed in the sandbox, not in the host's /tmp.
    assert!(stdout.lines().any(|l| l.starts_with("tmp: ") && l.contains(&probe)), "{stdout}");
    assert!(!std::path::Path::new("/tmp").join(&probe).exists(), "leaked into the host's /tmp");
    let in_sandbox = walk(cluster.dir.path()).into_iter().any(|p| p.ends_with(&probe));
    assert!(in_sandbox, "the task's /tmp is inside its sandbox");

    // A task of a non-root user holds no capability at all.
    let out = Command::new(corral_bin())
        .args(["run", "--master", cluster.master_addr().host_port(), "--user", "nobody", "--"])
        .args(["grep", "-E", "^Cap(Bnd|Eff|Prm)", "/proc/self/status"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("CapPrm:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("CapBnd:\t00000000a80425fb"), "{stdout}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn an_isolated_task_network_has_only_loopback() {
    if !require_agent_host("isolation::an_isolated_task_network_has_only_loopback") {
        return;
    }
    let cluster = Cluster::start(ClusterOptions {
        agent_flags: vec!["--task-network".into(), "isolated".into()],
        ..ClusterOptions::default()
    });
    let script = "echo ifaces: $(tail -n +3 /proc/net/dev | cut -d: -f1); python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); socket.create_connection(s.getsockname()); print('loopback up')\"";
    let out = corral_run(&cluster, &["sh", "-c", script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().any(|l| l == "ifaces: lo"), "only loopback: {stdout}");
    assert!(stdout.lines().any(|l| l == "loopback up"), "{stdout}");
    // The agent reports the network mode.
    let state = cluster.state();
    assert_eq!(state["slaves"][0]["isolation"]["network"], "isolated");
}

#[test]
fn best_effort_reports_what_it_does_not_enforce_and_strict_refuses_to_start() {
    if !require_agent_host("isolation::strict_and_best_effort") {
        return;
    }
    let missing = missing_required_controllers();
    let mut cluster = Cluster::start(ClusterOptions::default());
    let state = cluster.state();
    let iso = &state["slaves"][0]["isolation"];
    assert_eq!(iso["policy"], "best-effort");
    assert_eq!(iso["namespaces"], true);
    let lines: Vec<&str> =
        iso["not_enforced"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    for c in ["cpu", "memory", "pids"] {
        let what = if c == "cpu" { "cpus" } else { c };
        let reported = lines.iter().any(|l| l.starts_with(&format!("{what}: not enforced (")));
        assert_eq!(reported, missing.contains(&c.to_string()), "{c}: {lines:?}");
    }

    // The same agent under strict.
    let work = cluster.dir.path().join("strict-agent");
    let parent = format!("corral-it-strict-{}", std::process::id());
    let mut child = Command::new(corral_bin())
        .args(["agent", "--isolation", "strict", "--port", "0", "--cgroup-parent", &parent])
        .args(["--master", &format!("127.0.0.1:{}", cluster.master_port)])
        .args(["--work-dir", &work.display().to_string()])
        .args(["--tls-dir", &cluster.dir.path().join("tls").display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let root = cgroup_root().unwrap();
    if let Some(first) = missing.first() {
        // Refused at start, naming the controller and the file that shows it missing.
        let out = loop {
            if let Some(_status) = child.try_wait().unwrap() {
                break child.wait_with_output().unwrap();
            }
            assert!(started.elapsed() < Duration::from_secs(20), "strict agent did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("the {first} controller is not available")), "{stderr}");
        assert!(stderr.contains("cgroup.controllers"), "names the file: {stderr}");
        assert!(!root.join(&parent).exists(), "a refused start leaves no cgroup behind");
    } else {
        // Every controller is there: strict starts and registers.
        cluster.wait_agents(2, Duration::from_secs(30));
        let state = cluster.state();
        let strict = state["slaves"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["isolation"]["policy"] == "strict")
            .expect("the strict agent registered");
        assert_eq!(strict["isolation"]["not_enforced"].as_array().unwrap().len(), 0);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
    let _ = &mut cluster;
}
