//! Per-task telemetry: what each container uses, sampled every `--telemetry-interval`.
//!
//! Owns the eBPF probes (from `corral-agent-ebpf`) or, where they cannot load, the fallback to
//! cgroup files; the table of containers and their latest samples; and the three ways out:
//! Prometheus text for `/metrics` ([`Telemetry::prometheus`]), Mesos' `/monitor/statistics`
//! ([`Telemetry::statistics`]) and the usage reports the shell sends to the master
//! ([`corral_wire::proto::AgentMessage::Usage`]).
//!
//! Lifecycle of a container: `created` (from the launch's blocking preparation, right after its
//! cgroup is made and before anything runs in it, so the eBPF counters start at zero and miss
//! nothing), sampled by the sampler thread, `removing` (just before its cgroup is destroyed: a
//! last sample, then its map entry is freed), and dropped from the table once it has been
//! finished for [`KEEP_FINISHED`] or more than [`MAX_FINISHED`] finished ones are kept: the
//! eBPF map never fills and `/metrics` cardinality stays bounded.
//!
//! Sampling is cheap where nothing happens: with eBPF, a container whose scheduler runtime did
//! not move since the last sample costs one map lookup (its cgroup files are not read again).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use corral_agent_ebpf::{self as ebpf, Probes, RQ_SLOTS, TaskStats};
use corral_wire::proto::{EbpfUsage, TaskUsage};
use serde_json::{Value, json};

use crate::cgroup::{self, Cgroup};
use crate::clock;

/// How long a finished container's last sample stays in `/metrics`.
pub const KEEP_FINISHED: Duration = Duration::from_secs(300);
/// The most finished containers kept (the oldest go first).
pub const MAX_FINISHED: usize = 1000;
/// The most containers the eBPF map can track at once.
const MAX_TRACKED: u32 = 16384;

/// `--telemetry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// eBPF where the kernel allows it, cgroup files otherwise (the reason is in `/state`).
    Auto,
    /// eBPF or refuse to start.
    Ebpf,
    /// cgroup files only; no eBPF is loaded.
    Cgroup,
}

/// Where the figures come from, for `/state` and the master.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceReport {
    /// `ebpf` or `cgroup`.
    pub source: &'static str,
    /// Why not eBPF, when `source` is `cgroup`.
    pub fallback_reason: Option<String>,
    /// Each eBPF program and whether it is attached.
    pub programs: Vec<ebpf::ProgramStatus>,
}

impl SourceReport {
    /// One line: `ebpf`, `ebpf (missing: …)` or `cgroup: <why>`.
    pub fn summary(&self) -> String {
        match &self.fallback_reason {
            Some(why) => format!("cgroup: {why}"),
            None => {
                let missing: Vec<&str> =
                    self.programs.iter().filter(|p| p.error.is_some()).map(|p| p.hook).collect();
                if missing.is_empty() {
                    "ebpf".into()
                } else {
                    format!("ebpf (not attached: {})", missing.join(", "))
                }
            }
        }
    }

