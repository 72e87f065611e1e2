//! What the agent enforces on a task, and how it finds out what the host lets it enforce.
//!
//! - At start, [`setup`] enables the controllers the agent wants (`cpu`, `memory`, `pids`,
//!   `io`) down the path from the cgroup2 root to the agent's own cgroup, one
//!   `cgroup.subtree_control` at a time, and reads back what its containers will really get.
//!   Under `--isolation strict` a missing `cpu`, `memory` or `pids` controller stops the agent
//!   with the controller and the file that showed it missing; under `best-effort` the agent
//!   runs and [`Isolation::not_enforced`] says, line by line, what it cannot enforce. Those
//!   lines go into the registration (so into the master's `/state`) and the agent's `/state`.
//! - Per task, [`Limits::for_task`] turns the task's resources and the agent's policy into
//!   interface-file values (pure, unit-tested), and [`apply`] writes the ones whose controller
//!   is enabled.
//! - After a task's init is gone, [`memory_limitation`] reads `memory.events`: an OOM kill
//!   becomes the `REASON_CONTAINER_LIMITATION_MEMORY` failure, with a message naming the limit.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use crate::cgroup::{self, Cgroup, CgroupError};

/// The controllers whose limits `strict` requires.
pub const REQUIRED: [&str; 3] = ["cpu", "memory", "pids"];
/// Every controller the agent uses (`io` only for `io.weight`, which many disks ignore).
pub const WANTED: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// `--isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Refuse to start unless cpu, memory and pids limits can be enforced and tasks can get
    /// their own namespaces.
    Strict,
    /// Run anyway; report exactly which limits are not enforced.
    BestEffort,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Strict => "strict",
            Policy::BestEffort => "best-effort",
        }
    }
}

/// `--task-network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Network {
    /// Tasks share the host's network.
    #[default]
    Host,
    /// Each task gets a fresh network namespace with only loopback.
    Isolated,
}

/// Why the agent cannot start under its isolation policy.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(
        "--isolation strict: the {controller} controller is not available: {why} (use --isolation best-effort to run without {controller} limits)"
    )]
    MissingController { controller: String, why: String },
    #[error(
        "--isolation strict: tasks cannot get their own namespaces: {why} (use --isolation best-effort to run without them)"
    )]
    NoNamespaces { why: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// The limits a task gets besides what its resources say.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitPolicy {
    /// `pids.max` of every task; `None` for no limit.
    pub pids_max: Option<u64>,
    /// Whether tasks may swap (`memory.swap.max` is 0 unless so).
    pub allow_swap: bool,
    /// `memory.high` as a percentage of `memory.max` (reclaim pressure before the OOM killer).
    pub memory_high_percent: Option<u8>,
}

/// What the agent found out at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Isolation {
    pub policy: Policy,
    /// Controllers enabled for the agent's containers.
    pub controllers: Vec<String>,
    /// `(controller, why it is missing)` for each wanted controller that is not enabled.
    pub missing: Vec<(String, String)>,
    /// Whether tasks get pid, mount, uts and ipc namespaces (the agent must be root).
    pub namespaces: bool,
    pub network: Network,
    pub limits: LimitPolicy,
}

impl Isolation {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// One line per limit that is not enforced, e.g.
    /// `memory: not enforced (no memory controller in /sys/fs/cgroup/unified/cgroup.controllers)`.
    pub fn not_enforced(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .missing
            .iter()
            .map(|(c, why)| {
                let what = match c.as_str() {
                    "cpu" => "cpus",
                    "io" => "io weight",
                    other => other,
                };
                format!("{what}: not enforced ({why})")
            })
            .collect();
        if !self.namespaces {
            out.push(
                "namespaces: not isolated (tasks share the agent's pid, mount, uts and ipc namespaces: the agent is not root)"
                    .into(),
            );
        }
        out
    }

