//! Accuracy of the eBPF counters, measured for real: each case makes its own cgroup below a
//! test cgroup on the host's cgroup2 mount, loads and attaches the programs, runs a known
//! workload inside the cgroup and compares what the programs counted with what the workload did
//! (and, for CPU time, with the kernel's own `cpu.stat`).
//!
//! `harness = false`: the workloads are this binary run again (`__workload KIND ...`), moved
//! into the case's cgroup by a shell that writes its own pid to `cgroup.procs` and then execs
//! the workload, so nothing but the workload runs there. Needs root, a cgroup2 mount and kernel
//! BTF; without them every case prints `SKIP name: why`. Arguments filter cases by name. The
//! closing line is `N passed, N failed`.

#![allow(clippy::disallowed_methods)] // a test: workloads and cases time themselves

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use corral_agent_ebpf::{Config, Probes, RQ_SLOTS, TaskStats, cgroup_id, rq_quantile};

const WORKLOAD: &str = "__workload";

type Case = fn(&Env);
const CASES: &[(&str, Case)] = &[
    ("half_a_core_for_two_seconds_is_one_cpu_second", cpu_time),
    ("a_hundred_forks_are_a_hundred_forks", forks),
    ("ten_megabytes_over_loopback", network),
    ("run_queue_latency_shifts_up_when_two_hogs_share_a_core", run_queue),
    ("page_faults_and_block_io", faults_and_io),
    ("untracked_cgroups_are_not_counted_and_untrack_frees", untracked),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(WORKLOAD) {
        workload(&args[2..]);
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<_> = CASES
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .collect();
    let env = match Env::new() {
        Ok(env) => env,
        Err(why) => {
            for (name, _) in &selected {
                println!("SKIP {name}: {why}");
            }
            println!("0 passed, 0 failed, {} skipped", selected.len());
            return ExitCode::SUCCESS;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in selected {
        println!("test {name} ...");
        let started = Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&env))) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1?})", started.elapsed());
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
    }
    drop(env);
    println!("{passed} passed, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The test's parent cgroup; cases make children (container level = its level + 1).
struct Env {
    parent: PathBuf,
    level: u32,
}

impl Env {
    fn new() -> Result<Env, String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err("needs root (cgroups and eBPF)".into());
        }
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
        }
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists() && is_cgroup2(p))
            .ok_or("no cgroup2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup")?;
        let parent = root.join(format!("corral-ebpf-accuracy-{}", std::process::id()));
        std::fs::create_dir(&parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        // The mount is the hierarchy's root here (no cgroup namespace): depth = path components.
        let level = 2;
        Ok(Env { parent, level })
    }

    fn probes(&self) -> Probes {
        let cfg =
            Config { cgroup_dir: self.parent.clone(), container_level: self.level, max_tasks: 64 };
        let mut p = Probes::load(&cfg).expect("the programs load and attach");
        for s in p.status() {
            assert!(s.error.is_none(), "{} ({}) did not attach: {:?}", s.program, s.hook, s.error);
        }
        p.self_test(&self.parent.join("self-test")).expect("self-test");
        p
    }

    fn cgroup(&self, name: &str) -> TestCgroup {
        let path = self.parent.join(name);
        std::fs::create_dir(&path).expect("mkdir the case cgroup");
        let id = cgroup_id(&path).expect("cgroup id");
        TestCgroup { path, id }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.parent);
    }
}