    pub fn to_json(&self, interval: Duration) -> Value {
        json!({
            "source": self.source,
            "fallback_reason": self.fallback_reason,
            "interval_secs": interval.as_secs_f64(),
            "programs": self.programs.iter().map(|p| json!({
                "program": p.program,
                "hook": p.hook,
                "feeds": p.feeds,
                "attached": p.error.is_none(),
                "error": p.error,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Who a container belongs to: the labels of its series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub framework_id: String,
    pub task_id: String,
    pub executor_id: Option<String>,
    /// The task's name (for `/monitor/statistics`).
    pub name: String,
}

/// What a container was given: its limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub cpus: f64,
    pub mem_bytes: u64,
}

#[derive(Debug)]
struct Container {
    labels: Labels,
    limits: Limits,
    cgroup: Cgroup,
    cgroup_id: u64,
    /// The latest sample, and the eBPF counters behind it.
    last: Option<TaskUsage>,
    last_stats: Option<TaskStats>,
    /// (when, cpu seconds) of the previous periodic sample: the base of `cpus_usage`.
    rate_base: Option<(Instant, f64)>,
    /// What the master was last sent.
    reported: Option<TaskUsage>,
    ended: Option<Instant>,
}

#[derive(Debug)]
pub struct Telemetry {
    probes: Mutex<Option<Probes>>,
    containers: Mutex<BTreeMap<String, Container>>,
    report: SourceReport,
    interval: Duration,
    /// Duration of the last sampling round (for `/metrics`).
    last_round: Mutex<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Telemetry {
    /// Loads the eBPF programs (per `mode`) for containers that are children of `parent`, a
    /// cgroup at depth `parent_level` below its hierarchy's root. With `Mode::Auto`, any
    /// failure (no permission, no BTF, a failed self-test) falls back to cgroup files and the
    /// reason is kept; with `Mode::Ebpf` it is the error.
    pub fn start(
        mode: Mode,
        parent: &Cgroup,
        parent_level: u32,
        interval: Duration,
    ) -> Result<Telemetry, String> {
        let loaded = match mode {
            Mode::Cgroup => Err("disabled by --telemetry cgroup".to_string()),
            Mode::Auto | Mode::Ebpf => load_probes(parent, parent_level),
        };
        let (probes, report) = match loaded {
            Ok(p) => {
                let programs = p.status().to_vec();
                (Some(p), SourceReport { source: "ebpf", fallback_reason: None, programs })
            }
            Err(why) if mode == Mode::Ebpf => return Err(why),
            Err(why) => {
                if mode == Mode::Auto {
                    tracing::warn!("per-task telemetry from cgroup files only: {why}");
                }
                (
                    None,
                    SourceReport { source: "cgroup", fallback_reason: Some(why), programs: vec![] },
                )
            }
        };
        Ok(Telemetry {
            probes: Mutex::new(probes),
            containers: Mutex::new(BTreeMap::new()),
            report,
            interval,
            last_round: Mutex::new(Duration::ZERO),
        })
    }

    pub fn report(&self) -> &SourceReport {
        &self.report
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A container's cgroup was just made (nothing runs in it yet). Blocking (a stat and a map
    /// update).
    pub fn created(&self, container_id: &str, cgroup: &Cgroup, labels: Labels, limits: Limits) {
        let cgroup_id = match ebpf::cgroup_id(cgroup.path()) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(container_id, "telemetry: {e}");
                return;
            }
        };
        if let Some(p) = lock(&self.probes).as_mut()
            && let Err(e) = p.track(cgroup_id)
        {
            tracing::warn!(container_id, "telemetry: cannot track the container: {e}");
        }
        lock(&self.containers).insert(
            container_id.to_string(),
            Container {
                labels,
                limits,
                cgroup: cgroup.clone(),
                cgroup_id,
                last: None,
                last_stats: None,
                rate_base: None,
                reported: None,
                ended: None,
            },
        );
    }

    /// A container's limits changed (an executor's container, resized).
    pub fn resized(&self, container_id: &str, limits: Limits) {
        if let Some(c) = lock(&self.containers).get_mut(container_id) {
            c.limits = limits;
        }
    }

    /// A container's processes are gone and its cgroup is about to be removed: takes its last
    /// sample and frees its map entry. Blocking.
    pub fn removing(&self, container_id: &str) {
        let probes = lock(&self.probes);
        let running = probes.as_ref().and_then(|p| p.running().ok()).unwrap_or_default();
        let mut containers = lock(&self.containers);
        let Some(c) = containers.get_mut(container_id) else { return };
        c.ended = Some(clock::now().mono);
        let sample = sample(probes.as_ref(), &running, c, true);
        c.last_stats = sample.1.or(c.last_stats);
        c.last = Some(sample.0);
        drop(containers);
        let cgroup_id = lock(&self.containers).get(container_id).map(|c| c.cgroup_id);
        drop(probes);
        if let (Some(p), Some(id)) = (lock(&self.probes).as_mut(), cgroup_id)
            && let Err(e) = p.untrack(id)
        {
            tracing::warn!(container_id, "telemetry: {e}");
        }
    }

    /// One periodic round: samples every live container, ages finished ones out, and returns
    /// the samples that changed since they were last reported (for the master). Blocking.
    pub fn sample_round(&self) -> Vec<TaskUsage> {
        let started = clock::now().mono;
        let probes = lock(&self.probes);
        let running = probes.as_ref().and_then(|p| p.running().ok()).unwrap_or_default();
        let mut changed = Vec::new();
        let mut containers = lock(&self.containers);
        for c in containers.values_mut() {
            if c.ended.is_some() {
                continue;
            }
            let (mut usage, stats) = sample(probes.as_ref(), &running, c, false);
            let now = clock::now().mono;
            usage.cpus_usage = match c.rate_base {
                Some((at, cpu)) if now > at => {
                    ((usage.cpus_total_time_secs - cpu) / (now - at).as_secs_f64()).max(0.0)
                }
                _ => 0.0,
            };
            c.rate_base = Some((now, usage.cpus_total_time_secs));
            c.last_stats = stats.or(c.last_stats);
            if c.reported.as_ref().is_none_or(|r| moved(r, &usage)) {
                c.reported = Some(usage.clone());
                changed.push(usage.clone());
            }
            c.last = Some(usage);
        }
        // Finished containers: report their last sample once, then keep them a while.
        let now = clock::now().mono;
        for c in containers.values_mut() {
            if c.ended.is_some()
                && let Some(last) = &c.last
                && c.reported.as_ref() != Some(last)
            {
                c.reported = Some(last.clone());
                changed.push(last.clone());
            }
        }
        let mut finished: Vec<(Instant, String)> =
            containers.iter().filter_map(|(id, c)| c.ended.map(|e| (e, id.clone()))).collect();
        finished.sort();
        let excess = finished.len().saturating_sub(MAX_FINISHED);
        for (i, (ended, id)) in finished.into_iter().enumerate() {
            if i < excess || now.duration_since(ended) > KEEP_FINISHED {
                containers.remove(&id);
            }
        }
        drop(containers);
        drop(probes);
        *lock(&self.last_round) = clock::now().mono.duration_since(started);
        changed
    }

    /// Mesos' `/monitor/statistics`: one entry per live container, counters read now (the CPU
    /// rate is the last periodic one). Blocking.
    pub fn statistics(&self) -> Value {
        let probes = lock(&self.probes);
        let running = probes.as_ref().and_then(|p| p.running().ok()).unwrap_or_default();
        let mut containers = lock(&self.containers);
        let entries: Vec<Value> = containers
            .values_mut()
            .filter(|c| c.ended.is_none())
            .map(|c| {
                let (mut usage, _) = sample(probes.as_ref(), &running, c, true);
                usage.cpus_usage = c.last.as_ref().map_or(0.0, |l| l.cpus_usage);
                let stats = corral_wire::mesos::json::to_value(&usage.to_statistics());
                json!({
                    "framework_id": c.labels.framework_id,
                    "executor_id": c.labels.executor_id.as_deref().unwrap_or(&c.labels.task_id),
                    "executor_name": c.labels.name,
                    "source": c.labels.task_id,
                    "statistics": stats,
                })
            })
            .collect();
        Value::Array(entries)
    }

    /// The latest periodic samples, live and finished (for `/metrics` and tests).
    pub fn samples(&self) -> Vec<(TaskUsage, Option<TaskStats>, bool)> {
        lock(&self.containers)
            .values()
            .filter_map(|c| Some((c.last.clone()?, c.last_stats, c.ended.is_none())))
            .collect()
    }

    /// `/metrics`: Prometheus text (OpenMetrics) of every kept container, and the agent's own
    /// telemetry gauges.
    pub fn prometheus(self: &Arc<Self>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Collector(self.clone())));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!("encoding /metrics: {e}");
        }
        out
    }
}

fn load_probes(parent: &Cgroup, parent_level: u32) -> Result<Probes, String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("eBPF needs root (CAP_BPF and CAP_PERFMON)".into());
    }
    let cfg = ebpf::Config {
        cgroup_dir: parent.path().to_path_buf(),
        container_level: parent_level + 1,
        max_tasks: MAX_TRACKED,
    };
    let mut probes = Probes::load(&cfg).map_err(|e| e.to_string())?;
    probes
        .self_test(&parent.path().join(format!("telemetry-self-test-{}", std::process::id())))
        .map_err(|e| e.to_string())?;
    for p in probes.status() {
        if let Some(e) = &p.error {
            tracing::warn!(
                program = p.program,
                hook = p.hook,
                "not attached ({} unavailable): {e}",
                p.feeds
            );
        }
    }
    Ok(probes)
}

