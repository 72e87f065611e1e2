//! Test harness: starts real `corral master` and `corral agent` processes on loopback, each
//! with its own ports, work dir, TLS material and cgroup subtree, and tears them down (tasks
//! and cgroups included) when dropped.
//!
//! The `corral` binary is the one cargo built for this workspace (`target/<profile>/corral`,
//! or `$CORRAL_BIN`). Tests that need what a host may lack (root, a cgroup2 mount) call
//! [`require_agent_host`] first, which prints `SKIP <why>` and returns false there.
#![forbid(unsafe_code)]
// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

pub mod rawhttp;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_tools::client::{self, MasterAddr};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The `corral` binary under test.
pub fn corral_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CORRAL_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/corral
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = dir.join("corral");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p corral-tools`) or set CORRAL_BIN",
        bin.display()
    );
    bin
}

/// `corral run --master <cluster> -- ARGS`, to completion.
pub fn corral_run(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(corral_bin())
        .args(["run", "--master", cluster.master_addr().host_port(), "--"])
        .args(args)
        .output()
        .expect("run corral")
}

/// A port free for both TCP and UDP on 127.0.0.1.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// The cgroup2 mount agents will use (the agent's own detection).
pub fn cgroup_root() -> Option<PathBuf> {
    corral_agent::cgroup::find_root(None).ok()
}

/// Whether agents can run here (root and a cgroup2 mount). Prints `SKIP` with the reason
/// when not, so the skip is visible in the test output.
pub fn require_agent_host(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {test}: agents need root to create cgroups and switch users");
        return false;
    }
    if cgroup_root().is_none() {
        eprintln!("SKIP {test}: no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified");
        return false;
    }
    true
}

/// One started process with its log file.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(self.pid(), sig);
    }

    /// Sends `sig` and waits up to `grace` for exit, then SIGKILLs.
    pub fn stop(&mut self, sig: Signal, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal(sig);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Options for [`Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub agents: usize,
    pub agent_resources: String,
    pub agent_ping_timeout: String,
    pub max_agent_ping_timeouts: u32,
    /// More flags for every agent (after the harness's own; a repeated flag wins).
    pub agent_flags: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            agents: 1,
            agent_resources: "cpus:4;mem:4096;disk:1024;ports:[31000-31100]".into(),
            agent_ping_timeout: "15s".into(),
            max_agent_ping_timeouts: 5,
            agent_flags: Vec::new(),
        }
    }
}

/// A master and agents, as separate processes.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub master: Proc,
    pub master_port: u16,
    master_args: Vec<String>,
    agent_args: Vec<Vec<String>>,
    pub agents: Vec<Proc>,
    /// Each agent's HTTP port (the `port` of its entry in /state).
    pub agent_ports: Vec<u16>,
    /// cgroup subtree of each agent (removed on drop, whatever is left in it killed).
    pub agent_cgroups: Vec<PathBuf>,
    pub tls_dir: PathBuf,
}

impl Cluster {
    /// Starts a master and `opts.agents` agents and waits until all agents are registered.
    pub fn start(opts: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new().prefix("corral-it-").tempdir().expect("tempdir");
        let tls_dir = dir.path().join("tls");
        corral_wire::tls::write_cluster(&tls_dir, &["localhost".into(), "127.0.0.1".into()])
            .expect("tls material");
        let master_port = free_port();
        let master_args = vec![
            "master".to_string(),
            "--ip".into(),
            "127.0.0.1".into(),
            "--port".into(),
            master_port.to_string(),
            "--work-dir".into(),
            dir.path().join("master").display().to_string(),
            "--tls-dir".into(),
            tls_dir.display().to_string(),
            "--agent-ping-timeout".into(),
            opts.agent_ping_timeout.clone(),
            "--max-agent-ping-timeouts".into(),
            opts.max_agent_ping_timeouts.to_string(),
        ];
        let args: Vec<&str> = master_args.iter().map(String::as_str).collect();
        let master = spawn("master", dir.path(), &args);
        let mut cluster = Cluster {
            dir,
            master,
            master_port,
            master_args,
            agent_args: Vec::new(),
            agents: Vec::new(),
            agent_ports: Vec::new(),
            agent_cgroups: Vec::new(),
            tls_dir,
        };
        cluster.wait_http_ready();
        for _ in 0..opts.agents {
            cluster.add_agent_with(&opts.agent_resources, &opts.agent_flags);
        }
        cluster.wait_agents(opts.agents, Duration::from_secs(30));
        cluster
    }

