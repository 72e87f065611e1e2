//! Per-task telemetry from eBPF, for the Corral agent.
//!
//! The kernel side is C (`bpf/telemetry.bpf.c`, built by clang in `build.rs`): BTF tracepoints
//! for on-CPU time, context switches, run-queue latency, page faults, block I/O, exec/fork/exit
//! and OOM kills, and cgroup_skb programs for network bytes and packets. Everything is counted
//! per container, keyed by the cgroup v2 id of the container's directory (its inode), in a
//! per-CPU hash map the agent fills: [`Probes::track`] when a container's cgroup is made,
//! [`Probes::untrack`] when it is gone, so the map holds only live containers.
//!
//! This crate owns loading and attaching (with aya), the shared types ([`TaskStats`],
//! [`CpuSlot`], mirrored from `bpf/telemetry.h`), reading a container's counters summed over
//! CPUs, and a start-up self-test that proves the programs see a tracked cgroup. The only
//! `unsafe` is the `aya::Pod` marker on the mirrored types (`types`).
#![deny(unsafe_code)]

mod types;

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use aya::{Btf, Ebpf, EbpfLoader};

pub use types::{CpuSlot, RQ_SLOTS, TaskStats};

/// The compiled programs (`bpf/telemetry.bpf.c`).
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/telemetry.bpf.o"));

/// The overhead benchmark's baseline: one per-CPU counter on `sched_switch` (`bpf/floor.bpf.c`).
pub static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor.bpf.o"));

/// Loads and attaches [`FLOOR_OBJECT`] (for the overhead benchmark); detached when dropped.
pub fn load_floor() -> Result<Ebpf, Error> {
    let btf = Btf::from_sys_fs().map_err(|e| Error::Btf(e.to_string()))?;
    let mut ebpf = EbpfLoader::new().btf(Some(&btf)).load(FLOOR_OBJECT).map_err(Error::Load)?;
    attach_tp(&mut ebpf, "floor_sched_switch", "sched_switch", &btf).map_err(|source| {
        Error::Program { name: "floor_sched_switch", tracepoint: "sched_switch", source }
    })?;
    Ok(ebpf)
}

/// Why telemetry from eBPF is not available, or an operation on it failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the kernel's BTF cannot be read (/sys/kernel/btf/vmlinux): {0}")]
    Btf(String),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {name} ({tracepoint}): {source}")]
    Program {
        name: &'static str,
        tracepoint: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cgroup {}: {source}", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container level {0} is outside 1..=16")]
    Level(u32),
    #[error("self-test: {0}")]
    SelfTest(String),
}

/// What to load the programs for.
#[derive(Clone, Debug)]
pub struct Config {
    /// The agent's cgroup (a cgroup2 directory): the network programs are attached here and
    /// apply to every container below it.
    pub cgroup_dir: PathBuf,
    /// The depth of container cgroups below the hierarchy's root (the root is 0).
    pub container_level: u32,
    /// The most containers tracked at once.
    pub max_tasks: u32,
}

/// One program and whether it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStatus {
    pub program: &'static str,
    /// The tracepoint, or `cgroup_skb/ingress|egress`.
    pub hook: &'static str,
    /// The metrics it feeds.
    pub feeds: &'static str,
    /// `None` when attached; otherwise why not.
    pub error: Option<String>,
}

/// The BTF tracepoint programs: (program, tracepoint, what it feeds). `on_sched_switch` is
/// required; without any other the rest still works and the status says what is missing.
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("on_sched_switch", "sched_switch", "cpu time, context switches, run-queue latency"),
    ("on_sched_process_fork", "sched_process_fork", "forks, threads"),
    ("on_sched_process_exec", "sched_process_exec", "execs"),
    ("on_sched_process_exit", "sched_process_exit", "exits, OOM kills"),
    ("on_page_fault_user", "page_fault_user", "page faults"),
    ("on_block_bio_queue", "block_bio_queue", "block I/O"),
];

/// Loaded and attached programs with their maps. Dropping it detaches and unloads them all.
pub struct Probes {
    tasks: PerCpuHashMap<MapData, u64, TaskStats>,
    slots: PerCpuArray<MapData, CpuSlot>,
    untracked_cache: PerCpuArray<MapData, u64>,
    status: Vec<ProgramStatus>,
    cpus: usize,
    /// The cgroup2 mount (the hierarchy's root) and the containers' depth below it: where a
    /// thread's `/proc/PID/cgroup` path leads to its container.
    mount_root: PathBuf,
    level: u32,
    // Last: owns the programs and their links.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").field("status", &self.status).finish_non_exhaustive()
    }
}

