//! A cluster for `corral bench` over the real agent transport: the master as `corral master`
//! runs it (its actor, its QUIC endpoint with mutual TLS, its HTTP server) on a runtime of its
//! own, and many simulated agents in this process, each with its own QUIC connection and
//! certificate handshake, speaking the same rkyv frames a real agent does. Simulated
//! frameworks ([`FrameworkModel`], the same decisions as in [`crate::sim`]) attach to the
//! master's actor in process, the way its HTTP handler does: they get protobuf-encoded
//! RecordIO events and send calls through the actor's queue, so only the HTTP framing of the
//! scheduler API is left out.
//!
//! The master's threads are named `master` and the simulation's `sim`, so their CPU time is
//! reported apart ([`thread_cpu`]).
#![allow(clippy::disallowed_methods)] // a benchmark's clock is real time

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_master::core::offer_path::{Latency, Stages};
use corral_master::core::{CallError, CallResponse, Master, Time};
use corral_master::shell::{Encoding, Handle, Input};
use corral_wire::frame::{DEFAULT_MAX_FRAME, FrameReader, encode_agent};
use corral_wire::mesos::v1::TaskState;
use corral_wire::mesos::v1::scheduler::{Call, Event};
use corral_wire::proto::{AgentMessage, MasterMessage, Registration};
use corral_wire::resources::Resources;
use tokio::sync::{mpsc, oneshot};

use crate::sim::{Behaviour, Counts, FrameworkModel, registration, status_update, task_duration};

/// Agents sharing one client endpoint (one UDP socket).
const AGENTS_PER_ENDPOINT: usize = 256;

/// Simulated agents handshaking at once.
const MAX_HANDSHAKES: usize = 64;

/// Bytes gathered into one stream write by a simulated agent's writer.
const WRITE_BATCH: usize = 256 << 10;

/// Why a cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot prepare the cluster's directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error(transparent)]
    Tls(#[from] corral_wire::tls::TlsError),
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    #[error("invalid master flags: {0}")]
    Flags(String),
    #[error(transparent)]
    Master(#[from] corral_master::shell::MasterError),
}

#[derive(clap::Parser)]
struct MasterCli {
    #[command(flatten)]
    args: corral_master::MasterArgs,
}

/// `corral master` flags for a master on 127.0.0.1:`port` with the given work and TLS dirs,
/// every other flag at its default.
pub fn loopback_master_args(
    port: u16,
    work_dir: &std::path::Path,
    tls_dir: &std::path::Path,
) -> Result<corral_master::MasterArgs, String> {
    use clap::Parser as _;
    let port = port.to_string();
    let (work_dir, tls_dir) = (work_dir.display().to_string(), tls_dir.display().to_string());
    let argv = ["master", "--ip", "127.0.0.1", "--port", &port, "--work-dir", &work_dir];
    MasterCli::try_parse_from(argv.into_iter().chain(["--tls-dir", tls_dir.as_str()]))
        .map(|c| c.args)
        .map_err(|e| e.to_string())
}

/// Counters shared by every simulated agent.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub connected: AtomicU64,
    pub registered: AtomicU64,
    pub updates_sent: AtomicU64,
    pub acks: AtomicU64,
}

/// What the status-update pump of [`QuicCluster::add_pump_agent`] measured.
#[derive(Debug, Default, Clone)]
pub struct PumpStats {
    /// Updates acknowledged since the last [`QuicCluster::reset_pump`].
    pub acked: u64,
    /// Agent's send → master's StatusAck received, per update.
    pub latency: Latency,
}

#[derive(Debug)]
struct Shared {
    stats: AgentStats,
    /// Handshakes in progress at once: agents of a real cluster do not all start within the
    /// same millisecond, and a storm of thousands only measures UDP buffer overflow.
    handshakes: tokio::sync::Semaphore,
    failure: Mutex<Option<String>>,
    stopping: AtomicBool,
    pump: Mutex<PumpStats>,
}

impl Shared {
    fn new(max_handshakes: usize) -> Shared {
        Shared {
            stats: AgentStats::default(),
            handshakes: tokio::sync::Semaphore::new(max_handshakes.max(1)),
            failure: Mutex::default(),
            stopping: AtomicBool::default(),
            pump: Mutex::default(),
        }
    }
}

