//! `corral bench decline | churn | paper`: the offer path at scale, on the in-process cluster of
//! `corral_tools::sim` (the real master core, simulated agents and frameworks, no network).
//! Each prints a progress line while it runs and then its figures: offer latency inside the
//! master, allocation run time, placements per second, the master's RSS and CPU.

#![allow(clippy::disallowed_methods)] // a benchmark times itself

use std::process::ExitCode;
use std::time::Duration;

use corral_master::core::offer_path::{Latency, Stages};
use corral_master::core::{MasterConfig, Time};
use corral_tools::sim::{Behaviour, Sim, process_usage};
use corral_wire::resources::Resources;

/// Flags shared by the scenarios.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Simulated agents.
    #[arg(long)]
    agents: Option<usize>,
    /// Simulated frameworks.
    #[arg(long)]
    frameworks: Option<usize>,
    /// How long to measure (virtual seconds: idle stretches are skipped).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

const TRANSPORT: &str = "transport: in-process (the master core on a thread of its own, fed over channels by simulated agents and frameworks on another; no QUIC, no HTTP)";

fn config() -> MasterConfig {
    MasterConfig {
        stopwatch: corral_master::mono_ns,
        // Simulated agents answer every ping; the default cadence is kept.
        ..MasterConfig::default()
    }
}

fn merged(sim: &Sim) -> Stages {
    let mut s = Stages::default();
    for f in sim.master.frameworks().values() {
        for st in f.offer_path.values() {
            s.merge(st);
        }
    }
    s
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 { format!("{:.0} µs", ms * 1e3) } else { format!("{ms:.2} ms") }
}

fn quantiles(name: &str, l: &Latency) {
    if l.count() == 0 {
        println!("  {name:<34} no samples");
        return;
    }
    println!(
        "  {name:<34} p50 {:>9}  p99 {:>9}  p999 {:>9}  max {:>9}  (n={})",
        ms(l.quantile(0.5)),
        ms(l.quantile(0.99)),
        ms(l.quantile(0.999)),
        ms(l.max()),
        l.count()
    );
}

fn footer(sim: &Sim, wall: Duration, cpu0: Duration, master0: Duration) {
    let stages = merged(sim);
    quantiles("offer latency (available → offer)", &stages.offered);
    quantiles("allocation run", &sim.master.allocation_run);
    quantiles("offer → accept", &stages.accepted);
    quantiles("offer → decline", &stages.declined);
    quantiles("accept → TASK_RUNNING", &stages.running);
    let master = sim.master_time - master0;
    println!(
        "  master thread busy: {:.2} s of {:.2} s wall ({:.0}%)",
        master.as_secs_f64(),
        wall.as_secs_f64(),
        master.as_secs_f64() / wall.as_secs_f64().max(1e-9) * 100.0
    );
    let (rss, cpu) = process_usage();
    println!(
        "  process (master core + simulation): RSS {:.0} MiB, CPU {:.2} s over {:.2} s wall ({:.0}% of a core); idle time skipped {:.1} s",
        rss as f64 / (1 << 20) as f64,
        (cpu - cpu0).as_secs_f64(),
        wall.as_secs_f64(),
        (cpu - cpu0).as_secs_f64() / wall.as_secs_f64().max(1e-9) * 100.0,
        sim.skipped().as_secs_f64()
    );
}

/// Runs `sim` for `d` (real time, the master on its own thread), printing a progress line
/// every second.
fn run_with_progress(sim: &mut Sim, d: Duration, label: &str, mut done: impl FnMut(&Sim) -> bool) {
    let started = std::time::Instant::now();
    let mut last_print = std::time::Instant::now();
    let mut last_launched = sim.total_counts().launched;
    let label = label.to_string();
    sim.run_threaded(d, |s| {
        if last_print.elapsed() >= Duration::from_secs(1) {
            let c = s.total_counts();
            eprintln!(
                "  [{label}] {:6.1} s: offers {}, launched {} ({:.0}/s), running {}, finished {}",
                started.elapsed().as_secs_f64(),
                c.offers,
                c.launched,
                (c.launched - last_launched) as f64 / last_print.elapsed().as_secs_f64(),
                c.running - c.finished,
                c.finished
            );
            last_launched = c.launched;
            last_print = std::time::Instant::now();
        }
        done(s)
    });
}

fn check(sim: &Sim) -> anyhow::Result<()> {
    match &sim.failure {
        Some(f) => anyhow::bail!("the simulation stopped: {f}"),
        None => Ok(()),
    }
}

/// Mesos' DeclineOffers: every framework declines every offer with an endless filter.
pub fn decline(args: SimArgs) -> anyhow::Result<ExitCode> {
    let (na, nf) = (args.agents.unwrap_or(10_000), args.frameworks.unwrap_or(1_000));
    let rounds = 5u64;
    println!(
        "corral bench decline: {na} agents (cpus:24;mem:4096;ports:[31000-32000]) × {nf} frameworks declining every offer (refuse_seconds: 1 year)"
    );
    println!("{TRANSPORT}");
    let (_, cpu0) = process_usage();
    let master0 = Duration::ZERO;
    let wall = std::time::Instant::now();
    let mut sim = Sim::new(config());
    let agent = Resources::parse("cpus:24;mem:4096;ports:[31000-32000]")?;
    for f in 0..nf {
        sim.add_framework(
            &format!("decline-{f}"),
            "*",
            Behaviour::DeclineAll { refuse: Duration::from_secs(31_536_000) },
        );
    }
    sim.add_agents(na, &agent);
    let want = na as u64 * rounds.min(nf as u64);
    run_with_progress(
        &mut sim,
        args.duration.unwrap_or(Duration::from_secs(600)),
        "decline",
        |s| s.total_counts().declines >= want,
    );
    check(&sim)?;
    let took = wall.elapsed();
    let c = sim.total_counts();
    println!(
        "result: {} offers made and declined ({} rounds of {na}) in {:.2} s wall: {:.0} offers/s",
        c.declines,
        c.declines / na as u64,
        took.as_secs_f64(),
        c.declines as f64 / took.as_secs_f64()
    );
    println!(
        "  anchor: Mesos DeclineOffers/21 (10k × 1k): 1.06 s per allocation cycle of 10,000 offers (2018); here {:.1} ms per 10,000 offers, all master work included",
        took.as_secs_f64() / (c.declines as f64 / 10_000.0) * 1e3
    );
    footer(&sim, took, cpu0, master0);
    Ok(ExitCode::SUCCESS)
}

