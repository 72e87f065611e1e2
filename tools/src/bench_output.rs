//! `corral bench output`: what the sandbox output path costs the agent, side by side in one
//! run with the plain alternatives.
//!
//! Producers are `dd` processes (one per stream) writing into pipes, as tasks would: with
//! `bs=64` that is one `write(2)` per 64-byte record, with `bs=1M` bulk output. The capture
//! side is this process, so its CPU time (`getrusage(RUSAGE_SELF)`: every thread, io_uring's
//! io-wq workers included) is exactly what the agent would spend. Each engine moves the same
//! records into fresh files in `--dir` (the page cache; files are removed afterwards):
//!
//! - `io_uring splice`: the agent's path (`corral_agent::output`), one ring, batched;
//! - `poll+splice`: the agent's fallback engine;
//! - `read+write per record`: a logger that reads a record and `write(2)`s it (the baseline
//!   the target is stated against);
//! - `read 64K+write`: a buffered copier, the usual good logger.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use corral_agent::output::{Output, Rotation};

#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Concurrent streams (tasks).
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// 64-byte records per stream.
    #[arg(long, default_value_t = 500_000)]
    records: u64,
    /// MiB per stream for the bulk figure.
    #[arg(long, default_value_t = 512)]
    bulk_mib: u64,
    /// Where the files go (their page cache is the target).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only the bulk figure of the agent's engine (for profiling).
    #[arg(long, hide = true)]
    bulk_only: bool,
    /// Rounds; each engine's median is reported (engines alternate within a round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The run with the median CPU time of each engine's rounds.
fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by_key(|r| r.cpu);
    runs.swap_remove(runs.len() / 2)
}

#[allow(clippy::disallowed_methods)] // a benchmark reads the clock
fn now() -> Instant {
    Instant::now()
}

/// This process's CPU time so far (user + system, all threads).
fn cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Engine {
    Uring,
    PollSplice,
    PerRecord,
    Buffered,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Uring => "io_uring splice (agent)",
            Engine::PollSplice => "poll+splice (fallback)",
            Engine::PerRecord => "read+write(2) per record",
            Engine::Buffered => "read 64K + write(2)",
        }
    }
}

/// One measured run.
struct Run {
    wall: Duration,
    cpu: Duration,
    bytes: u64,
}

/// Starts `n` `dd` producers writing `count` blocks of `bs` into pipes.
fn producers(n: usize, bs: &str, count: u64) -> anyhow::Result<Vec<(Child, OwnedFd)>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut c = Command::new("dd")
            .args(["if=/dev/zero", &format!("bs={bs}"), &format!("count={count}"), "status=none"])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting dd (coreutils)")?;
        let pipe: OwnedFd = c.stdout.take().context("dd's stdout")?.into();
        // The size the per-task init gives a task's output pipes.
        let _ = nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        out.push((c, pipe));
    }
    Ok(out)
}

fn measure(engine: Engine, dir: &Path, n: usize, bs: &str, count: u64) -> anyhow::Result<Run> {
    let files: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("stream-{i}"))).collect();
    for f in &files {
        let _ = fs::remove_file(f);
    }
    // Every engine starts from the same page cache: nothing dirty left by the one before.
    nix::unistd::sync();
    // Producers start first and block on full pipes: the clock and the CPU count start with
    // the capture side.
    let procs = producers(n, bs, count)?;
    let (cpu0, t0) = (cpu(), now());
    let mut children = Vec::new();
    match engine {
        Engine::Uring | Engine::PollSplice => {
            let out =
                Output::start_with(Rotation { max_size: 0, keep: 1 }, engine == Engine::Uring)?;
            if engine == Engine::Uring && out.engine() != "io_uring" {
                bail!("io_uring is not available on this host");
            }
            let rt = tokio::runtime::Builder::new_current_thread().build()?;
            let mut drained = Vec::new();
            for ((c, pipe), f) in procs.into_iter().zip(&files) {
                drained.push(out.capture(pipe, f.clone()));
                children.push(c);
            }
            for d in drained {
                rt.block_on(d.wait()).map_err(anyhow::Error::msg)?;
            }
        }
        Engine::PerRecord | Engine::Buffered => {
            let chunk = if engine == Engine::PerRecord { 64 } else { 64 << 10 };
            let mut threads = Vec::new();
            for ((c, pipe), f) in procs.into_iter().zip(&files) {
                children.push(c);
                let path = f.clone();
                threads.push(std::thread::spawn(move || -> std::io::Result<()> {
                    let mut pipe = fs::File::from(pipe);
                    let mut file = fs::File::create(path)?;
                    let mut buf = vec![0u8; chunk];
                    loop {
                        let n = pipe.read(&mut buf)?;
                        if n == 0 {
                            return Ok(());
                        }
                        file.write_all(&buf[..n])?;
                    }
                }));
            }
            for t in threads {
                t.join().map_err(|_| anyhow::anyhow!("copier panicked"))??;
            }
        }
    }
    let (wall, cpu_used) = (t0.elapsed(), cpu().saturating_sub(cpu0));
    for mut c in children {
        c.wait()?;
    }
    let bytes: u64 = files.iter().map(|f| fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    for f in &files {
        let _ = fs::remove_file(f);
    }
    Ok(Run { wall, cpu: cpu_used, bytes })
}