impl Shared {
    fn fail(&self, why: String) {
        if !self.stopping.load(Ordering::Relaxed) {
            self.failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(why);
        }
    }
}

/// A real master and simulated agents and frameworks around it (see the module docs).
pub struct QuicCluster {
    // Field order is drop order: the simulation's runtime goes before the master's.
    sim_rt: tokio::runtime::Runtime,
    master_rt: tokio::runtime::Runtime,
    running: Option<corral_master::Running>,
    handle: Handle,
    addr: SocketAddr,
    dir: PathBuf,
    client: quinn::ClientConfig,
    endpoints: Vec<quinn::Endpoint>,
    agents: usize,
    frameworks: Vec<Arc<Mutex<FrameworkModel>>>,
    shared: Arc<Shared>,
    start: Instant,
    epoch_ns: u64,
}

impl std::fmt::Debug for QuicCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuicCluster({}, {} agents)", self.addr, self.agents)
    }
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// A client endpoint on loopback whose socket buffers take the bursts of its agents.
fn client_endpoint() -> std::io::Result<quinn::Endpoint> {
    use nix::sys::socket::{setsockopt, sockopt};
    let socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    if setsockopt(&socket, sockopt::RcvBufForce, &(8usize << 20)).is_err() {
        let _ = setsockopt(&socket, sockopt::RcvBuf, &(8usize << 20));
    }
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for the endpoint"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
}

fn free_port() -> std::io::Result<u16> {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no port free for both tcp and udp"))
}

impl QuicCluster {
    /// Starts a master on loopback with `master_threads` runtime workers (a real master uses
    /// one per core) and a simulation runtime of `sim_threads`.
    pub fn start(master_threads: usize, sim_threads: usize) -> Result<QuicCluster, ClusterError> {
        Self::start_with(master_threads, sim_threads, MAX_HANDSHAKES)
    }

