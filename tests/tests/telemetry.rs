//! Per-task telemetry end to end, with real processes: a master, an agent (eBPF where this host
//! allows it, then forced onto cgroup files), tasks started by `corral run`, and what users read:
//! the agent's `/metrics` and `/monitor/statistics`, the master's `/state` and operator API
//! (GET_TASKS), and `corral top --batch`.
//!
//! The scenarios share this machine's two cores (a CPU burner each), so they run one at a time.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use corral_tests::{Cluster, ClusterOptions, corral_bin, corral_run, require_agent_host};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn get(url: &str) -> String {
    runtime().block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() })
}

fn operator(cluster: &Cluster, body: Value) -> Value {
    let url = cluster.master_addr().url("/api/v1");
    runtime().block_on(async {
        let r = reqwest::Client::new()
            .post(&url)
            .header("Accept", "application/json")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        r.json().await.unwrap()
    })
}

/// `corral run` in the background: the framework stays until it is interrupted.
struct Background(Child);

impl Background {
    fn start(cluster: &Cluster, name: &str, script: &str) -> Background {
        let child = Command::new(corral_bin())
            .args(["run", "--master", cluster.master_addr().host_port(), "--name", name, "--"])
            .args(["sh", "-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Background(child)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of `family{task_id="<prefix>…"}` in Prometheus text, if the series is there.
fn metric(text: &str, family: &str, task_prefix: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(family)?.strip_prefix("{task_id=\"")?;
        if !rest.starts_with(task_prefix) {
            return None;
        }
        l.rsplit(' ').next()?.parse().ok()
    })
}

/// Polls until `f` gives a value or `timeout` passes.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn task_named<'a>(state: &'a Value, prefix: &str) -> Option<&'a Value> {
    state["frameworks"]
        .as_array()?
        .iter()
        .flat_map(|f| f["tasks"].as_array().into_iter().flatten())
        .find(|t| t["name"].as_str() == Some(prefix))
}

#[test]
fn a_cpu_burning_task_shows_in_metrics_top_the_master_and_statistics() {
    let test = "a_cpu_burning_task_shows_in_metrics_top_the_master_and_statistics";
    if !require_agent_host(test) {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start(ClusterOptions::default());
    let agent = format!("http://127.0.0.1:{}", cluster.agent_ports[0]);
    let state: Value = serde_json::from_str(&get(&format!("{agent}/state"))).unwrap();
    let telemetry = &state["telemetry"];
    if telemetry["source"] != "ebpf" {
        eprintln!(
            "SKIP {test}: the agent could not load eBPF here: {}",
            telemetry["fallback_reason"]
        );
        return;
    }
    assert!(
        telemetry["programs"].as_array().unwrap().iter().all(|p| p["attached"] == true),
        "every program attaches on this kernel: {telemetry}"
    );

    // A task that forks exactly 100 times, then ends: its final sample stays in /metrics.
    let out = corral_run(
        &cluster,
        &["sh", "-c", "i=0; while [ $i -lt 100 ]; do /bin/true; i=$((i+1)); done"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (forks, _) = wait_for(Duration::from_secs(10), "the finished task's forks", || {
        metric(&get(&format!("{agent}/metrics")), "corral_task_forks_total", "corral-run-")
    });
    let text = get(&format!("{agent}/metrics"));
    assert_eq!(forks, 100.0, "forks of a task that forked 100 times");
    assert_eq!(
        metric(&text, "corral_task_execs_total", "corral-run-"),
        Some(101.0),
        "sh, then 100 × true"
    );
    assert_eq!(metric(&text, "corral_task_process_exits_total", "corral-run-"), Some(101.0));

    // A CPU burner.
    let _burner = Background::start(&cluster, "burner", "while :; do :; done");
    let (_, running_after) = wait_for(Duration::from_secs(20), "the burner to run", || {
        let st = cluster.state();
        (task_named(&st, "burner")?["state"] == "TASK_RUNNING").then_some(())
    });
    let (rate, seen_after) =
        wait_for(Duration::from_secs(10), "a CPU rate near 1.0 in /metrics", || {
            let v = metric(
                &get(&format!("{agent}/metrics")),
                "corral_task_cpu_usage_cores",
                "burner-",
            )?;
            (v > 0.85).then_some(v)
        });
    println!(
        "burner: RUNNING seen after {running_after:?}; CPU rate {rate:.3} in /metrics {:?} later",
        seen_after
    );
    assert!(rate < 1.15, "one busy thread uses at most about one core: {rate}");
    let text = get(&format!("{agent}/metrics"));
    for family in [
        "corral_task_cpu_seconds_total",
        "corral_task_context_switches_total",
        "corral_task_runqueue_latency_seconds_count",
        "corral_task_memory_rss_bytes",
        "corral_task_network_transmit_bytes_total",
    ] {
        assert!(metric(&text, family, "burner-").is_some(), "{family} for the burner in:\n{text}");
    }
    assert!(text.contains("# TYPE corral_task_runqueue_latency_seconds histogram"));
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");

    // corral top: the burner first by CPU.
    let (top, _) = wait_for(Duration::from_secs(10), "corral top to list the burner first", || {
        let out = Command::new(corral_bin())
            .args([
                "top",
                "--batch",
                "-n",
                "1",
                "--sort",
                "cpu",
                "--master",
                cluster.master_addr().host_port(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let first = text.lines().nth(2)?.to_string();
        let cpu: f64 = first.split_whitespace().nth(4)?.parse().ok()?;
        (first.starts_with("burner-") && cpu > 0.85).then_some(text)
    });
    println!("{top}");
    assert!(top.lines().nth(1).unwrap().starts_with("TASK"), "{top}");

    // The master has it: /state and the operator API.
    let (stats, _) = wait_for(Duration::from_secs(10), "usage in the master's /state", || {
        let st = cluster.state();
        let s = task_named(&st, "burner")?["statistics"].clone();
        (s["cpus_usage"].as_f64()? > 0.85).then_some(s)
    });
    assert_eq!(stats["telemetry_source"], "ebpf");
    assert!(stats["cpus_total_time_secs"].as_f64().unwrap() > 0.5, "{stats}");
    assert!(stats["context_switches"].as_u64().is_some(), "{stats}");
    let tasks = operator(&cluster, json!({"type": "GET_TASKS"}));
    let burner = tasks["get_tasks"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "burner")
        .unwrap();
    assert!(burner["statistics"]["cpus_usage"].as_f64().unwrap() > 0.5, "{burner}");

    // Mesos' /monitor/statistics, with the extra fields.
    let mon: Value = serde_json::from_str(&get(&format!("{agent}/monitor/statistics"))).unwrap();
    let entry = mon
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["executor_name"] == "burner")
        .unwrap_or_else(|| panic!("{mon}"));
    let st = &entry["statistics"];
    for field in [
        "cpus_user_time_secs",
        "cpus_system_time_secs",
        "mem_rss_bytes",
        "net_tx_bytes",
        "runqueue_latency_p99_secs",
    ] {
        assert!(st.get(field).is_some(), "{field} in {st}");
    }
    assert!(st["cpus_user_time_secs"].as_f64().unwrap() > 0.5, "{st}");
}

#[test]
fn forced_onto_cgroup_files_the_agent_says_so_and_still_reports_cpu() {
    let test = "forced_onto_cgroup_files_the_agent_says_so_and_still_reports_cpu";
    if !require_agent_host(test) {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start(ClusterOptions {
        agent_flags: vec!["--telemetry".into(), "cgroup".into()],
        ..ClusterOptions::default()
    });
    let agent = format!("http://127.0.0.1:{}", cluster.agent_ports[0]);
    let state: Value = serde_json::from_str(&get(&format!("{agent}/state"))).unwrap();
    assert_eq!(state["telemetry"]["source"], "cgroup", "{}", state["telemetry"]);
    assert_eq!(state["telemetry"]["fallback_reason"], "disabled by --telemetry cgroup");
    let slaves = cluster.state()["slaves"].clone();
    assert_eq!(
        slaves[0]["isolation"]["telemetry"], "cgroup: disabled by --telemetry cgroup",
        "the master shows where the agent's figures come from: {slaves}"
    );

    let _burner = Background::start(&cluster, "burner", "while :; do :; done");
    let (rate, _) = wait_for(Duration::from_secs(20), "a CPU rate near 1.0 from cpu.stat", || {
        let v =
            metric(&get(&format!("{agent}/metrics")), "corral_task_cpu_usage_cores", "burner-")?;
        (v > 0.85).then_some(v)
    });
    assert!(rate < 1.15, "{rate}");
    let text = get(&format!("{agent}/metrics"));
    assert!(text.contains("corral_agent_telemetry_ebpf 0"), "{text}");
    assert!(metric(&text, "corral_task_cpu_user_seconds_total", "burner-").is_some());
    assert!(
        metric(&text, "corral_task_context_switches_total", "burner-").is_none()
            && !text.contains("corral_task_runqueue_latency_seconds"),
        "no eBPF-only series without eBPF:\n{text}"
    );
    let (stats, _) = wait_for(Duration::from_secs(10), "usage in the master's /state", || {
        let st = cluster.state();
        let s = task_named(&st, "burner")?["statistics"].clone();
        (s["cpus_usage"].as_f64()? > 0.85).then_some(s)
    });
    assert_eq!(stats["telemetry_source"], "cgroup");
    assert!(stats.get("context_switches").is_none(), "{stats}");
}