/// The containers on a CPU right now, read once per sampling round (see [`Probes::running`]).
#[derive(Clone, Debug, Default)]
pub struct Running {
    /// (container cgroup id, runtime of its thread's current stretch so far, ns).
    pub slots: Vec<(u64, u64)>,
}

impl Probes {
    /// Loads the programs and attaches them. Fails only if the object cannot be loaded at all
    /// or `sched_switch` cannot be attached; any other program that fails is reported in
    /// [`Probes::status`].
    pub fn load(cfg: &Config) -> Result<Probes, Error> {
        if !(1..=16).contains(&cfg.container_level) {
            return Err(Error::Level(cfg.container_level));
        }
        let btf = Btf::from_sys_fs().map_err(|e| Error::Btf(e.to_string()))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("container_level", &cfg.container_level, true)
            .map_max_entries("tasks", cfg.max_tasks.max(1))
            .load(OBJECT)
            .map_err(Error::Load)?;
        let mut status = Vec::new();
        for &(program, tracepoint, feeds) in TRACEPOINTS {
            let r = attach_tp(&mut ebpf, program, tracepoint, &btf);
            if let Err(e) = &r {
                if program == "on_sched_switch" {
                    return Err(Error::Program { name: program, tracepoint, source: clone_err(e) });
                }
                tracing::debug!("{program}: {e:?}");
            }
            status.push(ProgramStatus {
                program,
                hook: tracepoint,
                feeds,
                error: r.err().map(|e| chain(&e)),
            });
        }
        // mark_victim takes the task since Linux 6.8 and its pid before.
        let oom = attach_tp(&mut ebpf, "on_mark_victim_task", "mark_victim", &btf)
            .map(|()| "on_mark_victim_task")
            .or_else(|_| {
                attach_tp(&mut ebpf, "on_mark_victim_pid", "mark_victim", &btf)
                    .map(|()| "on_mark_victim_pid")
            });
        status.push(ProgramStatus {
            program: oom.as_ref().map_or("on_mark_victim_pid", |p| p),
            hook: "mark_victim",
            feeds: "OOM kills",
            error: oom.err().map(|e| chain(&e)),
        });
        let cgroup = File::open(&cfg.cgroup_dir)
            .map_err(|source| Error::Cgroup { path: cfg.cgroup_dir.clone(), source })?;
        for (program, hook, kind) in [
            ("on_skb_ingress", "cgroup_skb/ingress", CgroupSkbAttachType::Ingress),
            ("on_skb_egress", "cgroup_skb/egress", CgroupSkbAttachType::Egress),
        ] {
            let r = (|| {
                let p: &mut CgroupSkb = ebpf
                    .program_mut(program)
                    .ok_or(aya::programs::ProgramError::NotLoaded)?
                    .try_into()?;
                p.load()?;
                // Links (Linux 5.7+) always stack with other programs on the cgroup; the
                // kernel wants no mode flag with them.
                p.attach(&cgroup, kind, CgroupAttachMode::Single).map(drop)
            })();
            status.push(ProgramStatus {
                program,
                hook,
                feeds: "network bytes and packets",
                error: r.err().map(|e| chain(&e)),
            });
        }
        let tasks = ebpf.take_map("tasks").ok_or(Error::Map {
            name: "tasks",
            source: aya::maps::MapError::InvalidName { name: "tasks".into() },
        })?;
        let tasks = PerCpuHashMap::try_from(tasks)
            .map_err(|source| Error::Map { name: "tasks", source })?;
        let slots = ebpf.take_map("cpu_slots").ok_or(Error::Map {
            name: "cpu_slots",
            source: aya::maps::MapError::InvalidName { name: "cpu_slots".into() },
        })?;
        let slots = PerCpuArray::try_from(slots)
            .map_err(|source| Error::Map { name: "cpu_slots", source })?;
        let cache = ebpf.take_map("untracked_cache").ok_or(Error::Map {
            name: "untracked_cache",
            source: aya::maps::MapError::InvalidName { name: "untracked_cache".into() },
        })?;
        let untracked_cache = PerCpuArray::try_from(cache)
            .map_err(|source| Error::Map { name: "untracked_cache", source })?;
        let cpus =
            aya::util::nr_cpus().map_err(|(_, e)| Error::Btf(format!("possible CPUs: {e}")))?;
        // The agent's cgroup is one level above the containers.
        let mut mount_root = cfg.cgroup_dir.clone();
        for _ in 1..cfg.container_level {
            mount_root.pop();
        }
        Ok(Probes {
            tasks,
            slots,
            untracked_cache,
            status,
            cpus,
            mount_root,
            level: cfg.container_level,
            _ebpf: ebpf,
        })
    }