/// Whether a sample differs from the one last reported in anything but the timestamp.
fn moved(a: &TaskUsage, b: &TaskUsage) -> bool {
    let mut b = b.clone();
    b.timestamp = a.timestamp;
    b.cpus_usage =
        if (a.cpus_usage - b.cpus_usage).abs() < 0.005 { a.cpus_usage } else { b.cpus_usage };
    *a != b
}

/// Reads one container. With eBPF, a container whose runtime has not moved reuses its last
/// sample's file figures unless `full`.
fn sample(
    probes: Option<&Probes>,
    running: &ebpf::Running,
    c: &Container,
    full: bool,
) -> (TaskUsage, Option<TaskStats>) {
    let stats = probes.and_then(|p| match p.read(c.cgroup_id, running) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("telemetry read: {e}");
            None
        }
    });
    let wall = clock::now().wall_ns as f64 / 1e9;
    if !full
        && let (Some(s), Some(prev), Some(last)) = (&stats, &c.last_stats, &c.last)
        && s == prev
    {
        let mut u = last.clone();
        u.timestamp = wall;
        return (u, stats);
    }
    let mut u = TaskUsage {
        framework_id: c.labels.framework_id.clone(),
        task_id: c.labels.task_id.clone(),
        executor_id: c.labels.executor_id.clone(),
        timestamp: wall,
        cpus_limit: c.limits.cpus,
        mem_limit_bytes: c.limits.mem_bytes,
        ..TaskUsage::default()
    };
    read_cgroup_files(&c.cgroup, &mut u);
    if let Some(s) = &stats {
        u.cpus_total_time_secs = s.oncpu_ns as f64 / 1e9;
        u.ebpf = Some(ebpf_usage(s, c.ended.is_some()));
    }
    (u, stats)
}