fn is_cgroup2(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

struct TestCgroup {
    path: PathBuf,
    id: u64,
}

impl TestCgroup {
    /// Runs this binary's workload `args` inside the cgroup and waits for it.
    fn run(&self, args: &[&str]) {
        let me = std::env::current_exe().expect("current_exe");
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg("echo $$ > \"$1\" && shift && exec \"$@\"")
            .arg("sh")
            .arg(self.path.join("cgroup.procs"))
            .arg(me)
            .arg(WORKLOAD)
            .args(args)
            .stdin(Stdio::null())
            .status()
            .expect("spawn the workload");
        assert!(status.success(), "workload {args:?}: {status}");
        // A reaped process may not have left its CPU yet (its parent is told before its last
        // switch): wait until the cgroup is empty, and a little for that last switch.
        for _ in 0..200 {
            let events =
                std::fs::read_to_string(self.path.join("cgroup.events")).unwrap_or_default();
            if events.contains("populated 0") {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    fn cpu_stat_usec(&self) -> u64 {
        let text = std::fs::read_to_string(self.path.join("cpu.stat")).expect("cpu.stat");
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .expect("usage_usec in cpu.stat")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..200 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("cannot remove {}", self.path.display());
    }
}

fn stats(p: &Probes, cg: &TestCgroup) -> TaskStats {
    p.read(cg.id, &p.running().expect("cpu slots")).expect("map read").expect("tracked")
}

fn cpu_time(env: &Env) {
    let mut p = env.probes();
    let cg = env.cgroup("cpu");
    p.track(cg.id).expect("track");
    let duty = std::env::var("BURN_DUTY").unwrap_or_else(|_| "0.5".into());
    cg.run(&["burn", "1.0", &duty]);
    let s = stats(&p, &cg);
    let ebpf = s.oncpu_ns as f64 / 1e9;
    let kernel = cg.cpu_stat_usec() as f64 / 1e6;
    println!("  on-CPU: eBPF {ebpf:.4} s, cpu.stat {kernel:.4} s, {} switches", s.switches);
    assert!((ebpf - 1.0).abs() <= 0.05, "eBPF saw {ebpf:.4} cpu-seconds, want 1.0 ± 0.05");
    assert!(
        (ebpf - kernel).abs() <= 0.02 * kernel,
        "eBPF {ebpf:.4} s vs cpu.stat {kernel:.4} s: over 2% apart"
    );
    p.untrack(cg.id).expect("untrack");
}

fn forks(env: &Env) {
    let mut p = env.probes();
    let cg = env.cgroup("forks");
    p.track(cg.id).expect("track");
    cg.run(&["fork", "100", "10"]);
    let s = stats(&p, &cg);
    println!("  forks {}, threads {}, execs {}, exits {}", s.forks, s.threads, s.execs, s.exits);
    assert_eq!(s.forks, 100, "forks");
    assert_eq!(s.threads, 10, "threads");
    // The workload's own exec, then /bin/true in each child.
    assert_eq!(s.execs, 101, "execs");
    // The 100 children and the workload itself.
    assert_eq!(s.exits, 101, "exits");
}

fn network(env: &Env) {
    const BYTES: u64 = 10_000_000;
    let mut p = env.probes();
    let cg = env.cgroup("net");
    p.track(cg.id).expect("track");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("addr").to_string();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return n,
                Ok(k) => n += k as u64,
                Err(e) => panic!("read: {e}"),
            }
        }
    });
    cg.run(&["send", &addr, &BYTES.to_string()]);
    assert_eq!(reader.join().expect("reader"), BYTES, "the listener got every byte");
    let s = stats(&p, &cg);
    println!(
        "  tx {} bytes / {} packets, rx {} bytes / {} packets",
        s.net_tx_bytes, s.net_tx_packets, s.net_rx_bytes, s.net_rx_packets
    );
    let off = (s.net_tx_bytes as f64 - BYTES as f64).abs() / BYTES as f64;
    assert!(off <= 0.01, "tx {} bytes for {BYTES} sent: {:.3}% off", s.net_tx_bytes, off * 100.0);
    assert!(s.net_rx_packets > 0, "the sender's ACKs came back in");
}

fn run_queue(env: &Env) {
    let mut p = env.probes();
    let alone = env.cgroup("hog-alone");
    let shared = env.cgroup("hogs-shared");
    p.track(alone.id).expect("track");
    p.track(shared.id).expect("track");
    alone.run(&["hogs", "1", "1.0"]);
    shared.run(&["hogs", "2", "1.0"]);
    let (a, b) = (stats(&p, &alone), stats(&p, &shared));
    let show = |s: &TaskStats| {
        format!(
            "{} waits, mean {:.1} µs, p50 ≤ {} µs, p99 ≤ {} µs",
            s.rq_waits,
            s.rq_wait_ns as f64 / s.rq_waits.max(1) as f64 / 1e3,
            rq_quantile(&s.rq_hist, 0.5) / 1000,
            rq_quantile(&s.rq_hist, 0.99) / 1000
        )
    };
    println!("  one hog on CPU 0: {}", show(&a));
    println!("  two hogs on CPU 0: {}", show(&b));
    let (pa, pb) = (rq_quantile(&a.rq_hist, 0.5), rq_quantile(&b.rq_hist, 0.5));
    assert!(b.rq_waits >= 20, "two hogs on one core wait for each other often");
    assert!(
        pb >= 256_000,
        "two hogs sharing a core wait at least a quarter millisecond at the median"
    );
    assert!(pb >= 8 * pa.max(1), "the median wait shifts up: {pa} ns alone, {pb} ns shared");
    // The histogram counts every wait it measured.
    assert_eq!(b.rq_hist.iter().sum::<u64>(), b.rq_waits);
    assert_eq!(b.rq_hist.len(), RQ_SLOTS);
}