pub fn run(args: OutputArgs) -> anyhow::Result<ExitCode> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("corral-bench-output-{}", std::process::id())),
    };
    fs::create_dir_all(&dir)?;
    let n = args.streams;
    println!(
        "sandbox output path: {n} streams into {} ({} CPUs); capture-side CPU of this process",
        dir.display(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    let engines = [Engine::Uring, Engine::PollSplice, Engine::PerRecord, Engine::Buffered];
    if args.bulk_only {
        let r = measure(Engine::Uring, &dir, n, "1M", args.bulk_mib)?;
        println!("{:?} {:?} {}", r.wall, r.cpu, r.bytes);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "\n64-byte records, one write(2) each by the producer, {} per stream (median of {} rounds):",
        args.records,
        args.rounds.max(1)
    );
    println!(
        "{:<28} {:>10} {:>12} {:>14} {:>10}",
        "engine", "wall s", "records/s", "CPU ns/record", "vs per-rec"
    );
    let rounds = args.rounds.max(1);
    let mut per_record_ns = None;
    let mut rows = Vec::new();
    let mut runs: Vec<Vec<Run>> = engines.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, e) in engines.iter().enumerate() {
            let r = measure(*e, &dir, n, "64", args.records)?;
            if r.bytes != n as u64 * args.records * 64 {
                bail!(
                    "{}: moved {} bytes, expected {}",
                    e.name(),
                    r.bytes,
                    n as u64 * args.records * 64
                );
            }
            runs[i].push(r);
        }
    }
    for (e, rs) in engines.iter().zip(runs) {
        let r = median(rs);
        let records = (n as u64 * args.records) as f64;
        let ns = r.cpu.as_nanos() as f64 / records;
        if *e == Engine::PerRecord {
            per_record_ns = Some(ns);
        }
        rows.push((*e, r.wall, records / r.wall.as_secs_f64(), ns));
    }
    for (e, wall, rate, ns) in &rows {
        let ratio = per_record_ns.map(|b| format!("{:.2}x", ns / b)).unwrap_or_default();
        println!(
            "{:<28} {:>10.2} {:>12.0} {:>14.1} {:>10}",
            e.name(),
            wall.as_secs_f64(),
            rate,
            ns,
            ratio
        );
    }
    println!("\nbulk output (dd bs=1M), {} MiB per stream (median of {rounds}):", args.bulk_mib);
    println!(
        "{:<28} {:>10} {:>12} {:>14} {:>18}",
        "engine", "wall s", "MB/s", "CPU ms/MB", "MB/s min..max"
    );
    let bulk: Vec<Engine> = engines.into_iter().filter(|e| *e != Engine::PerRecord).collect();
    let mut runs: Vec<Vec<Run>> = bulk.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, e) in bulk.iter().enumerate() {
            let r = measure(*e, &dir, n, "1M", args.bulk_mib)?;
            if r.bytes != (n as u64 * args.bulk_mib) << 20 {
                bail!("{}: moved {} bytes", e.name(), r.bytes);
            }
            runs[i].push(r);
        }
    }
    for (e, rs) in bulk.iter().zip(runs) {
        let rate = |r: &Run| r.bytes as f64 / 1e6 / r.wall.as_secs_f64();
        let lo = rs.iter().map(rate).fold(f64::INFINITY, f64::min);
        let hi = rs.iter().map(rate).fold(0.0, f64::max);
        let r = median(rs);
        let mb = r.bytes as f64 / 1e6;
        println!(
            "{:<28} {:>10.2} {:>12.0} {:>14.3} {:>18}",
            e.name(),
            r.wall.as_secs_f64(),
            mb / r.wall.as_secs_f64(),
            r.cpu.as_secs_f64() * 1e3 / mb,
            format!("{lo:.0}..{hi:.0}")
        );
    }
    if args.dir.is_none() {
        let _ = fs::remove_dir(&dir);
    }
    Ok(ExitCode::SUCCESS)
}