/// The counters as the task's: the agent's init (pid 1 of the container, which forks the task's
/// first process and exits last) is not the task, so its fork and, once the container has
/// ended, its exit are not counted.
fn ebpf_usage(s: &TaskStats, init_exited: bool) -> EbpfUsage {
    EbpfUsage {
        context_switches: s.switches,
        involuntary_context_switches: s.involuntary,
        runqueue_waits: s.rq_waits,
        runqueue_wait_secs: s.rq_wait_ns as f64 / 1e9,
        runqueue_latency_p50_secs: ebpf::rq_quantile(&s.rq_hist, 0.5) as f64 / 1e9,
        runqueue_latency_p99_secs: ebpf::rq_quantile(&s.rq_hist, 0.99) as f64 / 1e9,
        page_faults: s.page_faults,
        blk_read_bytes: s.blk_read_bytes,
        blk_write_bytes: s.blk_write_bytes,
        blk_read_ops: s.blk_read_ops,
        blk_write_ops: s.blk_write_ops,
        execs: s.execs,
        forks: s.forks.saturating_sub(1),
        threads_created: s.threads,
        process_exits: s.exits.saturating_sub(u64::from(init_exited)),
        oom_kills: s.oom_kills,
        net_rx_bytes: s.net_rx_bytes,
        net_rx_packets: s.net_rx_packets,
        net_tx_bytes: s.net_tx_bytes,
        net_tx_packets: s.net_tx_packets,
    }
}