/// Short tasks at the highest rate the master sustains.
pub fn churn(args: SimArgs) -> anyhow::Result<ExitCode> {
    let (na, nf) = (args.agents.unwrap_or(10_000), args.frameworks.unwrap_or(100));
    let d = args.duration.unwrap_or(Duration::from_secs(10));
    println!(
        "corral bench churn: {na} agents (cpus:16;mem:65536) × {nf} frameworks launching tasks of cpus:1;mem:128 that end at once, for {:.0} s",
        d.as_secs_f64()
    );
    println!("{TRANSPORT}");
    let mut sim = Sim::new(config());
    let task = Resources::parse("cpus:1;mem:128")?;
    for f in 0..nf {
        sim.add_framework(
            &format!("churn-{f}"),
            "*",
            Behaviour::Launch {
                task: task.clone(),
                duration: Duration::ZERO,
                jitter: Duration::ZERO,
                per_offer: None,
                limit: None,
            },
        );
    }
    sim.add_agents(na, &Resources::parse("cpus:16;mem:65536")?);
    // Registration storm first; the clock for the figures starts after it.
    run_with_progress(&mut sim, Duration::from_secs(1), "churn warm-up", |_| false);
    check(&sim)?;
    let (_, cpu0) = process_usage();
    let master0 = sim.master_time;
    let before = sim.total_counts();
    let wall = std::time::Instant::now();
    run_with_progress(&mut sim, d, "churn", |_| false);
    check(&sim)?;
    let took = wall.elapsed();
    let c = sim.total_counts();
    let placed = c.launched - before.launched;
    println!(
        "result: {placed} tasks placed in {:.2} s wall: {:.0} placements/s ({} finished)",
        took.as_secs_f64(),
        placed as f64 / took.as_secs_f64(),
        c.finished - before.finished
    );
    println!(
        "  anchors: Nomad C1M 3,750 placements/s; kube-scheduler CI floor 810 pods/s; target ≥ 50,000/s"
    );
    footer(&sim, took, cpu0, master0);
    Ok(ExitCode::SUCCESS)
}

/// The Mesos NSDI'11 setup: 50,000 agents, 200 frameworks keeping them busy with tasks of
/// 30 ± 10 s; then a fresh framework runs one 10 s task. Its overhead is the time from
/// subscribing to TASK_FINISHED, less the 10 s.
pub fn paper(args: SimArgs) -> anyhow::Result<ExitCode> {
    let (na, nf) = (args.agents.unwrap_or(50_000), args.frameworks.unwrap_or(200));
    let warm = args.duration.unwrap_or(Duration::from_secs(60));
    println!(
        "corral bench paper: {na} agents (cpus:8;mem:4096) × {nf} frameworks each launching one task (cpus:1;mem:512) per offer, tasks of 30 ± 10 s (uniform); after {:.0} s a fresh framework runs one 10 s task",
        warm.as_secs_f64()
    );
    println!("{TRANSPORT}");
    let (_, cpu0) = process_usage();
    let master0 = Duration::ZERO;
    let wall = std::time::Instant::now();
    let mut sim = Sim::new(config());
    let task = Resources::parse("cpus:1;mem:512")?;
    for f in 0..nf {
        sim.add_framework(
            &format!("paper-{f}"),
            "*",
            Behaviour::Launch {
                task: task.clone(),
                duration: Duration::from_secs(30),
                jitter: Duration::from_secs(10),
                per_offer: Some(1),
                limit: None,
            },
        );
    }
    sim.add_agents(na, &Resources::parse("cpus:8;mem:4096")?);
    run_with_progress(&mut sim, warm, "paper", |_| false);
    check(&sim)?;
    let running = sim.master.frameworks().values().map(|f| f.tasks.len()).sum::<usize>();
    let probe_start = sim.now();
    let probe = sim.add_framework(
        "fresh",
        "*",
        Behaviour::Launch {
            task: task.clone(),
            duration: Duration::from_secs(10),
            jitter: Duration::ZERO,
            per_offer: Some(1),
            limit: Some(1),
        },
    );
    run_with_progress(&mut sim, Duration::from_secs(300), "paper probe", |s| {
        s.counts(probe).finished >= 1
    });
    check(&sim)?;
    let done = sim.first_finished(probe);
    let took = wall.elapsed();
    match done {
        Some(Time(end)) => {
            let total = Duration::from_nanos(end - probe_start.0);
            let overhead = total.saturating_sub(Duration::from_secs(10));
            println!(
                "result: the fresh framework's 10 s task finished {:.3} s after it subscribed: overhead {} (anchor: < 1 s in the Mesos paper)",
                total.as_secs_f64(),
                ms(overhead)
            );
        }
        None => println!("result: the fresh framework's task did not finish within 300 s"),
    }
    println!("  cluster at the probe: {running} tasks running on {na} agents");
    footer(&sim, took, cpu0, master0);
    Ok(ExitCode::SUCCESS)
}
