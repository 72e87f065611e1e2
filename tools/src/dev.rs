//! `corral dev`: a local cluster — a standalone master and N agents, each its own child
//! process (so any one can be killed alone), with a throwaway CA in the work dir. Ctrl-C stops
//! the agents (which kill their tasks and remove their cgroups), then the master, and checks
//! that nothing is left behind.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use corral_tools::client::{self, MasterAddr};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 1)]
    agents: u16,
    /// Master port (HTTP and agents); agents' HTTP ports follow it (PORT+1, PORT+2, ...).
    #[arg(long, default_value_t = 5050)]
    port: u16,
    /// Directory for certificates, logs and the agents' sandboxes.
    #[arg(long, default_value = ".corral-dev")]
    work_dir: PathBuf,
    /// Resources each agent offers (Mesos syntax, e.g. `cpus:2;mem:2048`); default: detected.
    #[arg(long)]
    agent_resources: Option<String>,
    /// cgroup2 mount the agents put tasks under (default: detected).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// The agents' isolation policy. A dev machine often lacks cgroup controllers (a hybrid
    /// host's cgroup2 has none), so the default runs anyway and says what is not enforced.
    #[arg(long, value_enum, default_value = "best-effort")]
    isolation: corral_agent::isolation::Policy,
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    cgroup_parent: Option<String>,
}

impl Proc {
    fn pid(&self) -> Option<Pid> {
        self.child.id().map(|p| Pid::from_raw(p as i32))
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns whether it exited on SIGTERM.
    async fn stop(&mut self, grace: Duration) -> bool {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(_) => true,
            Err(_) => {
                eprintln!("corral dev: {} did not stop in {grace:?}; killing it", self.name);
                let _ = self.child.kill().await;
                false
            }
        }
    }
}

fn spawn(name: &str, args: &[String], log: &Path) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("locating the corral binary")?;
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc { name: name.into(), child, log: log.into(), cgroup_parent: None })
}

async fn wait_ready(master: &MasterAddr, agents: usize, procs: &mut [Proc]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("{} exited during start-up ({status}); see {}", p.name, p.log.display());
            }
        }
        if let Ok(st) = client::state(master).await {
            let n = st["slaves"].as_array().map(|a| a.len()).unwrap_or(0);
            if n >= agents {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the cluster did not come up within 30 s; logs are in the work dir");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("creating {}", args.work_dir.display()))?;
    let work = std::fs::canonicalize(&args.work_dir)?;
    let tls = work.join("tls");
    if !tls.join("ca.pem").exists() {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if let Ok(h) = nix::unistd::gethostname()
            && let Ok(h) = h.into_string()
        {
            names.push(h);
        }
        corral_wire::tls::write_cluster(&tls, &names).context("making the dev cluster's CA")?;
    }
    let master_addr: MasterAddr = format!("127.0.0.1:{}", args.port).parse()?;
    // Each dev cluster starts fresh (its agents register anew, under new ids): the previous
    // run's registry would only make the master wait for agents that never come back.
    match std::fs::remove_file(corral_master::shell::registry_path(&work.join("master"))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            bail!("cannot remove the previous dev master's registry: {e}")
        }
        _ => {}
    }
    let master = spawn(
        "master",
        &[
            "master".into(),
            "--ip".into(),
            "127.0.0.1".into(),
            "--port".into(),
            args.port.to_string(),
            "--work-dir".into(),
            work.join("master").display().to_string(),
            "--tls-dir".into(),
            tls.display().to_string(),
        ],
        &work.join("master.log"),
    )?;
    let cgroup_root = corral_agent::cgroup::find_root(args.cgroup_root.as_deref()).ok();
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let port = args.port + 1 + i;
        let parent = format!("corral-dev-agent-{port}");
        let mut a = vec![
            "agent".to_string(),
            "--master".into(),
            master_addr.host_port().into(),
            "--port".into(),
            port.to_string(),
            "--advertise-ip".into(),
            "127.0.0.1".into(),
            "--work-dir".into(),
            work.join(format!("agent-{port}")).display().to_string(),
            "--tls-dir".into(),
            tls.display().to_string(),
            "--cgroup-parent".into(),
            parent.clone(),
            "--isolation".into(),
            args.isolation.as_str().into(),
        ];
        if let Some(r) = &args.agent_resources {
            a.extend(["--resources".into(), r.clone()]);
        }
        if let Some(root) = &args.cgroup_root {
            a.extend(["--cgroup-root".into(), root.display().to_string()]);
        }
        let mut p = spawn(&format!("agent {port}"), &a, &work.join(format!("agent-{port}.log")))?;
        p.cgroup_parent = Some(parent);
        agents.push(p);
    }
    let mut all: Vec<Proc> = Vec::new();
    all.push(master);
    all.append(&mut agents);
    if let Err(e) = wait_ready(&master_addr, usize::from(args.agents), &mut all).await {
        stop_all(&mut all, cgroup_root.as_deref()).await;
        return Err(e);
    }
    println!("Corral dev cluster is up: master {master_addr} with {} agent(s).", args.agents);
    print_isolation(&master_addr).await;
    println!("  web UI:  {master_addr}/");
    println!("  state:   curl {master_addr}/state");
    // How to call this very binary from where the user stands.
    let me = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let cwd = std::env::current_dir().ok()?;
            Some(exe.strip_prefix(&cwd).map(Path::to_path_buf).unwrap_or(exe))
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "corral".into());
    let port_flag = if args.port == 5050 {
        String::new()
    } else {
        format!(" --master {}", master_addr.host_port())
    };
    println!("  run:     {me} run{port_flag} -- echo hello");
    println!("  list:    {me} agents{port_flag}   (also: frameworks, tasks)");
    println!("  usage:   {me} top{port_flag}   (live per-task CPU, memory, run-queue latency)");
    println!("  logs:    {}/*.log", work.display());
    println!("Ctrl-C stops everything.");

    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    let mut code = ExitCode::SUCCESS;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let mut master_died = false;
                for (i, p) in all.iter_mut().enumerate() {
                    if let Ok(Some(status)) = p.child.try_wait() && !p.name.ends_with("(exited)") {
                        eprintln!("corral dev: {} exited ({status}); see {}", p.name, p.log.display());
                        p.name.push_str(" (exited)");
                        master_died |= i == 0;
                    }
                }
                if master_died {
                    code = ExitCode::FAILURE;
                    break;
                }
            }
        }
    }
    eprintln!("corral dev: stopping");
    stop_all(&mut all, cgroup_root.as_deref()).await;
    Ok(code)
}