/// What the container's cgroup files say: CPU time from `cpu.stat` (its total is the CPU figure
/// when eBPF is off), memory from `memory.current`/`memory.stat` where the memory controller is
/// on, otherwise the resident set of its processes; process and thread counts; CPU pressure.
fn read_cgroup_files(cg: &Cgroup, u: &mut TaskUsage) {
    if let Ok(text) = cg.read("cpu.stat") {
        let kv = cgroup::parse_flat_keyed(&text);
        let get = |k: &str| kv.iter().find(|(n, _)| *n == k).map(|(_, v)| *v as f64 / 1e6);
        u.cpus_total_time_secs = get("usage_usec").unwrap_or(0.0);
        u.cpus_user_time_secs = get("user_usec").unwrap_or(0.0);
        u.cpus_system_time_secs = get("system_usec").unwrap_or(0.0);
        u.cpus_throttled_time_secs = get("throttled_usec");
    }
    if let Ok(text) = cg.read("cpu.pressure") {
        // some avg10=0.00 avg60=0.00 avg300=0.00 total=123
        u.cpus_pressure_waiting_secs = text
            .lines()
            .find(|l| l.starts_with("some "))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|us| us as f64 / 1e6);
    }
    let pids: Vec<u32> = cg
        .read("cgroup.procs")
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    u.processes = pids.len() as u32;
    u.threads = cg.read("cgroup.threads").map(|t| t.lines().count() as u32).unwrap_or(0);
    if let Ok(t) = cg.read("memory.current") {
        u.mem_total_bytes = t.trim().parse().ok();
        if let Ok(text) = cg.read("memory.stat") {
            u.mem_rss_bytes = cgroup::flat_keyed(&text, "anon");
            u.mem_file_bytes = cgroup::flat_keyed(&text, "file");
        }
    } else {
        u.mem_rss_bytes = Some(pids.iter().filter_map(|&p| resident_bytes(p)).sum());
    }
}

/// A process's resident set (`/proc/PID/statm`, second field, in pages).
fn resident_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |v| v as u64)
    })
}

/// Runs [`Telemetry::sample_round`] every interval on its own thread until `stop` is dropped,
/// handing changed samples to `out`.
pub fn spawn_sampler(
    telemetry: Arc<Telemetry>,
    out: tokio::sync::mpsc::UnboundedSender<Vec<TaskUsage>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("corral-telemetry".into()).spawn(move || {
        let interval = telemetry.interval;
        let mut next = clock::now().mono + interval;
        loop {
            let now = clock::now().mono;
            if next > now {
                std::thread::sleep(next - now);
            }
            next += interval;
            let changed = telemetry.sample_round();
            if out.is_closed() {
                return;
            }
            if !changed.is_empty() && out.send(changed).is_err() {
                return;
            }
        }
    })
}

/// The depth of a cgroup below the hierarchy's root, counted from the mount it is under (the
/// mount is the hierarchy's root unless the agent runs in a cgroup namespace, which the
/// self-test then catches).
pub fn level_below(root: &Path, cgroup: &Path) -> u32 {
    cgroup.strip_prefix(root).map_or(0, |rel| rel.components().count() as u32)
}

// ---- /metrics ----

#[derive(Debug)]
struct Collector(Arc<Telemetry>);