    /// Stops the master (SIGTERM) and starts a new one with the same flags and port; returns
    /// once its HTTP API answers. Its state starts empty: agents re-register by themselves.
    pub fn restart_master(&mut self) {
        self.master.stop(Signal::SIGTERM, Duration::from_secs(10));
        let args: Vec<&str> = self.master_args.iter().map(String::as_str).collect();
        // The old process is gone, but its UDP/TCP port may take a moment to be free.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.master = spawn("master-restarted", self.dir.path(), &args);
            std::thread::sleep(Duration::from_millis(200));
            if !matches!(self.master.child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                break;
            }
        }
        self.wait_http_ready();
    }

    /// Stops agent `i` (SIGTERM: its tasks are killed) and starts it again with the same
    /// flags and work dir.
    pub fn restart_agent(&mut self, i: usize) {
        self.agents[i].stop(Signal::SIGTERM, Duration::from_secs(20));
        let args: Vec<&str> = self.agent_args[i].iter().map(String::as_str).collect();
        self.agents[i] = spawn(&format!("agent-{i}-restarted"), self.dir.path(), &args);
    }

    /// `kill -9` of agent `i`: it gets no chance to clean up. Returns once it is reaped.
    pub fn kill_agent(&mut self, i: usize) {
        self.agents[i].signal(Signal::SIGKILL);
        let _ = self.agents[i].child.wait();
    }

    /// Starts agent `i` again with the same flags, port and work dir (after [`kill_agent`]).
    ///
    /// [`kill_agent`]: Cluster::kill_agent
    pub fn start_agent_again(&mut self, i: usize) {
        let args: Vec<&str> = self.agent_args[i].iter().map(String::as_str).collect();
        self.agents[i] = spawn(&format!("agent-{i}-restarted"), self.dir.path(), &args);
    }

    /// The flags agent `i` was started with.
    pub fn agent_args(&self, i: usize) -> &[String] {
        &self.agent_args[i]
    }

    pub fn master_addr(&self) -> MasterAddr {
        format!("127.0.0.1:{}", self.master_port).parse().expect("valid address")
    }

    pub fn master_quic_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.master_port))
    }

    /// Starts one more agent; returns its index.
    pub fn add_agent(&mut self, resources: &str) -> usize {
        self.add_agent_with(resources, &[])
    }

    /// Starts one more agent with extra flags; returns its index.
    pub fn add_agent_with(&mut self, resources: &str, extra: &[String]) -> usize {
        let i = self.agents.len();
        let port = free_port();
        let parent = format!("corral-it-{}-{port}", std::process::id());
        let work = self.dir.path().join(format!("agent-{i}"));
        let args: Vec<String> = [
            "agent",
            "--master",
            &format!("127.0.0.1:{}", self.master_port),
            "--port",
            &port.to_string(),
            "--advertise-ip",
            "127.0.0.1",
            "--work-dir",
            &work.display().to_string(),
            "--tls-dir",
            &self.tls_dir.display().to_string(),
            "--cgroup-parent",
            &parent,
            "--resources",
            resources,
            // This host's cgroup2 may lack controllers; the VM suite covers strict.
            "--isolation",
            "best-effort",
        ]
        .into_iter()
        .map(String::from)
        .chain(extra.iter().cloned())
        .collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = spawn(&format!("agent-{i}"), self.dir.path(), &argv);
        self.agents.push(agent);
        self.agent_args.push(args);
        self.agent_ports.push(port);
        if let Some(root) = cgroup_root() {
            self.agent_cgroups.push(root.join(parent));
        }
        i
    }

    fn wait_http_ready(&self) {
        let url = self.master_addr().url("/health");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.master_port)).is_ok()
                && block_on(async {
                    reqwest::get(&url).await.map(|r| r.status().is_success()).unwrap_or(false)
                })
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("master did not become ready:\n{}", self.master.log_text());
    }

    /// The master's /state.
    pub fn state(&self) -> serde_json::Value {
        let addr = self.master_addr();
        block_on(async move { client::state(&addr).await }).expect("/state")
    }

    /// Waits until `n` agents are registered and connected.
    pub fn wait_agents(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let st = self.state();
            let active = st["slaves"]
                .as_array()
                .map(|a| a.iter().filter(|s| s["active"] == true).count())
                .unwrap_or(0);
            if active >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let logs: Vec<String> =
            self.agents.iter().map(|a| format!("== {}\n{}", a.name, a.log_text())).collect();
        panic!("{n} agents did not register in {timeout:?}\n{}", logs.join("\n"));
    }

    /// The master's id for agent `i` (matched by its HTTP port).
    pub fn agent_id(&self, i: usize) -> String {
        let port = self.agent_ports[i];
        self.state()["slaves"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["port"] == port))
            .and_then(|s| s["id"].as_str().map(String::from))
            .unwrap_or_else(|| panic!("agent {i} (port {port}) is not registered"))
    }

    /// Everything the processes logged, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!("== master\n{}", self.master.log_text());
        for a in &self.agents {
            out.push_str(&format!("\n== {}\n{}", a.name, a.log_text()));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.stop(Signal::SIGTERM, Duration::from_secs(15));
        }
        self.master.stop(Signal::SIGTERM, Duration::from_secs(10));
        for cg in &self.agent_cgroups {
            remove_cgroup_tree(cg);
        }
    }
}

/// Kills everything in a cgroup subtree and removes it (for agents that were SIGKILLed and
/// could not clean up).
pub fn remove_cgroup_tree(dir: &Path) {
    if let Err(e) = corral_agent::cgroup::Cgroup::new(dir).destroy_tree(Duration::from_secs(10)) {
        eprintln!("cannot remove {}: {e}", dir.display());
    }
}

/// Whether any process in the cgroup subtree is alive.
pub fn cgroup_populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Starts `corral ARGS...` with output to `<dir>/<name>.log`.
pub fn spawn(name: &str, dir: &Path, args: &[&str]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(corral_bin())
        .args(args)
        .env("CORRAL_LOG", "info,corral_master=debug,corral_agent=debug")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("start corral");
    Proc { name: name.into(), child, log }
}

/// Runs a future to completion on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}
