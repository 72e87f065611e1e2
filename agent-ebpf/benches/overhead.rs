//! What the telemetry programs cost, side by side in one run (`cargo bench -p corral-agent-ebpf
//! --bench overhead`; root, cgroup2, BTF):
//!
//! 1. **ns per traced event.** Two threads ping-pong a byte over two pipes, both pinned to one
//!    CPU, so every round trip is two context switches (two runs of the `sched_switch`
//!    program; wakeups are not traced). The same workload runs with no programs loaded, with an
//!    empty program on `sched_switch` (the floor: what running any BTF tracepoint program costs
//!    on this kernel), with Corral's programs attached but the workload's cgroup not tracked
//!    (what every other process on the host pays), and tracked; rounds alternate so drift hits
//!    all alike. The extra time per round trip divided by two is the cost per event; the
//!    kernel's own BPF statistics (run time per program run) are printed beside it.
//! 2. **CPU with 1,000 idle tasks.** 1,000 tracked cgroups with a sleeping process each; the
//!    agent's per-second sampling of them in eBPF mode (one CPU-slot read, then one map read
//!    per container) is timed on this thread's CPU clock, and the programs' own run time over
//!    the same seconds comes from the kernel's statistics.
//!
//! `harness = false`: the workloads are this binary run again (`__pingpong`), moved into a
//! cgroup by a shell first. Flags: `--quick` (fewer rounds), `--tasks N` (default 1000).

#![allow(clippy::disallowed_methods, clippy::print_stdout)] // a benchmark times itself and prints

use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_agent_ebpf::{Config, Probes, enable_run_stats};

const PINGPONG: &str = "__pingpong";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(PINGPONG) {
        let n: u64 = args[2].parse().expect("round trips");
        println!("{}", pingpong(n).as_nanos());
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let tasks: usize = args
        .iter()
        .position(|a| a == "--tasks")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(1000);
    if !nix::unistd::Uid::effective().is_root() {
        println!("SKIP overhead: needs root (cgroups and eBPF)");
        return;
    }
    let root = PathBuf::from(
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .find(|p| Path::new(p).join("cgroup.procs").exists())
            .expect("a cgroup2 mount"),
    );
    let parent = root.join(format!("corral-ebpf-bench-{}", std::process::id()));
    std::fs::create_dir(&parent).expect("mkdir the bench cgroup");
    let result = std::panic::catch_unwind(|| {
        println!(
            "machine: {} CPUs, kernel {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
        );
        per_event(&parent, if quick { 3 } else { 7 }, if quick { 50_000 } else { 200_000 });
        idle_tasks(&parent, tasks, if quick { 3 } else { 10 });
    });
    remove_tree(&parent);
    if result.is_err() {
        std::process::exit(1);
    }
}

fn config(parent: &Path) -> Config {
    Config { cgroup_dir: parent.to_path_buf(), container_level: 2, max_tasks: 16384 }
}

fn mkdir(parent: &Path, name: &str) -> (PathBuf, u64) {
    let p = parent.join(name);
    std::fs::create_dir(&p).expect("mkdir");
    let id = std::fs::metadata(&p).expect("stat").ino();
    (p, id)
}