    /// Refuses what `strict` does not accept.
    pub fn check(&self) -> Result<(), IsolationError> {
        if self.policy == Policy::BestEffort {
            return Ok(());
        }
        for (controller, why) in &self.missing {
            if REQUIRED.contains(&controller.as_str()) {
                return Err(IsolationError::MissingController {
                    controller: controller.clone(),
                    why: why.clone(),
                });
            }
        }
        if !self.namespaces {
            return Err(IsolationError::NoNamespaces { why: "the agent is not root".into() });
        }
        Ok(())
    }
}

/// Enables [`WANTED`] from `root` down to `agent` (so the agent's children, the containers,
/// get them), and reports what is available. `agent` must be under `root`.
pub fn setup(
    root: &Path,
    agent: &Cgroup,
    policy: Policy,
    namespaces: bool,
    network: Network,
    limits: LimitPolicy,
) -> Result<Isolation, IsolationError> {
    let rel = agent.path().strip_prefix(root).map_err(|_| CgroupError::Parse {
        path: agent.path().to_path_buf(),
        what: format!("not under the cgroup root {}", root.display()),
    })?;
    // Every cgroup from the root down to the agent's: each hands the controllers to the next.
    let mut chain = vec![Cgroup::new(root)];
    let mut here = PathBuf::from(root);
    for c in rel.components() {
        here.push(c);
        chain.push(Cgroup::new(&here));
    }
    let mut missing: Vec<(String, String)> = Vec::new();
    for controller in WANTED {
        if let Err(why) = enable_down(&chain, controller) {
            missing.push((controller.to_string(), why));
        }
    }
    let controllers = agent.subtree_control()?;
    for controller in WANTED {
        if !controllers.iter().any(|c| c == controller)
            && !missing.iter().any(|(c, _)| c == controller)
        {
            let file = agent.file_path("cgroup.subtree_control");
            missing.push((controller.into(), format!("not in {}", file.display())));
        }
    }
    missing.sort_by_key(|(c, _)| WANTED.iter().position(|w| w == c));
    let iso = Isolation { policy, controllers, missing, namespaces, network, limits };
    iso.check()?;
    Ok(iso)
}

/// Enables `controller` in `cgroup.subtree_control` along `chain` (root first, the agent's
/// cgroup last); the error names the file that shows why it cannot be.
fn enable_down(chain: &[Cgroup], controller: &str) -> Result<(), String> {
    for cg in chain {
        let available = cg.controllers().map_err(|e| e.to_string())?;
        if !available.iter().any(|c| c == controller) {
            return Err(format!(
                "no {controller} controller in {}",
                cg.file_path("cgroup.controllers").display()
            ));
        }
        let enabled = cg.subtree_control().map_err(|e| e.to_string())?;
        if enabled.iter().any(|c| c == controller) {
            continue;
        }
        cg.write("cgroup.subtree_control", &format!("+{controller}"))
            .map_err(|e| format!("cannot enable it: {e}{}", busy_hint(&e)))?;
    }
    Ok(())
}

fn busy_hint(e: &CgroupError) -> &'static str {
    match e {
        CgroupError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
            " (the cgroup has processes of its own; controllers can only be handed down from cgroups without processes)"
        }
        _ => "",
    }
}

/// The interface-file values for one task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    /// `cpu.max`: quota and period in microseconds.
    pub cpu_max: Option<(u64, u64)>,
    pub cpu_weight: Option<u64>,
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    pub memory_swap_max: Option<u64>,
    pub pids_max: Option<u64>,
    pub io_weight: Option<u64>,
}

/// The CFS period the agent uses (the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota (as Mesos: 1 ms per period).
pub const MIN_CPU_QUOTA_US: u64 = 1_000;