    /// [`QuicCluster::start`] with at most `max_handshakes` agents handshaking at once
    /// (`usize::MAX >> 4` lets every agent connect at the same moment: a registration storm).
    pub fn start_with(
        master_threads: usize,
        sim_threads: usize,
        max_handshakes: usize,
    ) -> Result<QuicCluster, ClusterError> {
        let dir = std::env::temp_dir().join(format!("corral-bench-quic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| ClusterError::Dir(dir.clone(), e))?;
        let tls = dir.join("tls");
        corral_wire::tls::write_cluster(&tls, &["localhost".into(), "127.0.0.1".into()])?;
        let port = free_port().map_err(|e| ClusterError::Dir(dir.clone(), e))?;
        let args =
            loopback_master_args(port, &dir.join("master"), &tls).map_err(ClusterError::Flags)?;
        let master_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(master_threads.max(1))
            .thread_name("master")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let sim_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(sim_threads.max(1))
            .thread_name("sim")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let running = master_rt.block_on(corral_master::start(args))?;
        let handle = running.handle.clone();
        let client =
            corral_wire::tls::client_config(&corral_wire::tls::TlsFiles::in_dir(&tls, "agent"))?;
        Ok(QuicCluster {
            sim_rt,
            master_rt,
            addr: SocketAddr::from(([127, 0, 0, 1], running.port)),
            running: Some(running),
            handle,
            dir,
            client,
            endpoints: Vec::new(),
            agents: 0,
            frameworks: Vec::new(),
            shared: Arc::new(Shared::new(max_handshakes.min(tokio::sync::Semaphore::MAX_PERMITS))),
            start: Instant::now(),
            epoch_ns: wall_ns(),
        })
    }

    /// The master's address (HTTP on tcp, agents on udp).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Wall-clock time, as the master's clock reads it.
    pub fn now(&self) -> Time {
        Time(self.epoch_ns + self.start.elapsed().as_nanos() as u64)
    }

    fn endpoint(&mut self) -> Result<quinn::Endpoint, ClusterError> {
        if self.agents.is_multiple_of(AGENTS_PER_ENDPOINT) || self.endpoints.is_empty() {
            let _g = self.sim_rt.enter();
            let e = client_endpoint().map_err(|e| ClusterError::Dir(self.dir.clone(), e))?;
            self.endpoints.push(e);
        }
        Ok(self.endpoints[self.endpoints.len() - 1].clone())
    }

    /// Adds `n` agents offering `resources` each; each connects, handshakes and registers on
    /// its own connection (in the background: see [`QuicCluster::registered`]).
    pub fn add_agents(&mut self, n: usize, resources: &Resources) -> Result<(), ClusterError> {
        for _ in 0..n {
            self.spawn_agent(resources, false)?;
        }
        Ok(())
    }

    /// Adds one agent that, once its tasks run, keeps one TASK_RUNNING update in flight per
    /// task: each StatusAck is timed and answered with the task's next update. So the
    /// number of tasks it runs is the window of updates in flight on its one connection.
    pub fn add_pump_agent(&mut self, resources: &Resources) -> Result<(), ClusterError> {
        self.spawn_agent(resources, true)
    }

    fn spawn_agent(&mut self, resources: &Resources, pump: bool) -> Result<(), ClusterError> {
        let endpoint = self.endpoint()?;
        self.agents += 1;
        let reg = registration(self.agents, resources);
        let (client, addr, shared) = (self.client.clone(), self.addr, self.shared.clone());
        self.sim_rt.spawn(agent(endpoint, client, addr, reg, shared, pump));
        Ok(())
    }

    /// Subscribes a framework in `role`; returns its index.
    pub fn add_framework(&mut self, name: &str, role: &str, behaviour: Behaviour) -> usize {
        self.add_framework_at(self.now(), name, role, behaviour)
    }

    /// Like [`QuicCluster::add_framework`], but the framework subscribes at `at`.
    pub fn add_framework_at(
        &mut self,
        at: Time,
        name: &str,
        role: &str,
        behaviour: Behaviour,
    ) -> usize {
        let i = self.frameworks.len();
        let model = Arc::new(Mutex::new(FrameworkModel::new(i, role, behaviour)));
        self.frameworks.push(model.clone());
        let (handle, shared) = (self.handle.clone(), self.shared.clone());
        let (start, epoch_ns) = (self.start, self.epoch_ns);
        let delay = Duration::from_nanos(at.0.saturating_sub(self.now().0));
        let name = name.to_string();
        self.sim_rt.spawn(async move {
            tokio::time::sleep(delay).await;
            framework(handle, model, name, shared, start, epoch_ns).await
        });
        i
    }

    /// Agents that completed registration.
    pub fn registered(&self) -> u64 {
        self.shared.stats.registered.load(Ordering::Relaxed)
    }

    pub fn agent_stats(&self) -> &AgentStats {
        &self.shared.stats
    }

    /// What went wrong, if anything did (a refused call, a closed connection or stream).
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn counts(&self, framework: usize) -> Counts {
        self.frameworks[framework].lock().unwrap_or_else(|e| e.into_inner()).counts.clone()
    }

    /// Every framework's counts added up.
    pub fn total_counts(&self) -> Counts {
        let mut t = Counts::default();
        for f in &self.frameworks {
            let c = f.lock().unwrap_or_else(|e| e.into_inner()).counts.clone();
            t.offers += c.offers;
            t.declines += c.declines;
            t.launched += c.launched;
            t.running += c.running;
            t.finished += c.finished;
            t.updates += c.updates;
        }
        t
    }

    /// When framework `f`'s first task finished, if one did.
    pub fn first_finished(&self, f: usize) -> Option<Time> {
        self.frameworks[f]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finished_at
            .values()
            .min()
            .copied()
    }

    /// Runs `f` against the master's core, inside its actor.
    pub fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Master) -> T + Send + 'static,
    ) -> Option<T> {
        self.sim_rt.block_on(self.handle.query(f))
    }

    /// The master's offer-path stages merged over frameworks, and its allocation runs.
    pub fn offer_path(&self) -> (Stages, Latency) {
        self.query(|m| {
            let mut s = Stages::default();
            for f in m.frameworks().values() {
                for st in f.offer_path.values() {
                    s.merge(st);
                }
            }
            (s, m.allocation_run.clone())
        })
        .unwrap_or_default()
    }