    /// Each program and whether it is attached.
    pub fn status(&self) -> &[ProgramStatus] {
        &self.status
    }

    /// How often each attached program ran and for how long in total (ns), from the kernel's
    /// BPF statistics (`/proc/self/fdinfo` of the program; the counts stay 0 unless statistics
    /// are on, see [`enable_run_stats`]).
    pub fn run_stats(&self) -> Vec<(&'static str, u64, u64)> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let mut out = Vec::new();
        for s in self.status.iter().filter(|s| s.error.is_none()) {
            let Some(Ok(fd)) = self._ebpf.program(s.program).map(|p| p.fd()) else { continue };
            let raw = fd.as_fd().as_raw_fd();
            let Ok(text) = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")) else {
                continue;
            };
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            out.push((s.program, field("run_cnt:"), field("run_time_ns:")));
        }
        out
    }

    /// Starts counting for the container whose cgroup id is `cgroup_id` (from zero).
    pub fn track(&mut self, cgroup_id: u64) -> Result<(), Error> {
        let zeros = PerCpuValues::try_from(vec![TaskStats::default(); self.cpus])
            .map_err(|e| Error::Map { name: "tasks", source: aya::maps::MapError::IoError(e) })?;
        self.tasks
            .insert(cgroup_id, zeros, 0)
            .map_err(|source| Error::Map { name: "tasks", source })?;
        // The programs may have cached it as untracked (a container adopted again).
        let zeros = PerCpuValues::try_from(vec![0u64; self.cpus]).map_err(|e| Error::Map {
            name: "untracked_cache",
            source: aya::maps::MapError::IoError(e),
        })?;
        self.untracked_cache
            .set(0, zeros, 0)
            .map_err(|source| Error::Map { name: "untracked_cache", source })
    }

    /// Stops counting for `cgroup_id` and frees its entry. Untracking an id that is not
    /// tracked is not an error.
    pub fn untrack(&mut self, cgroup_id: u64) -> Result<(), Error> {
        match self.tasks.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(source) => Err(Error::Map { name: "tasks", source }),
        }
    }

    /// Which containers are on a CPU right now, and how much runtime their threads have had
    /// since they came on (from `/proc/PID/schedstat`, at most a scheduler tick behind). Read
    /// once per round and pass to [`Probes::read`], so a task that has not left its CPU since
    /// the last switch still shows its time.
    pub fn running(&self) -> Result<Running, Error> {
        let values =
            self.slots.get(&0, 0).map_err(|source| Error::Map { name: "cpu_slots", source })?;
        let slots = values
            .iter()
            .filter(|s| s.pid != 0)
            .filter_map(|s| {
                let id = self.container_of(s.pid)?;
                let stat = std::fs::read_to_string(format!("/proc/{}/schedstat", s.pid)).ok()?;
                let runtime: u64 = stat.split_whitespace().next()?.parse().ok()?;
                Some((id, runtime.saturating_sub(s.runtime_base)))
            })
            .collect();
        Ok(Running { slots })
    }

    /// The container cgroup id of thread `pid`, from `/proc/PID/cgroup`.
    fn container_of(&self, pid: u64) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        if parts.len() < self.level as usize {
            return None;
        }
        let dir =
            parts[..self.level as usize].iter().fold(self.mount_root.clone(), |p, c| p.join(c));
        cgroup_id(&dir).ok()
    }

    /// The counters of `cgroup_id`, summed over CPUs, with the current stretch of any CPU it
    /// is running on added to `oncpu_ns`. `None` when it is not tracked.
    pub fn read(&self, cgroup_id: u64, running: &Running) -> Result<Option<TaskStats>, Error> {
        let values = match self.tasks.get(&cgroup_id, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(source) => return Err(Error::Map { name: "tasks", source }),
        };
        let mut sum = TaskStats::default();
        for v in values.iter() {
            sum.add(v);
        }
        for &(id, stretch) in &running.slots {
            if id == cgroup_id {
                sum.oncpu_ns += stretch;
            }
        }
        Ok(Some(sum))
    }

    /// Proves that the programs count what happens in a tracked cgroup at the configured
    /// level: makes `scratch` (a cgroup directory at container level), tracks it, runs a shell
    /// that moves itself into it and execs `true`, and expects one exec and some CPU time.
    /// Removes the cgroup again either way.
    pub fn self_test(&mut self, scratch: &Path) -> Result<(), Error> {
        let cg_err = |source| Error::Cgroup { path: scratch.to_path_buf(), source };
        std::fs::create_dir(scratch).map_err(cg_err)?;
        let result = (|| {
            let id = cgroup_id(scratch)?;
            self.track(id)?;
            let procs = scratch.join("cgroup.procs");
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg("echo $$ > \"$1\" && exec /bin/true")
                .arg("sh")
                .arg(&procs)
                .status()
                .map_err(|e| Error::SelfTest(format!("cannot run /bin/sh: {e}")))?;
            if !out.success() {
                return Err(Error::SelfTest(format!("the probe shell failed ({out})")));
            }
            let stats = self.read(id, &self.running()?)?;
            self.untrack(id)?;
            let stats = stats
                .ok_or_else(|| Error::SelfTest("the probe cgroup vanished from the map".into()))?;
            if stats.execs == 0 || stats.oncpu_ns == 0 {
                return Err(Error::SelfTest(format!(
                    "a shell that exec'd in a tracked cgroup was not seen (execs {}, on-CPU {} ns): \
                     is the container level right?",
                    stats.execs, stats.oncpu_ns
                )));
            }
            Ok(())
        })();
        remove_cgroup(scratch);
        result
    }
}

