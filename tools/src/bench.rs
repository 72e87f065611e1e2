//! `corral bench launch`: how fast a task starts, measured the way a framework sees it, side by
//! side with Debian's `crun` starting an equivalent OCI bundle, in one run on one machine.
//!
//! A master and an agent run inside this process (so the agent's memory is this process's:
//! `--ballast-mb` grows it, and the launch latency must not grow with it, since the agent
//! never forks). A scheduler subscribes over HTTP like any framework and measures:
//!
//! - latency: ACCEPT sent -> TASK_RUNNING received, one task at a time (every update
//!   acknowledged at once, as a framework would);
//! - throughput: one ACCEPT of `--batch` tasks -> the last TASK_RUNNING;
//! - the same latency again with the ballast allocated and touched;
//! - for contrast, what a fork-based spawn of `/bin/true` costs from this process at both
//!   sizes (std's fork+exec path);
//! - `crun run --detach` of a bundle whose process is busybox `true` in new pid, mount, uts
//!   and ipc namespaces: per-launch latency and launches per second.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use corral_tools::client::{MasterAddr, Scheduler, command_task};
use corral_wire::mesos::v1::scheduler::event;
use corral_wire::mesos::v1::{self, TaskState};
use corral_wire::resources::Resources;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Mesos' DeclineOffers shape: every framework declines every offer.
    Decline(crate::bench_sim::SimArgs),
    /// Short tasks at the highest rate: placements per second.
    Churn(crate::bench_sim::SimArgs),
    /// The Mesos paper's 50,000 agents and 200 frameworks, then a fresh framework's 10 s task.
    Paper(crate::bench_sim::SimArgs),
    /// Status updates over one QUIC connection: updates per second and send → ack latency.
    Updates(crate::bench_sim::UpdatesArgs),
    /// Task launch latency and throughput, side by side with crun.
    Launch(LaunchArgs),
    /// The sandbox output path (io_uring splice) against plain read+write loggers: CPU per
    /// 64-byte record and per MB, and throughput into the page cache.
    Output(crate::bench_output::OutputArgs),
}

#[derive(Debug, clap::Args)]
struct LaunchArgs {
    /// Sequential launches for the latency figures.
    #[arg(long, default_value_t = 300)]
    launches: usize,
    /// Tasks in the one ACCEPT of the throughput figure.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Extra memory the agent's process holds (allocated and touched) for the second latency
    /// run.
    #[arg(long, default_value_t = 4096, value_name = "MB")]
    ballast_mb: usize,
    /// Skip the crun comparison.
    #[arg(long)]
    no_crun: bool,
    /// The isolation policy of the in-process agent (this host may lack controllers).
    #[arg(long, value_enum, default_value = "best-effort")]
    isolation: corral_agent::isolation::Policy,
}

#[allow(clippy::disallowed_methods)] // a benchmark reads the clock
fn now() -> Instant {
    Instant::now()
}

/// p50, p90, p99, max of `samples` in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort();
    let pick = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1e3
    };
    format!(
        "p50 {:6.2} ms   p90 {:6.2} ms   p99 {:6.2} ms   max {:6.2} ms   (n={})",
        pick(0.50),
        pick(0.90),
        pick(0.99),
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    )
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchCommand::Launch(a) => launch(a).await,
        BenchCommand::Decline(a) => {
            tokio::task::spawn_blocking(move || crate::bench_sim::decline(a)).await?
        }
        BenchCommand::Churn(a) => {
            tokio::task::spawn_blocking(move || crate::bench_sim::churn(a)).await?
        }
        BenchCommand::Paper(a) => {
            tokio::task::spawn_blocking(move || crate::bench_sim::paper(a)).await?
        }
        BenchCommand::Updates(a) => {
            tokio::task::spawn_blocking(move || crate::bench_sim::updates(a)).await?
        }
        BenchCommand::Output(a) => {
            tokio::task::spawn_blocking(move || crate::bench_output::run(a)).await?
        }
    }
}

/// This process's resident memory, in MB.
fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096 / (1024 * 1024))
        .unwrap_or(0)
}

fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port")
}

#[derive(clap::Parser)]
struct AgentCli {
    #[command(flatten)]
    args: corral_agent::AgentArgs,
}