fn faults_and_io(env: &Env) {
    let mut p = env.probes();
    let cg = env.cgroup("faults");
    p.track(cg.id).expect("track");
    let dir = tempfile_dir();
    let file = dir.join("blk");
    cg.run(&["touch-and-write", "64", file.to_str().expect("utf-8 path"), "8"]);
    let s = stats(&p, &cg);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "  page faults {}, block writes {} bytes in {} bios, reads {} bytes",
        s.page_faults, s.blk_write_bytes, s.blk_write_ops, s.blk_read_bytes
    );
    // 64 MiB touched a page at a time, without transparent huge pages (madvise or never here):
    // at least one fault per 4 KiB page.
    assert!(s.page_faults >= 64 * 256, "page faults {}", s.page_faults);
    // 8 MiB written and fsync'ed by the workload: its own thread submits the bios.
    assert!(s.blk_write_bytes >= 8 << 20, "block write bytes {}", s.blk_write_bytes);
}

fn untracked(env: &Env) {
    let mut p = env.probes();
    let cg = env.cgroup("untracked");
    cg.run(&["fork", "3", "0"]);
    assert!(p.read(cg.id, &p.running().expect("slots")).expect("read").is_none());
    p.track(cg.id).expect("track");
    cg.run(&["fork", "3", "0"]);
    assert_eq!(stats(&p, &cg).forks, 3);
    p.untrack(cg.id).expect("untrack");
    assert!(p.read(cg.id, &p.running().expect("slots")).expect("read").is_none(), "entry freed");
    p.untrack(cg.id).expect("untracking twice is fine");
}

/// A directory on the disk the tests run from (block-backed, unlike a tmpfs /tmp).
fn tempfile_dir() -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("accuracy-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

// ---- workloads (run inside a case's cgroup) ----

fn workload(args: &[String]) {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(0) {
        // Burns `cpu` seconds of CPU time at `duty` of one core.
        "burn" => {
            let (cpu, duty): (f64, f64) =
                (arg(1).parse().expect("cpu"), arg(2).parse().expect("duty"));
            let start = Instant::now();
            loop {
                let used = process_cpu();
                if used >= cpu {
                    break;
                }
                if used < duty * start.elapsed().as_secs_f64() {
                    spin(Duration::from_micros(200));
                } else {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        }
        // Forks `n` processes (each execs /bin/true) and starts `t` threads.
        "fork" => {
            let (n, t): (usize, usize) = (arg(1).parse().expect("n"), arg(2).parse().expect("t"));
            for _ in 0..n {
                let s = Command::new("/bin/true").status().expect("spawn /bin/true");
                assert!(s.success());
            }
            let threads: Vec<_> = (0..t).map(|_| std::thread::spawn(|| ())).collect();
            for th in threads {
                th.join().expect("thread");
            }
        }
        // Sends `bytes` bytes to `addr` over TCP.
        "send" => {
            let bytes: usize = arg(2).parse().expect("bytes");
            let mut s = TcpStream::connect(arg(1)).expect("connect");
            let chunk = vec![7u8; 1 << 16];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                s.write_all(&chunk[..n]).expect("write");
                left -= n;
            }
        }
        // `n` threads spinning on CPU 0 for `secs`.
        "hogs" => {
            let (n, secs): (usize, f64) =
                (arg(1).parse().expect("n"), arg(2).parse().expect("secs"));
            let mut set = nix::sched::CpuSet::new();
            set.set(0).expect("cpu 0");
            let hogs: Vec<_> = (0..n)
                .map(|_| {
                    std::thread::spawn(move || {
                        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                            .expect("pin to CPU 0");
                        spin(Duration::from_secs_f64(secs));
                    })
                })
                .collect();
            for h in hogs {
                h.join().expect("hog");
            }
        }
        // Touches `mib` MiB of fresh memory, then writes `wmib` MiB to `path` and fsyncs it.
        "touch-and-write" => {
            let mib: usize = arg(1).parse().expect("mib");
            let mut v = vec![0u8; mib << 20];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v);
            let wmib: usize = arg(3).parse().expect("wmib");
            let mut f = std::fs::File::create(arg(2)).expect("create");
            f.write_all(&v[..wmib << 20]).expect("write");
            f.sync_all().expect("fsync");
        }
        other => panic!("unknown workload {other}"),
    }
}

fn process_cpu() -> f64 {
    let t =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("cputime");
    t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
}

fn spin(d: Duration) {
    let end = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < end {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