/// Removes an empty cgroup directory, waiting briefly for its last process to be released.
fn remove_cgroup(path: &Path) {
    let mut tries = 0;
    while let Err(e) = std::fs::remove_dir(path) {
        tries += 1;
        if e.kind() == std::io::ErrorKind::NotFound || tries > 400 {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(cgroup = %path.display(), "cannot remove: {e}");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn attach_tp(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoint: &'static str,
    btf: &Btf,
) -> Result<(), aya::programs::ProgramError> {
    let p: &mut BtfTracePoint =
        ebpf.program_mut(program).ok_or(aya::programs::ProgramError::NotLoaded)?.try_into()?;
    p.load(tracepoint, btf)?;
    p.attach().map(drop)
}

/// An error with its sources, `: `-separated (aya's errors keep the errno in a source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn clone_err(e: &aya::programs::ProgramError) -> aya::programs::ProgramError {
    aya::programs::ProgramError::IOError(std::io::Error::other(chain(e)))
}

/// Turns the kernel's per-program run statistics on for as long as the returned fd is open
/// (for benchmarks: they cost a little on every program run).
pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd, Error> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| Error::SelfTest(format!("BPF_ENABLE_STATS: {e}")))
}

/// The cgroup v2 id of a cgroup directory: its inode number.
pub fn cgroup_id(dir: &Path) -> Result<u64, Error> {
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| Error::Cgroup { path: dir.to_path_buf(), source })
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The value of quantile `q` (0..=1) of a run-queue histogram, as the upper bound of the slot
/// it falls in (ns); 0 for an empty histogram.
pub fn rq_quantile(hist: &[u64; RQ_SLOTS], q: f64) -> u64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= want {
            return 1u64 << (i + 1);
        }
    }
    1u64 << RQ_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_slot_upper_bounds() {
        let mut h = [0u64; RQ_SLOTS];
        assert_eq!(rq_quantile(&h, 0.5), 0);
        h[10] = 90; // [1024, 2048) ns
        h[20] = 10; // [1 Mi, 2 Mi) ns
        assert_eq!(rq_quantile(&h, 0.5), 2048);
        assert_eq!(rq_quantile(&h, 0.9), 2048);
        assert_eq!(rq_quantile(&h, 0.91), 2 << 20);
        assert_eq!(rq_quantile(&h, 1.0), 2 << 20);
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_ns() >= a + 2_000_000);
    }
}