/// Says, per agent, which limits it does not enforce (from the master's /state).
async fn print_isolation(master: &MasterAddr) {
    let Ok(state) = client::state(master).await else { return };
    for a in state["slaves"].as_array().into_iter().flatten() {
        let iso = &a["isolation"];
        let lines: Vec<&str> = iso["not_enforced"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str())
            .collect();
        let name = a["hostname"].as_str().unwrap_or("?");
        let port = a["port"].as_u64().unwrap_or(0);
        let policy = iso["policy"].as_str().unwrap_or("?");
        if lines.is_empty() {
            println!("  agent {name}:{port} ({policy}): cpu, memory and pids limits enforced");
        } else {
            println!("  agent {name}:{port} ({policy}):");
            for l in lines {
                println!("    {l}");
            }
        }
        if let Some(t) = iso["telemetry"].as_str() {
            println!("    per-task telemetry: {t}; metrics: curl http://127.0.0.1:{port}/metrics");
        }
    }
}

/// Stops agents first (they kill their tasks and remove their cgroups), then the master;
/// removes any cgroup an agent left behind and says so.
async fn stop_all(procs: &mut [Proc], cgroup_root: Option<&Path>) {
    let (master, agents) = procs.split_at_mut(1);
    for a in agents.iter_mut() {
        let clean = a.stop(Duration::from_secs(20)).await;
        if let (Some(root), Some(parent)) = (cgroup_root, &a.cgroup_parent) {
            let cg = corral_agent::cgroup::Cgroup::new(root.join(parent));
            match cg.destroy_tree(Duration::from_secs(10)) {
                Ok(left) if clean && !left.is_empty() => {
                    eprintln!("corral dev: {} left cgroups behind; removed {left:?}", a.name)
                }
                Ok(_) => {}
                Err(e) => eprintln!("corral dev: cannot remove {}: {e}", cg.path().display()),
            }
        }
    }
    for m in master.iter_mut() {
        m.stop(Duration::from_secs(10)).await;
    }
}