type LabelSet = Vec<(&'static str, String)>;

fn labels(u: &TaskUsage) -> LabelSet {
    vec![
        ("task_id", u.task_id.clone()),
        ("framework_id", u.framework_id.clone()),
        ("executor_id", u.executor_id.clone().unwrap_or_default()),
    ]
}

/// The documented metric families: (name, help, unit, kind, value).
type Getter = fn(&TaskUsage) -> Option<f64>;

const COUNTERS: &[(&str, &str, Getter)] = &[
    (
        "corral_task_cpu_seconds",
        "CPU time of the task's threads (scheduler runtime with eBPF, cpu.stat usage otherwise)",
        |u| Some(u.cpus_total_time_secs),
    ),
    ("corral_task_cpu_user_seconds", "User CPU time (cpu.stat)", |u| Some(u.cpus_user_time_secs)),
    ("corral_task_cpu_system_seconds", "System CPU time (cpu.stat)", |u| {
        Some(u.cpus_system_time_secs)
    }),
    ("corral_task_cpu_throttled_seconds", "Time throttled by cpu.max", |u| {
        u.cpus_throttled_time_secs
    }),
    (
        "corral_task_cpu_pressure_waiting_seconds",
        "Time some of the task's threads waited for a CPU (cpu.pressure some total)",
        |u| u.cpus_pressure_waiting_secs,
    ),
    ("corral_task_context_switches", "Times a thread left its CPU (eBPF)", |u| {
        u.ebpf.as_ref().map(|e| e.context_switches as f64)
    }),
    (
        "corral_task_involuntary_context_switches",
        "Times a thread was preempted while runnable (eBPF)",
        |u| u.ebpf.as_ref().map(|e| e.involuntary_context_switches as f64),
    ),
    ("corral_task_page_faults", "User-mode page faults (eBPF)", |u| {
        u.ebpf.as_ref().map(|e| e.page_faults as f64)
    }),
    ("corral_task_block_read_bytes", "Bytes of block reads submitted by the task (eBPF)", |u| {
        u.ebpf.as_ref().map(|e| e.blk_read_bytes as f64)
    }),
    (
        "corral_task_block_write_bytes",
        "Bytes of block writes submitted by the task; later page-cache writeback is not the task's (eBPF)",
        |u| u.ebpf.as_ref().map(|e| e.blk_write_bytes as f64),
    ),
    ("corral_task_block_read_ops", "Block read bios submitted (eBPF)", |u| {
        u.ebpf.as_ref().map(|e| e.blk_read_ops as f64)
    }),
    ("corral_task_block_write_ops", "Block write bios submitted (eBPF)", |u| {
        u.ebpf.as_ref().map(|e| e.blk_write_ops as f64)
    }),
    ("corral_task_execs", "execve calls that succeeded (eBPF)", |u| {
        u.ebpf.as_ref().map(|e| e.execs as f64)
    }),
    (
        "corral_task_forks",
        "New processes the task started (the agent starting its first process is not counted) (eBPF)",
        |u| u.ebpf.as_ref().map(|e| e.forks as f64),
    ),
    ("corral_task_threads_created", "New threads (eBPF)", |u| {
        u.ebpf.as_ref().map(|e| e.threads_created as f64)
    }),
    (
        "corral_task_process_exits",
        "Processes of the task that ended (the agent's init is not counted) (eBPF)",
        |u| u.ebpf.as_ref().map(|e| e.process_exits as f64),
    ),
    ("corral_task_oom_kills", "Processes chosen by the OOM killer (eBPF)", |u| {
        u.ebpf.as_ref().map(|e| e.oom_kills as f64)
    }),
    (
        "corral_task_network_receive_bytes",
        "IP bytes received by the task's sockets (eBPF cgroup_skb)",
        |u| u.ebpf.as_ref().map(|e| e.net_rx_bytes as f64),
    ),
    (
        "corral_task_network_transmit_bytes",
        "IP bytes sent by the task's sockets (eBPF cgroup_skb)",
        |u| u.ebpf.as_ref().map(|e| e.net_tx_bytes as f64),
    ),
    ("corral_task_network_receive_packets", "Packets received (eBPF cgroup_skb)", |u| {
        u.ebpf.as_ref().map(|e| e.net_rx_packets as f64)
    }),
    ("corral_task_network_transmit_packets", "Packets sent (eBPF cgroup_skb)", |u| {
        u.ebpf.as_ref().map(|e| e.net_tx_packets as f64)
    }),
];

const GAUGES: &[(&str, &str, Getter)] = &[
    ("corral_task_cpu_usage_cores", "Cores used over the last sampling interval", |u| {
        Some(u.cpus_usage)
    }),
    ("corral_task_cpu_limit_cores", "The task's cpus", |u| Some(u.cpus_limit)),
    ("corral_task_memory_usage_bytes", "memory.current (where the memory controller is on)", |u| {
        u.mem_total_bytes.map(|v| v as f64)
    }),
    (
        "corral_task_memory_rss_bytes",
        "Anonymous memory (memory.stat), or the processes' resident set",
        |u| u.mem_rss_bytes.map(|v| v as f64),
    ),
    ("corral_task_memory_limit_bytes", "The task's mem", |u| Some(u.mem_limit_bytes as f64)),
    ("corral_task_processes", "Processes in the task's cgroup", |u| Some(f64::from(u.processes))),
    ("corral_task_threads", "Threads in the task's cgroup", |u| Some(f64::from(u.threads))),
];

/// The histogram's first bucket bound: waits under 1 µs share it.
const FIRST_SLOT: usize = 10;

impl prometheus_client::collector::Collector for Collector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let t = &self.0;
        let samples = t.samples();
        let ebpf_on = t.report.source == "ebpf";
        let g = |enc: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
                 name: &str,
                 help: &str,
                 v: f64|
         -> Result<(), std::fmt::Error> {
            let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(m)
        };
        g(
            &mut encoder,
            "corral_agent_telemetry_ebpf",
            "1 when per-task figures come from eBPF, 0 when from cgroup files only",
            if ebpf_on { 1.0 } else { 0.0 },
        )?;
        g(
            &mut encoder,
            "corral_agent_telemetry_round_seconds",
            "How long the last sampling round took",
            lock(&t.last_round).as_secs_f64(),
        )?;
        g(
            &mut encoder,
            "corral_agent_telemetry_containers",
            "Containers in the telemetry table (live and recently finished)",
            samples.len() as f64,
        )?;
        for (name, help, get) in COUNTERS {
            let mut fam = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (u, _, _) in &samples {
                if let Some(v) = get(u) {
                    let l = labels(u);
                    ConstCounter::new(v).encode(fam.encode_family(&l)?)?;
                }
            }
        }
        for (name, help, get) in GAUGES {
            let mut fam = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (u, _, _) in &samples {
                if let Some(v) = get(u) {
                    let l = labels(u);
                    ConstGauge::new(v).encode(fam.encode_family(&l)?)?;
                }
            }
        }
        if ebpf_on {
            let mut fam = encoder.encode_descriptor(
                "corral_task_runqueue_latency_seconds",
                "Time a runnable thread waited for a CPU (eBPF, log2 buckets)",
                None,
                MetricType::Histogram,
            )?;
            for (u, stats, _) in &samples {
                let Some(s) = stats else { continue };
                let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(RQ_SLOTS - FIRST_SLOT + 1);
                buckets.push((
                    (1u64 << FIRST_SLOT) as f64 / 1e9,
                    s.rq_hist[..FIRST_SLOT].iter().sum(),
                ));
                for (i, n) in
                    s.rq_hist.iter().enumerate().skip(FIRST_SLOT).take(RQ_SLOTS - FIRST_SLOT - 1)
                {
                    buckets.push(((1u64 << (i + 1)) as f64 / 1e9, *n));
                }
                buckets.push((f64::INFINITY, s.rq_hist[RQ_SLOTS - 1]));
                let l = labels(u);
                fam.encode_family(&l)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        s.rq_wait_ns as f64 / 1e9,
                        s.rq_waits,
                        &buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu: f64) -> TaskUsage {
        TaskUsage {
            framework_id: "fw".into(),
            task_id: "t".into(),
            timestamp: 1.0,
            cpus_total_time_secs: cpu,
            ..TaskUsage::default()
        }
    }

    #[test]
    fn a_sample_that_only_aged_has_not_moved() {
        let a = usage(1.0);
        let mut b = a.clone();
        b.timestamp = 2.0;
        assert!(!moved(&a, &b));
        b.cpus_total_time_secs = 1.5;
        assert!(moved(&a, &b));
    }

    #[test]
    fn levels_count_components_below_the_mount() {
        let root = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(level_below(root, Path::new("/sys/fs/cgroup/unified/corral-agent-5051")), 1);
        assert_eq!(level_below(root, Path::new("/sys/fs/cgroup/unified/a/b")), 2);
    }

    #[test]
    fn source_summary_names_what_is_missing() {
        let mut r = SourceReport { source: "ebpf", fallback_reason: None, programs: vec![] };
        assert_eq!(r.summary(), "ebpf");
        r.programs.push(ebpf::ProgramStatus {
            program: "on_page_fault_user",
            hook: "page_fault_user",
            feeds: "page faults",
            error: Some("ENOENT".into()),
        });
        assert_eq!(r.summary(), "ebpf (not attached: page_fault_user)");
        let r = SourceReport {
            source: "cgroup",
            fallback_reason: Some("needs root".into()),
            programs: vec![],
        };
        assert_eq!(r.summary(), "cgroup: needs root");
    }
}