async fn launch(args: LaunchArgs) -> anyhow::Result<ExitCode> {
    // Not under /tmp: a task's /tmp is its own, and a sandbox under /tmp has to be bound
    // back into it, work a production work dir (/var/lib/corral/agent) does not cause.
    let dir = PathBuf::from(format!("/var/tmp/corral-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = launch_in(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn launch_in(args: &LaunchArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let tls = dir.join("tls");
    corral_wire::tls::write_cluster(&tls, &["localhost".into(), "127.0.0.1".into()])?;
    let port = free_port()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let master_args = corral_tools::sim_quic::loopback_master_args(port, &dir.join("master"), &tls)
        .map_err(anyhow::Error::msg)?;
    let master = tokio::spawn(corral_master::run(master_args, stopped(stop_rx.clone())));
    let cgroup_parent = format!("corral-bench-{}", std::process::id());
    let agent_args = AgentCli::try_parse_from([
        "agent",
        "--master",
        &format!("127.0.0.1:{port}"),
        "--port",
        "0",
        "--work-dir",
        &dir.join("agent").display().to_string(),
        "--tls-dir",
        &tls.display().to_string(),
        "--cgroup-parent",
        &cgroup_parent,
        "--isolation",
        args.isolation.as_str(),
        "--resources",
        "cpus:1000;mem:1000000",
    ])?
    .args;
    let agent = tokio::spawn(corral_agent::run_until(agent_args, stopped(stop_rx.clone())));
    let addr: MasterAddr = format!("127.0.0.1:{port}").parse()?;

    let outcome = measure(args, &addr).await;
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = agent.await {
        eprintln!("bench: agent: {e}");
    }
    if let Ok(Err(e)) = master.await {
        eprintln!("bench: master: {e}");
    }
    outcome?;
    if !args.no_crun {
        crun(args, dir).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(args: &LaunchArgs, addr: &MasterAddr) -> anyhow::Result<()> {
    // Wait for the agent to register.
    let deadline = now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = corral_tools::client::state(addr).await
            && s["slaves"].as_array().is_some_and(|a| !a.is_empty())
        {
            let iso = &s["slaves"][0]["isolation"];
            println!(
                "agent isolation: {} (namespaces: {}; not enforced: {})",
                iso["policy"].as_str().unwrap_or("?"),
                iso["namespaces"],
                iso["not_enforced"].as_array().map(|a| a.len()).unwrap_or(0)
            );
            break;
        }
        if now() > deadline {
            bail!("the agent did not register in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = v1::FrameworkInfo {
        user: "root".into(),
        name: "corral-bench".into(),
        ..Default::default()
    };
    let mut sched = Scheduler::subscribe(addr, info).await.context("subscribing")?;
    let mut seq = 0usize;

    // Warm up (page cache, first connections), then the latency run.
    latency(&mut sched, &mut seq, 20).await?;
    let rss_before = rss_mb();
    let (mut start, mut lat) = latency(&mut sched, &mut seq, args.launches).await?;
    println!("launch latency, one task at a time, task `true`:");
    if !start.is_empty() {
        // Only a task not running 50 ms after its init started gets a TASK_STARTING.
        println!(
            "  corral ACCEPT -> TASK_STARTING, agent RSS {rss_before:>5} MB: {}",
            summary(&mut start)
        );
    }
    println!(
        "  corral ACCEPT -> TASK_RUNNING,  agent RSS {rss_before:>5} MB: {}",
        summary(&mut lat)
    );
    let fork_small = fork_exec_cost(50)?;

    let mut ballast = vec![0u8; args.ballast_mb * 1024 * 1024];
    for i in (0..ballast.len()).step_by(4096) {
        ballast[i] = 1;
    }
    let rss_big = rss_mb();
    let (_, mut lat_big) = latency(&mut sched, &mut seq, args.launches).await?;
    println!(
        "  corral ACCEPT -> TASK_RUNNING,  agent RSS {rss_big:>5} MB: {}",
        summary(&mut lat_big)
    );
    let fork_big = fork_exec_cost(50)?;
    std::hint::black_box(&ballast);
    drop(ballast);
    println!("for contrast, fork+exec of /bin/true from the same process (std's fork path):");
    println!("  at RSS {rss_before:>5} MB: {}", summary(&mut fork_small.clone()));
    println!("  at RSS {rss_big:>5} MB: {}", summary(&mut fork_big.clone()));

    let mut offers = offer_round_trips(&mut sched, 200).await?;
    println!(
        "offer latency over HTTP on loopback, DECLINE (refuse_seconds 0) -> the next OFFERS event: {}",
        summary(&mut offers)
    );

    let (n, took) = throughput(&mut sched, &mut seq, args.batch).await?;
    println!(
        "throughput: {n} tasks (`sleep 300`) in one ACCEPT, all TASK_RUNNING after {:.1} ms: {:.0} launches/s",
        took.as_secs_f64() * 1e3,
        n as f64 / took.as_secs_f64()
    );
    let _ = sched.teardown().await;
    Ok(())
}

/// The next offers of one agent (all of them: the allocator may split an agent's resources
/// over several), acknowledging any updates on the way; other agents' offers are declined.
async fn next_offer(sched: &mut Scheduler) -> anyhow::Result<(v1::AgentId, Vec<v1::OfferId>)> {
    loop {
        let ev = next(sched).await?;
        match ev.r#type() {
            event::Type::Offers => {
                let offers = ev.offers.map(|o| o.offers).unwrap_or_default();
                let Some(agent) = offers.first().map(|o| o.agent_id.clone()) else { continue };
                let (mine, others): (Vec<_>, Vec<_>) =
                    offers.into_iter().partition(|o| o.agent_id == agent);
                if !others.is_empty() {
                    sched.decline(others.into_iter().map(|o| o.id).collect(), Some(0.0)).await?;
                }
                return Ok((agent, mine.into_iter().map(|o| o.id).collect()));
            }
            event::Type::Update => ack(sched, ev).await?,
            _ => {}
        }
    }
}

/// `n` times: decline the agent's offers with no filter and time until its resources are
/// offered again. The interval is the scheduler's whole loop as it sees it: the DECLINE call
/// over HTTP, the master recovering the resources and allocating them, and the OFFERS event
/// arriving on the stream.
async fn offer_round_trips(sched: &mut Scheduler, n: usize) -> anyhow::Result<Vec<Duration>> {
    let (_, mut ids) = next_offer(sched).await?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = now();
        sched.decline(std::mem::take(&mut ids), Some(0.0)).await?;
        let (_, again) = next_offer(sched).await?;
        out.push(t0.elapsed());
        ids = again;
    }
    sched.decline(ids, Some(0.0)).await?;
    Ok(out)
}

async fn next(sched: &mut Scheduler) -> anyhow::Result<v1::scheduler::Event> {
    match tokio::time::timeout(Duration::from_secs(30), sched.next_event()).await {
        Ok(Some(Ok(ev))) => Ok(ev),
        Ok(Some(Err(e))) => bail!("{e}"),
        Ok(None) => bail!("the event stream ended"),
        Err(_) => bail!("no event for 30 s"),
    }
}

async fn ack(sched: &Scheduler, ev: v1::scheduler::Event) -> anyhow::Result<()> {
    if let Some(u) = ev.update {
        sched.acknowledge(&u.status).await?;
    }
    Ok(())
}

fn small_task() -> Resources {
    Resources::new().with_scalar("cpus", 0.01).with_scalar("mem", 8.0)
}

/// `n` launches one after the other: ACCEPT -> TASK_STARTING and ACCEPT -> TASK_RUNNING of
/// that task.
async fn latency(
    sched: &mut Scheduler,
    seq: &mut usize,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut starting, mut running) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Offers that arrive while a launch is in flight are kept for the next one, as a
    // framework with more work would: declining them only to get them back would put offer
    // round trips in front of the update being measured.
    let mut stash: Vec<v1::Offer> = Vec::new();
    for _ in 0..n {
        let (agent, offers) = match stash.first().map(|o| o.agent_id.clone()) {
            Some(agent) => {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    stash.drain(..).partition(|o| o.agent_id == agent);
                stash = rest;
                (agent, mine.into_iter().map(|o| o.id).collect())
            }
            None => next_offer(sched).await?,
        };
        *seq += 1;
        let id = format!("bench-{seq}");
        let task = command_task(&id, &id, &agent, &["true".into()], &small_task());
        let t0 = now();
        sched.launch(offers, vec![task], Some(0.0)).await?;
        loop {
            let ev = next(sched).await?;
            if ev.r#type() != event::Type::Update {
                if let (event::Type::Offers, Some(o)) = (ev.r#type(), ev.offers) {
                    stash.extend(o.offers);
                }
                continue;
            }
            let Some(u) = &ev.update else { continue };
            let (task_id, state) = (u.status.task_id.value.clone(), u.status.state());
            if task_id == id && state == TaskState::TaskStarting {
                starting.push(t0.elapsed());
            }
            if task_id == id && state == TaskState::TaskRunning {
                running.push(t0.elapsed());
                ack(sched, ev).await?;
                break;
            }
            if task_id == id && corral_wire::mesos::is_terminal(state) {
                bail!("task {id} ended {state:?} before it ran: {:?}", u.status.message);
            }
            ack(sched, ev).await?;
        }
    }
    if !stash.is_empty() {
        sched.decline(stash.into_iter().map(|o| o.id).collect(), Some(0.0)).await?;
    }
    Ok((starting, running))
}

/// One ACCEPT of `n` tasks; the time until every one of them was reported RUNNING.
async fn throughput(
    sched: &mut Scheduler,
    seq: &mut usize,
    n: usize,
) -> anyhow::Result<(usize, Duration)> {
    // Offers until one agent's add up to the whole batch (recovered resources come as
    // offers of their own).
    let mut need = Resources::new();
    for _ in 0..n {
        need.add(&small_task());
    }
    let mut have = Resources::new();
    let mut offers = Vec::new();
    let mut agent = None;
    while !have.contains(&need) {
        let ev = next(sched).await?;
        match ev.r#type() {
            event::Type::Offers => {
                for o in ev.offers.map(|o| o.offers).unwrap_or_default() {
                    if agent.get_or_insert_with(|| o.agent_id.clone()) == &o.agent_id {
                        have.add(&Resources::from_mesos(&o.resources)?);
                        offers.push(o.id);
                    } else {
                        sched.decline(vec![o.id], Some(0.0)).await?;
                    }
                }
            }
            event::Type::Update => ack(sched, ev).await?,
            _ => {}
        }
    }
    let agent = agent.expect("offers were taken");
    let ids: Vec<String> = (0..n).map(|i| format!("batch-{}-{i}", *seq)).collect();
    // Tasks that stay up while the batch is measured (ended by the teardown), so their
    // exits' updates and cgroup removals do not mix into the launch figure.
    let argv: Vec<String> = vec!["sleep".into(), "300".into()];
    *seq += 1;
    let tasks = ids.iter().map(|id| command_task(id, id, &agent, &argv, &small_task())).collect();
    let mut pending: std::collections::HashSet<String> = ids.into_iter().collect();
    // Acknowledgements go out concurrently with reading events, as a framework that is busy
    // launching would send them: one at a time, they would pace the reading of the stream.
    let caller = sched.caller();
    let mut acks = tokio::task::JoinSet::new();
    let t0 = now();
    sched.launch(offers, tasks, Some(0.0)).await?;
    while !pending.is_empty() {
        let ev = next(sched).await?;
        if let Some(u) = ev.update {
            let state = u.status.state();
            if state == TaskState::TaskRunning {
                pending.remove(&u.status.task_id.value);
            } else if corral_wire::mesos::is_terminal(state)
                && pending.contains(&u.status.task_id.value)
            {
                bail!(
                    "task {} ended {state:?} before it ran: {}",
                    u.status.task_id.value,
                    u.status.message()
                );
            }
            let caller = caller.clone();
            acks.spawn(async move { caller.acknowledge(&u.status).await });
        }
        while let Some(done) = acks.try_join_next() {
            done??;
        }
    }
    let took = t0.elapsed();
    while let Some(done) = acks.join_next().await {
        done??;
    }
    Ok((n, took))
}