impl Limits {
    /// `cpus` become a hard quota (`cpu.max`, cpus × period) and a proportional weight
    /// (`cpu.weight`, cpus × 100: one cpu weighs as much as a default cgroup); `mem_mb`
    /// becomes `memory.max` in bytes. Zero or absent resources set no limit of their own.
    pub fn for_task(cpus: f64, mem_mb: f64, policy: &LimitPolicy) -> Limits {
        let mut l = Limits { pids_max: policy.pids_max, ..Limits::default() };
        if cpus > 0.0 {
            let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(MIN_CPU_QUOTA_US);
            l.cpu_max = Some((quota, CPU_PERIOD_US));
            let weight = ((cpus * 100.0).round() as u64).clamp(1, 10_000);
            l.cpu_weight = Some(weight);
            l.io_weight = Some(weight);
        }
        if mem_mb > 0.0 {
            let bytes = (mem_mb * 1024.0 * 1024.0).round() as u64;
            l.memory_max = Some(bytes);
            l.memory_high =
                policy.memory_high_percent.map(|p| bytes / 100 * u64::from(p.clamp(1, 100)));
            if !policy.allow_swap {
                l.memory_swap_max = Some(0);
            }
        }
        l
    }

    /// `(controller, file, value)` for each limit set, in the order they are written.
    pub fn files(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut out = Vec::new();
        if let Some((q, p)) = self.cpu_max {
            out.push(("cpu", "cpu.max", format!("{q} {p}")));
        }
        if let Some(w) = self.cpu_weight {
            out.push(("cpu", "cpu.weight", w.to_string()));
        }
        if let Some(m) = self.memory_max {
            out.push(("memory", "memory.max", m.to_string()));
            // One OOM kill takes the whole container: a task is not left half dead.
            out.push(("memory", "memory.oom.group", "1".into()));
        }
        if let Some(h) = self.memory_high {
            out.push(("memory", "memory.high", h.to_string()));
        }
        if let Some(s) = self.memory_swap_max {
            out.push(("memory", "memory.swap.max", s.to_string()));
        }
        if let Some(p) = self.pids_max {
            out.push(("pids", "pids.max", p.to_string()));
        }
        if let Some(w) = self.io_weight {
            out.push(("io", "io.weight", format!("default {w}")));
        }
        out
    }
}

/// Files a kernel may lack even with the controller enabled (no swap accounting; no io
/// scheduler that reads weights): skipped when absent.
const OPTIONAL_FILES: [&str; 2] = ["memory.swap.max", "io.weight"];