    /// What the pump agent measured since the last reset.
    pub fn pump(&self) -> PumpStats {
        self.shared.pump.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts the pump's figures afresh (after a warm-up).
    pub fn reset_pump(&self) {
        *self.shared.pump.lock().unwrap_or_else(|e| e.into_inner()) = PumpStats::default();
    }

    /// Waits until `done` or until `until` has passed, calling `tick` about every second.
    pub fn run(
        &self,
        until: Duration,
        mut done: impl FnMut(&QuicCluster) -> bool,
        mut tick: impl FnMut(&QuicCluster),
    ) {
        let end = Instant::now() + until;
        let mut last = Instant::now();
        while Instant::now() < end && self.failure().is_none() && !done(self) {
            std::thread::sleep(Duration::from_millis(20));
            if last.elapsed() >= Duration::from_secs(1) {
                tick(self);
                last = Instant::now();
            }
        }
    }

    /// Stops everyone: the simulation first, then the master (dropping does the same).
    pub fn stop(self) {}

    fn shut_down(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        for e in &self.endpoints {
            e.close(0u32.into(), b"benchmark over");
        }
        if let Some(r) = self.running.take() {
            let _ = self.master_rt.block_on(r.stop());
        }
    }
}

impl Drop for QuicCluster {
    fn drop(&mut self) {
        self.shut_down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time (user + system) of this process's threads whose name starts with `prefix`.
pub fn thread_cpu(prefix: &str) -> Duration {
    // /proc reports in USER_HZ ticks, which Linux fixes at 100 for user space.
    const TICK: f64 = 100.0;
    let mut total = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Duration::ZERO };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        // pid (comm) state ... utime stime: the name may hold spaces, so split at the ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 0, utime field 11, stime field 12.
        let parse = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += parse(11) + parse(12);
    }
    Duration::from_secs_f64(total as f64 / TICK)
}

/// One simulated agent on its own QUIC connection.
async fn agent(
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    addr: SocketAddr,
    reg: Registration,
    shared: Arc<Shared>,
    pump: bool,
) {
    let host = reg.hostname.clone();
    if let Err(e) = agent_session(endpoint, client, addr, reg, &shared, pump).await {
        shared.fail(format!("agent {host}: {e}"));
    }
}

/// A fresh update uuid: unique in this process (a counter; no entropy needed).
fn next_uuid() -> [u8; 16] {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
    uuid[8..].copy_from_slice(&n.to_le_bytes());
    uuid
}

fn update(framework_id: &str, task_id: &str, state: TaskState) -> Vec<u8> {
    encode_agent(&status_update(framework_id, task_id, state, next_uuid(), Time(wall_ns())))
}

async fn agent_session(
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    addr: SocketAddr,
    reg: Registration,
    shared: &Arc<Shared>,
    pump: bool,
) -> Result<(), String> {
    let permit = shared.handshakes.acquire().await.map_err(|e| e.to_string())?;
    let conn = endpoint
        .connect_with(client, addr, "localhost")
        .map_err(|e| format!("cannot connect: {e}"))?
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("no stream: {e}"))?;
    drop(permit);
    shared.stats.connected.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    // The writer: frames queued together go out in one write, as the real agent's do.
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(frame) = rx.recv().await {
            batch.extend_from_slice(&frame);
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(f) => batch.extend_from_slice(&f),
                    Err(_) => break,
                }
            }
            if send.write_all(&batch).await.is_err() {
                break;
            }
            batch.clear();
        }
    });
    let _ = tx.send(encode_agent(&AgentMessage::Register(reg)));
    let mut frames = FrameReader::new(DEFAULT_MAX_FRAME);
    // The pump's tasks (framework, task) and when each one's update in flight was sent.
    let mut in_flight: HashMap<String, (String, Instant)> = HashMap::new();
    loop {
        let msg = match frames.next_master(&mut recv).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err("the master ended the stream".into()),
            Err(e) => {
                if shared.stopping.load(Ordering::Relaxed) {
                    return Ok(());
                }
                return Err(format!("connection lost: {e}"));
            }
        };
        match msg {
            MasterMessage::Registered { .. } => {
                shared.stats.registered.fetch_add(1, Ordering::Relaxed);
            }
            MasterMessage::Refused { reason, .. } => return Err(format!("refused: {reason}")),
            MasterMessage::Ping { seq } => {
                let _ = tx.send(encode_agent(&AgentMessage::Pong { seq }));
            }
            MasterMessage::RunTask(run) => {
                let (fid, tid) = (run.framework.id.clone(), run.task.task_id.clone());
                shared.stats.updates_sent.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(update(&fid, &tid, TaskState::TaskRunning));
                if pump {
                    in_flight.insert(tid, (fid, Instant::now()));
                    continue;
                }
                let d = task_duration(run.task.command.value.as_deref());
                let tx = tx.clone();
                let shared = shared.clone();
                let finish = move || {
                    shared.stats.updates_sent.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(update(&fid, &tid, TaskState::TaskFinished));
                };
                if d.is_zero() {
                    finish();
                } else {
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        finish();
                    });
                }
            }
            MasterMessage::KillTask { framework_id, task_id, .. } => {
                in_flight.remove(&task_id);
                shared.stats.updates_sent.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(update(&framework_id, &task_id, TaskState::TaskKilled));
            }
            MasterMessage::StatusAck { task_id, .. } => {
                shared.stats.acks.fetch_add(1, Ordering::Relaxed);
                if let Some((fid, sent)) = in_flight.get_mut(&task_id) {
                    let now = Instant::now();
                    {
                        let mut p = shared.pump.lock().unwrap_or_else(|e| e.into_inner());
                        p.acked += 1;
                        p.latency.record_ns((now - *sent).as_nanos() as u64);
                    }
                    if shared.stopping.load(Ordering::Relaxed) {
                        continue;
                    }
                    *sent = now;
                    shared.stats.updates_sent.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(update(fid, &task_id, TaskState::TaskRunning));
                }
            }
            _ => {}
        }
    }
}