/// What spawning `/bin/true` through std's fork path costs from this process (setting the
/// uid, even to our own, makes std fork instead of posix_spawn).
fn fork_exec_cost(n: usize) -> anyhow::Result<Vec<Duration>> {
    use std::os::unix::process::CommandExt as _;
    let uid = nix::unistd::getuid().as_raw();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = now();
        let mut child = std::process::Command::new("/bin/true").uid(uid).spawn()?;
        out.push(t0.elapsed());
        child.wait()?;
    }
    Ok(out)
}

/// The crun side: an OCI bundle whose process is busybox `true` in new pid, mount, uts and
/// ipc namespaces on the host network (what a corral task gets by default).
async fn crun(args: &LaunchArgs, dir: &Path) -> anyhow::Result<()> {
    let Some(crun) = which("crun") else {
        println!("crun: not installed (apt-get install crun); skipped");
        return Ok(());
    };
    let Some(busybox) =
        ["/bin/busybox", "/usr/bin/busybox"].iter().map(PathBuf::from).find(|p| p.exists())
    else {
        println!(
            "crun: no busybox for the bundle's rootfs (apt-get install busybox-static); skipped"
        );
        return Ok(());
    };
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "sys"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy(&busybox, rootfs.join("bin/busybox"))?;
    let st = std::process::Command::new(&crun).arg("spec").current_dir(&bundle).status()?;
    if !st.success() {
        bail!("crun spec failed: {st}");
    }
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/busybox", "true"]);
    spec["root"]["readonly"] = true.into();
    // Corral tasks inherit the agent's rlimits; so does this container. Without
    // `linux.resources` crun sets no device filter (on cgroup v2 an eBPF program that needs
    // RLIMIT_MEMLOCK raised, which this sandbox refuses); corral sets none either.
    if let Some(p) = spec["process"].as_object_mut() {
        p.remove("rlimits");
    }
    if let Some(l) = spec["linux"].as_object_mut() {
        l.remove("resources");
    }
    // Host network, like a corral task by default.
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network" && n["type"] != "cgroup");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    // crun refuses hybrid cgroup hosts, and its v1 code would write into the machine's v1
    // hierarchies (which belong to its supervisor). There it runs in a private mount
    // namespace whose /sys/fs/cgroup is the host's cgroup2 (the tree corral uses), so it
    // creates a cgroup per container there, as corral does. The loop is bash, timed with
    // $EPOCHREALTIME (no fork for the clock), in one process started once.
    let pure_v2 = corral_agent::cgroup::is_cgroup2(Path::new("/sys/fs/cgroup"));
    let script = dir.join("crun-bench.sh");
    let state_root = dir.join("crun-state");
    std::fs::write(
        &script,
        format!(
            r#"set -eu
if [ {pure_v2} = false ]; then
  mount --make-rprivate /
  mount --bind /sys/fs/cgroup/unified /sys/fs/cgroup
fi
for i in $(seq 1 {n}); do
  t0=$EPOCHREALTIME
  {crun} --root {root} run --detach --bundle {bundle} c-$i
  t1=$EPOCHREALTIME
  echo "${{t0/./}} ${{t1/./}}"
  {crun} --root {root} delete --force c-$i
done
"#,
            n = args.launches + 10,
            crun = crun.display(),
            root = state_root.display(),
            bundle = bundle.display(),
        ),
    )?;
    let mut cmd = if pure_v2 {
        tokio::process::Command::new("bash")
    } else {
        let mut c = tokio::process::Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "bash"]);
        c
    };
    let out = cmd.arg(&script).stdin(Stdio::null()).output().await?;
    if !out.status.success() {
        bail!("crun run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut lat: Vec<Duration> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            Some(Duration::from_micros(b.saturating_sub(a)))
        })
        .skip(10) // warm-up
        .collect();
    let total: Duration = lat.iter().sum();
    println!(
        "crun {}, `crun run --detach` of the bundle (new pid, mount, uts, ipc namespaces; a cgroup each), one at a time:",
        crun_version(&crun)
    );
    println!("  crun: {}", summary(&mut lat));
    println!(
        "  crun: {:.0} launches/s (sequential, not counting `crun delete`)",
        lat.len() as f64 / total.as_secs_f64()
    );
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn crun_version(crun: &Path) -> String {
    std::process::Command::new(crun)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(String::from))
        .unwrap_or_default()
}