/// Runs `n` ping-pong round trips inside `cgroup`; returns the elapsed time the workload saw.
fn run_pingpong(cgroup: &Path, n: u64) -> Duration {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg("echo $$ > \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg(cgroup.join("cgroup.procs"))
        .arg(std::env::current_exe().expect("current_exe"))
        .args([PINGPONG, &n.to_string()])
        .output()
        .expect("spawn the workload");
    assert!(out.status.success(), "workload: {}", String::from_utf8_lossy(&out.stderr));
    let ns: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("ns");
    Duration::from_nanos(ns)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn per_event(parent: &Path, rounds: usize, n: u64) {
    println!(
        "\n== ns per traced event: ping-pong over pipes, two threads on CPU 0, {n} round trips × {rounds} rounds"
    );
    let (untracked, _) = mkdir(parent, "pp-untracked");
    let (tracked, tracked_id) = mkdir(parent, "pp-tracked");
    let (mut off, mut on_untracked, mut on_tracked) = (Vec::new(), Vec::new(), Vec::new());
    let mut floor = Vec::new();
    let per_rt = |d: Duration| d.as_nanos() as f64 / n as f64;
    let mut kernel = (0u64, 0u64);
    let mut per_program: std::collections::BTreeMap<&'static str, (u64, u64)> = Default::default();
    for _ in 0..rounds {
        off.push(per_rt(run_pingpong(&untracked, n)));
        let empty = corral_agent_ebpf::load_floor().expect("load the floor program");
        floor.push(per_rt(run_pingpong(&untracked, n)));
        drop(empty);
        let mut probes = Probes::load(&config(parent)).expect("load");
        probes.track(tracked_id).expect("track");
        on_untracked.push(per_rt(run_pingpong(&untracked, n)));
        let stats = enable_run_stats().expect("BPF statistics");
        let before = probes.run_stats();
        on_tracked.push(per_rt(run_pingpong(&tracked, n)));
        let after = probes.run_stats();
        drop(stats);
        for ((name, c1, t1), (_, c0, t0)) in after.iter().zip(before.iter()) {
            if name.starts_with("on_sched") {
                kernel.0 += c1 - c0;
                kernel.1 += t1 - t0;
                let e = per_program.entry(name).or_default();
                e.0 += c1 - c0;
                e.1 += t1 - t0;
            }
        }
        drop(probes);
    }
    let (a, b, c) = (median(off), median(on_untracked), median(on_tracked));
    let f = median(floor);
    // Each round trip is two context switches: two runs of the sched_switch program.
    println!("  {:<44} {:>10.0} ns per round trip", "no programs", a);
    println!(
        "  {:<44} {:>10.0} ns per round trip  (+{:.0} ns, {:.1} ns per event)",
        "floor: an empty program on sched_switch",
        f,
        f - a,
        (f - a) / 2.0
    );
    println!(
        "  {:<44} {:>10.0} ns per round trip  (+{:.0} ns, {:.1} ns per event)",
        "programs attached, workload not tracked",
        b,
        b - a,
        (b - a) / 2.0
    );
    println!(
        "  {:<44} {:>10.0} ns per round trip  (+{:.0} ns, {:.1} ns per event)",
        "programs attached, workload tracked",
        c,
        c - a,
        (c - a) / 2.0
    );
    if kernel.0 > 0 {
        println!(
            "  kernel BPF statistics, sched programs while tracked: {} runs, {:.1} ns per run",
            kernel.0,
            kernel.1 as f64 / kernel.0 as f64
        );
    }
    for (name, (runs, ns)) in per_program.iter().filter(|(_, (r, _))| *r > 0) {
        println!("    {name:<24} {runs:>9} runs  {:>7.1} ns per run", *ns as f64 / *runs as f64);
    }
    println!("  target: <= 50 ns per event");
}

fn idle_tasks(parent: &Path, tasks: usize, seconds: u64) {
    println!(
        "\n== {tasks} idle tracked tasks (a sleeping process each), sampled once a second for {seconds} s"
    );
    let mut probes = Probes::load(&config(parent)).expect("load");
    let idle = parent.join("idle");
    std::fs::create_dir(&idle).expect("mkdir");
    let mut ids = Vec::with_capacity(tasks);
    let mut sleepers: Vec<Child> = Vec::with_capacity(tasks);
    for i in 0..tasks {
        let (p, id) = mkdir(&idle, &format!("t{i}"));
        probes.track(id).expect("track");
        ids.push(id);
        sleepers.push(
            Command::new("/bin/sh")
                .arg("-c")
                .arg("echo $$ > \"$1\" && exec sleep 3600")
                .arg("sh")
                .arg(p.join("cgroup.procs"))
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn a sleeper"),
        );
    }
    // Idle means idle: let the spawn storm settle first.
    std::thread::sleep(Duration::from_secs(2));
    let stats = enable_run_stats().expect("BPF statistics");
    let before = probes.run_stats();
    let mut sample_cpu = Duration::ZERO;
    let started = Instant::now();
    for s in 0..seconds {
        let t0 = thread_cpu();
        let running = probes.running().expect("cpu slots");
        for id in &ids {
            std::hint::black_box(probes.read(*id, &running).expect("read"));
        }
        sample_cpu += thread_cpu() - t0;
        let next = Duration::from_secs(s + 1);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let wall = started.elapsed();
    let after = probes.run_stats();
    drop(stats);
    let (runs, ns): (u64, u64) = after
        .iter()
        .zip(before.iter())
        .map(|((_, c1, t1), (_, c0, t0))| (c1 - c0, t1 - t0))
        .fold((0, 0), |(a, b), (c, t)| (a + c, b + t));
    let share = |d: f64| d / wall.as_nanos() as f64 * 100.0;
    println!(
        "  sampling ({} map reads a second):  {:.3} ms a second = {:.3}% of a core",
        tasks,
        sample_cpu.as_secs_f64() * 1e3 / seconds as f64,
        share(sample_cpu.as_nanos() as f64)
    );
    println!(
        "  programs (all attached, whole host):  {runs} runs, {:.3} ms a second = {:.3}% of a core",
        ns as f64 / 1e6 / wall.as_secs_f64(),
        share(ns as f64)
    );
    println!(
        "  total: {:.3}% of a core; target: <= 0.5%",
        share(sample_cpu.as_nanos() as f64 + ns as f64)
    );
    for mut c in sleepers {
        let _ = c.kill();
        let _ = c.wait();
    }
    for id in ids {
        let _ = probes.untrack(id);
    }
}

fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("thread cputime");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// Two threads on CPU 0 pass a byte back and forth `n` times.
fn pingpong(n: u64) -> Duration {
    let pin = || {
        let mut set = nix::sched::CpuSet::new();
        set.set(0).expect("cpu 0");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin");
    };
    let (mut a_read, mut b_write) = std::io::pipe().expect("pipe");
    let (mut b_read, mut a_write) = std::io::pipe().expect("pipe");
    pin();
    let echo = std::thread::spawn(move || {
        pin();
        let mut byte = [0u8];
        for _ in 0..n {
            b_read.read_exact(&mut byte).expect("read");
            b_write.write_all(&byte).expect("write");
        }
    });
    let started = Instant::now();
    let mut byte = [7u8];
    for _ in 0..n {
        a_write.write_all(&byte).expect("write");
        a_read.read_exact(&mut byte).expect("read");
    }
    let elapsed = started.elapsed();
    echo.join().expect("echo thread");
    elapsed
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..400 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("cannot remove {}", dir.display());
}