/// One simulated framework attached to the master's actor in process.
async fn framework(
    handle: Handle,
    model: Arc<Mutex<FrameworkModel>>,
    name: String,
    shared: Arc<Shared>,
    start: Instant,
    epoch_ns: u64,
) {
    use prost::Message as _;
    let stream = handle.next_id();
    let uuid = uuid::Uuid::new_v4().to_string();
    let (tx, mut rx) = corral_master::shell::event_queue();
    let subscribe = model.lock().unwrap_or_else(|e| e.into_inner()).subscribe(&name);
    let input = Input::Subscribe {
        stream,
        uuid: uuid.clone(),
        subscribe: Box::new(subscribe),
        encoding: Encoding::Protobuf,
        tx,
    };
    if !handle.send(input).await {
        return;
    }
    // Calls go out from a task of their own, so that reading events never waits on the
    // actor's input queue: a framework that stops draining its stream is one the master
    // drops as too slow. Answers are checked after, in order.
    let (calls_tx, mut calls_rx) = mpsc::unbounded_channel::<Call>();
    let sender = shared.clone();
    tokio::spawn(async move {
        let (replies_tx, mut replies) =
            mpsc::unbounded_channel::<oneshot::Receiver<Result<CallResponse, CallError>>>();
        let checker = sender.clone();
        tokio::spawn(async move {
            while let Some(r) = replies.recv().await {
                if let Ok(Err(e)) = r.await {
                    checker.fail(format!("the master refused a call: {e:?}"));
                }
            }
        });
        while let Some(call) = calls_rx.recv().await {
            let (reply, rx) = oneshot::channel();
            let call = Box::new(call);
            if !handle.send(Input::Call { stream_id: Some(uuid.clone()), call, reply }).await {
                return;
            }
            let _ = replies_tx.send(rx);
        }
    });
    let mut decoder = corral_wire::recordio::Decoder::new(DEFAULT_MAX_FRAME);
    let mut calls = Vec::new();
    while let Some(record) = rx.recv().await {
        decoder.push(&record);
        while let Ok(Some(payload)) = decoder.next_record() {
            let event = match Event::decode(payload) {
                Ok(e) => e,
                Err(e) => return shared.fail(format!("undecodable event: {e}")),
            };
            let now = Time(epoch_ns + start.elapsed().as_nanos() as u64);
            let r =
                model.lock().unwrap_or_else(|e| e.into_inner()).on_event(event, now, &mut calls);
            if let Err(e) = r {
                shared.fail(e);
            }
            for call in calls.drain(..) {
                let _ = calls_tx.send(call);
            }
        }
    }
    shared.fail(format!("the master closed framework {name}'s event stream"));
}