/// Writes the limits whose controller `iso` has enabled into `cg`.
pub fn apply(cg: &Cgroup, limits: &Limits, iso: &Isolation) -> Result<(), CgroupError> {
    for (controller, file, value) in limits.files() {
        if !iso.has(controller) {
            continue;
        }
        match cg.write(file, &value) {
            Ok(()) => {}
            Err(CgroupError::Io { source, .. })
                if OPTIONAL_FILES.contains(&file)
                    && source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The failure message if the kernel's OOM killer acted in `cg` (read before it is removed):
/// Mesos' wording, plus the limit and where it came from.
pub fn memory_limitation(cg: &Cgroup) -> Option<String> {
    let events = cg.read("memory.events").ok()?;
    let kills = cgroup::flat_keyed(&events, "oom_kill").unwrap_or(0)
        + cgroup::flat_keyed(&events, "oom_group_kill").unwrap_or(0);
    if kills == 0 {
        return None;
    }
    let limit = cg.read("memory.max").ok().and_then(|t| t.trim().parse::<u64>().ok());
    let peak = cg.read("memory.peak").ok().and_then(|t| t.trim().parse::<u64>().ok());
    Some(limitation_message(limit, peak))
}

/// `Memory limit exceeded: Requested: 32MB Maximum Used: 32MB ...`.
pub fn limitation_message(limit: Option<u64>, peak: Option<u64>) -> String {
    let mb = |b: Option<u64>| b.map(|b| format!("{}MB", b.div_ceil(1024 * 1024)));
    let mut m = String::from("Memory limit exceeded:");
    if let Some(l) = mb(limit) {
        m.push_str(&format!(" Requested: {l}"));
    }
    if let Some(p) = mb(peak) {
        m.push_str(&format!(" Maximum Used: {p}"));
    }
    m.push_str(" (the kernel's OOM killer stopped the task at its memory.max");
    if let Some(l) = limit {
        m.push_str(&format!(" of {l} bytes"));
    }
    m.push(')');
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn policy() -> LimitPolicy {
        LimitPolicy { pids_max: Some(4096), allow_swap: false, memory_high_percent: None }
    }

    #[test]
    fn limits_from_resources() {
        let l = Limits::for_task(0.5, 32.0, &policy());
        assert_eq!(l.cpu_max, Some((50_000, 100_000)));
        assert_eq!(l.cpu_weight, Some(50));
        assert_eq!(l.memory_max, Some(32 * 1024 * 1024));
        assert_eq!(l.memory_swap_max, Some(0));
        assert_eq!(l.memory_high, None);
        assert_eq!(l.pids_max, Some(4096));
        let files = l.files();
        assert!(files.contains(&("cpu", "cpu.max", "50000 100000".into())));
        assert!(files.contains(&("memory", "memory.oom.group", "1".into())));
        assert!(files.contains(&("io", "io.weight", "default 50".into())));
        // Tiny and huge cpus are clamped to what the kernel accepts.
        let tiny = Limits::for_task(0.001, 0.0, &policy());
        assert_eq!(tiny.cpu_max, Some((MIN_CPU_QUOTA_US, CPU_PERIOD_US)));
        assert_eq!(tiny.cpu_weight, Some(1));
        assert_eq!(tiny.memory_max, None);
        assert_eq!(Limits::for_task(500.0, 0.0, &policy()).cpu_weight, Some(10_000));
        let none = Limits::for_task(0.0, 0.0, &LimitPolicy { pids_max: None, ..policy() });
        assert!(none.files().is_empty());
        let p = LimitPolicy { pids_max: None, allow_swap: true, memory_high_percent: Some(90) };
        let l = Limits::for_task(1.0, 100.0, &p);
        assert_eq!(l.memory_swap_max, None);
        assert_eq!(l.memory_high, Some(100 * 1024 * 1024 / 100 * 90));
    }

    fn iso(controllers: &[&str], missing: &[(&str, &str)], namespaces: bool) -> Isolation {
        Isolation {
            policy: Policy::BestEffort,
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
            missing: missing.iter().map(|(c, w)| (c.to_string(), w.to_string())).collect(),
            namespaces,
            network: Network::Host,
            limits: policy(),
        }
    }

    #[test]
    fn not_enforced_lines_and_the_strict_check() {
        let why = "no memory controller in /sys/fs/cgroup/unified/cgroup.controllers";
        let i = iso(&["cpu", "pids", "io"], &[("memory", why)], true);
        assert_eq!(i.not_enforced(), vec![format!("memory: not enforced ({why})")]);
        assert!(i.check().is_ok(), "best-effort accepts it");
        let strict = Isolation { policy: Policy::Strict, ..i };
        let err = strict.check().unwrap_err().to_string();
        assert!(err.contains("the memory controller is not available"), "{err}");
        assert!(err.contains("/sys/fs/cgroup/unified/cgroup.controllers"), "{err}");
        // io is wanted, not required.
        let io_only = Isolation {
            policy: Policy::Strict,
            ..iso(&["cpu", "memory", "pids"], &[("io", "x")], true)
        };
        assert!(io_only.check().is_ok());
        assert_eq!(io_only.not_enforced(), vec!["io weight: not enforced (x)"]);
        let no_ns =
            Isolation { policy: Policy::Strict, ..iso(&["cpu", "memory", "pids"], &[], false) };
        assert!(no_ns.check().unwrap_err().to_string().contains("namespaces"));
        assert!(no_ns.not_enforced()[0].starts_with("namespaces: not isolated"));
    }

    #[test]
    fn apply_writes_only_enabled_controllers_and_skips_optional_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["cpu.max", "cpu.weight", "memory.max", "memory.oom.group", "pids.max"] {
            fs::write(dir.path().join(f), "").unwrap();
        }
        let cg = Cgroup::new(dir.path());
        let limits = Limits::for_task(2.0, 64.0, &policy());
        // memory.swap.max and io.weight do not exist: skipped, not an error.
        apply(&cg, &limits, &iso(&["cpu", "memory", "pids", "io"], &[], true)).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("cpu.max")).unwrap(), "200000 100000");
        assert_eq!(fs::read_to_string(dir.path().join("memory.max")).unwrap(), "67108864");
        assert_eq!(fs::read_to_string(dir.path().join("pids.max")).unwrap(), "4096");
        // Without the pids controller, pids.max is left alone.
        fs::write(dir.path().join("pids.max"), "max").unwrap();
        apply(&cg, &limits, &iso(&["cpu", "memory"], &[], true)).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("pids.max")).unwrap(), "max");
        // A required file that is missing is an error naming it.
        fs::remove_file(dir.path().join("cpu.weight")).unwrap();
        let err = apply(&cg, &limits, &iso(&["cpu"], &[], true)).unwrap_err().to_string();
        assert!(err.contains("cpu.weight"), "{err}");
    }

    #[test]
    fn oom_kills_become_a_limitation_message() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(dir.path());
        assert_eq!(memory_limitation(&cg), None, "no memory.events: no memory controller");
        fs::write(dir.path().join("memory.events"), "low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\n")
            .unwrap();
        assert_eq!(memory_limitation(&cg), None, "hitting max without a kill is not a failure");
        fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 40\noom 1\noom_kill 1\noom_group_kill 1\n",
        )
        .unwrap();
        fs::write(dir.path().join("memory.max"), "33554432\n").unwrap();
        fs::write(dir.path().join("memory.peak"), "33550000\n").unwrap();
        let m = memory_limitation(&cg).unwrap();
        assert!(m.starts_with("Memory limit exceeded: Requested: 32MB Maximum Used: 32MB"), "{m}");
        assert!(m.contains("memory.max of 33554432 bytes"), "{m}");
        assert_eq!(
            limitation_message(None, None),
            "Memory limit exceeded: (the kernel's OOM killer stopped the task at its memory.max)"
        );
    }

    #[test]
    fn setup_on_fixture_files_enables_down_the_chain() {
        // A fake hierarchy: the root has cpu, memory and io (no pids), the agent's cgroup
        // only cpu and memory.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let agent = Cgroup::new(root.join("corral-agent-1"));
        for (d, have) in
            [(root.to_path_buf(), "cpu memory io\n"), (agent.path().into(), "cpu memory\n")]
        {
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cgroup.controllers"), have).unwrap();
            fs::write(d.join("cgroup.subtree_control"), "").unwrap();
        }
        // Plain files do not behave like cgroupfs (a write replaces the content), so give the
        // agent's cgroup the end state the kernel would show.
        fs::write(agent.file_path("cgroup.subtree_control"), "cpu memory\n").unwrap();
        let lp = policy();
        let i = setup(root, &agent, Policy::BestEffort, true, Network::Host, lp.clone()).unwrap();
        assert_eq!(i.controllers, vec!["cpu", "memory"]);
        let missing: Vec<&str> = i.missing.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(missing, vec!["pids", "io"]);
        assert!(i.missing[0].1.contains("no pids controller in"), "{:?}", i.missing);
        assert!(i.missing[1].1.contains("corral-agent-1/cgroup.controllers"), "{:?}", i.missing);
        let err = setup(root, &agent, Policy::Strict, true, Network::Host, lp).unwrap_err();
        assert!(err.to_string().contains("the pids controller is not available"), "{err}");
    }
}
