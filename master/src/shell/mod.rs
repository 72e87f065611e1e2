//! The master's thin async shell around [`crate::core`]: one actor task owns the core and
//! turns inputs (agent messages, scheduler calls, stream ends, timers) into core calls and the
//! core's commands into I/O. The transports live beside it:
//!
//! - [`quic`]: the agent endpoint (QUIC over UDP, mutual TLS), one task per connection;
//! - [`http`]: the Mesos HTTP API (axum over TCP) on the same port number.
//!
//! Everything the core decides goes through one ordered command queue, so a status update is
//! forwarded, and a task launched, in the order the core emitted them.

pub mod args;
pub mod clock;
pub mod http;
pub mod logging;
pub mod prometheus;
pub mod quic;
pub mod state;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_wire::mesos::v1::scheduler::{Call, call};
use corral_wire::proto::{AgentMessage, MasterMessage};
use tokio::sync::{mpsc, oneshot};

use crate::core::{
    CallError, CallResponse, Command, ConnId, Identity, Master, OperatorResponse, StreamId,
};

pub use args::MasterArgs;
pub use clock::Clock;

/// Errors that stop the master from starting.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] corral_wire::tls::TlsError),
    #[error("invalid flag: {0}")]
    Flag(String),
    #[error("http server failed: {0}")]
    Http(std::io::Error),
    #[error("cannot recover the registry {path}: {why}")]
    Registry { path: std::path::PathBuf, why: String },
}

/// Where the registry lives in the master's work dir.
pub fn registry_path(work_dir: &std::path::Path) -> std::path::PathBuf {
    work_dir.join("registry.json")
}

/// The registry a previous master left, if any. A file that is not a registry is an error
/// naming it: starting without it would forget admitted agents and agents marked gone.
pub fn load_registry(
    work_dir: &std::path::Path,
) -> Result<Option<crate::core::Registry>, MasterError> {
    let path = registry_path(work_dir);
    let err = |why: String| MasterError::Registry { path: path.clone(), why };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let reg: crate::core::Registry =
        serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
    if reg.version != crate::core::REGISTRY_VERSION {
        return Err(err(format!(
            "format version {} (this master reads {})",
            reg.version,
            crate::core::REGISTRY_VERSION
        )));
    }
    Ok(Some(reg))
}

/// Replaces the registry crash-atomically: temp file, fsync, rename, fsync of the directory.
pub fn store_registry(
    work_dir: &std::path::Path,
    reg: &crate::core::Registry,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = registry_path(work_dir);
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(reg).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(work_dir)?.sync_all()
}

/// How an event stream encodes its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    pub fn media_type(self) -> &'static str {
        match self {
            Encoding::Json => corral_wire::mesos::APPLICATION_JSON,
            Encoding::Protobuf => corral_wire::mesos::APPLICATION_PROTOBUF,
        }
    }

    /// A message in this encoding (a response body).
    pub fn encode<M: prost::Message + prost::Name>(self, msg: &M) -> Vec<u8> {
        match self {
            Encoding::Json => corral_wire::mesos::json::to_string(msg).into_bytes(),
            Encoding::Protobuf => msg.encode_to_vec(),
        }
    }

    /// One event as a RecordIO record.
    pub fn record<M: prost::Message + prost::Name>(self, event: &M) -> Bytes {
        corral_wire::recordio::encode(&self.encode(event))
    }
}

/// What an agent connection task is told to do.
#[derive(Debug)]
pub enum Outbound {
    /// One encoded frame.
    Send(Bytes),
    Close(String),
}

/// The bytes a queue holds, shared by its two ends, against a cap. Both the agent queues and
/// the subscribers' event queues are bounded this way, in bytes rather than messages.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    queued: Arc<std::sync::atomic::AtomicUsize>,
    cap: usize,
}

impl ByteBudget {
    fn new(cap: usize) -> ByteBudget {
        ByteBudget { queued: Arc::default(), cap }
    }

    /// Counts `len` more bytes in; false (and nothing counted) when that would pass the cap.
    fn take(&self, len: usize) -> bool {
        use std::sync::atomic::Ordering;
        if self.queued.load(Ordering::Relaxed) + len > self.cap {
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        true
    }

    /// Counts `len` bytes out (written or handed on).
    pub fn release(&self, len: usize) {
        self.queued.fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Bytes queued for one agent connection before it counts as stuck and is dropped. The queue
/// is bounded in bytes, not messages: one ACCEPT of thousands of tasks is a burst of
/// thousands of small frames that a healthy connection drains in milliseconds.
pub const MAX_AGENT_QUEUE_BYTES: usize = 64 << 20;

/// The actor's side of an agent connection's outbound queue.
#[derive(Debug, Clone)]
pub struct AgentTx {
    tx: mpsc::UnboundedSender<Outbound>,
    budget: ByteBudget,
}

/// The connection task's side: frames to write, and the count of bytes still queued.
#[derive(Debug)]
pub struct AgentRx {
    pub rx: mpsc::UnboundedReceiver<Outbound>,
    pub budget: ByteBudget,
}

/// A new outbound queue for one agent connection.
pub fn agent_queue() -> (AgentTx, AgentRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = ByteBudget::new(MAX_AGENT_QUEUE_BYTES);
    (AgentTx { tx, budget: budget.clone() }, AgentRx { rx, budget })
}

/// An agent connection that takes no more messages: its task is gone, or its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("agent connection closed or its outbound queue is full")]
pub struct AgentQueueFull;

impl AgentTx {
    /// Queues `msg`; fails when the connection task is gone or the queue is over its cap.
    pub fn send(&self, msg: &MasterMessage) -> Result<(), AgentQueueFull> {
        let frame = Bytes::from(corral_wire::frame::encode_master(msg));
        if !self.budget.take(frame.len()) {
            return Err(AgentQueueFull);
        }
        self.tx.send(Outbound::Send(frame)).map_err(|_| AgentQueueFull)
    }

    pub fn close(&self, reason: String) {
        let _ = self.tx.send(Outbound::Close(reason));
    }

    /// Whether the connection task is gone (its receiving end dropped).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Bytes of events queued for one subscriber (scheduler or operator stream) before it counts
/// as stuck and its stream is ended. Bounded in bytes, not events, like the agent queue: one
/// ACCEPT of 10,000 tasks is a burst of 20,000 small UPDATE events that a healthy subscriber
/// drains in a moment, while one OFFERS event of a large cluster is megabytes.
pub const MAX_STREAM_QUEUE_BYTES: usize = 64 << 20;

/// The actor's side of one subscriber's event queue.
#[derive(Debug, Clone)]
pub struct EventTx {
    tx: mpsc::UnboundedSender<Bytes>,
    budget: ByteBudget,
}

/// The stream's side: records to write, in order.
#[derive(Debug)]
pub struct EventRx {
    rx: mpsc::UnboundedReceiver<Bytes>,
    budget: ByteBudget,
}

/// A new event queue for one subscriber.
pub fn event_queue() -> (EventTx, EventRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = ByteBudget::new(MAX_STREAM_QUEUE_BYTES);
    (EventTx { tx, budget: budget.clone() }, EventRx { rx, budget })
}

/// A subscriber that takes no more events: its stream is gone, or too far behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event stream closed or its queue is full")]
pub struct StreamFull;

impl EventTx {
    /// Queues one record; fails when the stream is gone or over its cap.
    pub fn try_send(&self, record: Bytes) -> Result<(), StreamFull> {
        if !self.budget.take(record.len()) {
            return Err(StreamFull);
        }
        self.tx.send(record).map_err(|_| StreamFull)
    }
}

impl EventRx {
    /// The next record, once there is one; `None` when the master ended the stream.
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Bytes>> {
        let polled = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(b)) = &polled {
            self.budget.release(b.len());
        }
        polled
    }

    pub async fn recv(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

/// Inputs the actor applies before it performs the core's commands: enough that a burst
/// coalesces into one allocation pass, few enough that a pass is short, since every message
/// the core emits in a pass waits for the pass to end.
pub const ACTOR_BATCH: usize = 257;

/// And at most this long of them: where inputs are costly (a cluster of 500,000 tasks, large
/// ACCEPTs) 257 of them take milliseconds, and resources freed by the first wait for the
/// allocation pass after the last.
pub const ACTOR_BATCH_BUDGET: std::time::Duration = std::time::Duration::from_micros(500);

/// Whether a batch that took `taken` inputs is complete; `elapsed` (since the batch began) is
/// read only every 16 inputs.
pub fn batch_done(taken: usize, elapsed: impl FnOnce() -> std::time::Duration) -> bool {
    taken >= ACTOR_BATCH || (taken.is_multiple_of(16) && elapsed() >= ACTOR_BATCH_BUDGET)
}

/// A query run inside the actor against the core (the HTTP views use it).
pub type Query = Box<dyn FnOnce(&Master) + Send>;

/// Inputs of the actor.
pub enum Input {
    AgentConnected {
        conn: ConnId,
        peer: SocketAddr,
        tx: AgentTx,
    },
    /// Messages from one agent connection, in order: what one read of its stream held.
    AgentMessages {
        conn: ConnId,
        msgs: Vec<AgentMessage>,
    },
    AgentGone {
        conn: ConnId,
    },
    Subscribe {
        stream: StreamId,
        uuid: String,
        /// Boxed, as every large payload here: each input moves through the actor's queue,
        /// so the enum stays the size of its small variants.
        subscribe: Box<call::Subscribe>,
        encoding: Encoding,
        tx: EventTx,
    },
    StreamClosed {
        stream: StreamId,
    },
    Call {
        stream_id: Option<String>,
        call: Box<Call>,
        reply: oneshot::Sender<Result<CallResponse, CallError>>,
    },
    /// An operator API SUBSCRIBE: the stream gets SUBSCRIBED and then every operator event.
    OperatorSubscribe {
        stream: StreamId,
        encoding: Encoding,
        tx: EventTx,
    },
    /// An operator API call the core answers.
    OperatorCall {
        call: Box<corral_wire::mesos::v1::master::Call>,
        reply: oneshot::Sender<Result<OperatorResponse, CallError>>,
    },
    Query(Query),
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::AgentConnected { conn, peer, .. } => write!(f, "AgentConnected({conn}, {peer})"),
            Input::AgentMessages { conn, msgs } => {
                write!(f, "AgentMessages({conn}, {})", msgs.len())
            }
            Input::AgentGone { conn } => write!(f, "AgentGone({conn})"),
            Input::Subscribe { stream, .. } => write!(f, "Subscribe({stream})"),
            Input::StreamClosed { stream } => write!(f, "StreamClosed({stream})"),
            Input::Call { .. } => write!(f, "Call"),
            Input::OperatorSubscribe { stream, .. } => write!(f, "OperatorSubscribe({stream})"),
            Input::OperatorCall { .. } => write!(f, "OperatorCall"),
            Input::Query(_) => write!(f, "Query"),
        }
    }
}

/// A handle to the running actor, shared by the transports.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Input>,
    /// Stream ends and agent disconnections come from `Drop`s: never blocked, never lost.
    control: mpsc::UnboundedSender<Input>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    pub identity: Arc<Identity>,
    pub heartbeat_interval: Duration,
    pub flags: Arc<Vec<(String, String)>>,
}

impl Handle {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn send(&self, input: Input) -> bool {
        self.tx.send(input).await.is_ok()
    }

    pub fn send_control(&self, input: Input) {
        let _ = self.control.send(input);
    }

    /// Runs `f` against the core and returns its result (None if the master is stopping).
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Master) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let q: Query = Box::new(move |m| {
            let _ = tx.send(f(m));
        });
        if !self.send(Input::Query(q)).await {
            return None;
        }
        rx.await.ok()
    }
}

struct Sink {
    tx: EventTx,
    encoding: Encoding,
}

/// The actor: owns the core, applies inputs, performs commands.
struct Actor {
    master: Master,
    clock: Clock,
    agents: HashMap<ConnId, AgentTx>,
    streams: HashMap<StreamId, Sink>,
    /// Operator API event streams.
    operator_streams: HashMap<StreamId, Sink>,
    /// Where the registry is persisted.
    work_dir: std::path::PathBuf,
}

impl Actor {
    fn apply(&mut self, input: Input) {
        let now = self.clock.now();
        match input {
            Input::AgentConnected { conn, peer, tx } => {
                tracing::debug!(conn, %peer, "agent connection established");
                self.agents.insert(conn, tx);
            }
            Input::AgentMessages { conn, msgs } => {
                for msg in msgs {
                    self.master.agent_message(now, conn, msg);
                }
            }
            Input::AgentGone { conn } => {
                self.agents.remove(&conn);
                self.master.agent_disconnected(now, conn);
            }
            Input::Subscribe { stream, uuid, subscribe, encoding, tx } => {
                self.streams.insert(stream, Sink { tx, encoding });
                self.master.subscribe(now, stream, uuid, *subscribe);
            }
            Input::StreamClosed { stream } => {
                self.streams.remove(&stream);
                self.operator_streams.remove(&stream);
                self.master.stream_closed(now, stream);
            }
            Input::OperatorSubscribe { stream, encoding, tx } => {
                self.operator_streams.insert(stream, Sink { tx, encoding });
                self.master.operator_subscribe(now, stream);
            }
            Input::OperatorCall { call, reply } => {
                let result = self.master.operator_call(now, *call);
                // What the call changed is persisted before the operator hears back.
                self.perform();
                let _ = reply.send(result);
            }
            Input::Call { stream_id, call, reply } => {
                let _ = reply.send(self.master.call(now, stream_id.as_deref(), *call));
            }
            Input::Query(q) => q(&self.master),
        }
    }

    fn perform(&mut self) {
        while let Some(cmd) = self.master.poll_command() {
            match cmd {
                Command::SendAgent { conn, msg } => {
                    let Some(tx) = self.agents.get(&conn) else { continue };
                    if tx.send(&msg).is_err() {
                        // The connection task is gone or hopelessly behind: drop it.
                        if tx.is_closed() {
                            tracing::debug!(conn, "agent connection already gone");
                        } else {
                            tracing::warn!(conn, "agent connection cannot keep up; closing it");
                        }
                        tx.close("outbound queue full".into());
                        self.agents.remove(&conn);
                        let now = self.clock.now();
                        self.master.agent_disconnected(now, conn);
                    }
                }
                Command::CloseAgent { conn, reason } => {
                    if let Some(tx) = self.agents.remove(&conn) {
                        tx.close(reason);
                    }
                }
                Command::SendEvent { stream, event } => {
                    let Some(sink) = self.streams.get(&stream) else { continue };
                    let record = sink.encoding.record(&*event);
                    if sink.tx.try_send(record).is_err() {
                        // A slow or stuck subscriber never blocks the master: its stream is
                        // ended and the framework is treated as disconnected.
                        tracing::warn!(stream, "subscriber too slow; closing its event stream");
                        self.streams.remove(&stream);
                        let now = self.clock.now();
                        self.master.stream_closed(now, stream);
                    }
                }
                Command::CloseStream { stream } => {
                    self.streams.remove(&stream);
                }
                Command::OperatorEvent { stream, event } => self.operator_event(stream, &event),
                Command::Persist => {
                    let Some(reg) = self.master.take_registry() else { continue };
                    if let Err(e) = store_registry(&self.work_dir, &reg) {
                        tracing::error!(
                            path = %registry_path(&self.work_dir).display(),
                            "cannot persist the registry: {e}"
                        );
                    }
                }
            }
        }
    }

    /// Writes an operator event to one stream or to all, encoding it once per encoding. A
    /// subscriber whose buffer is full is dropped: it never holds the master back.
    fn operator_event(
        &mut self,
        only: Option<StreamId>,
        event: &corral_wire::mesos::v1::master::Event,
    ) {
        let mut records: [Option<Bytes>; 2] = [None, None];
        let mut stuck = Vec::new();
        for (id, sink) in &self.operator_streams {
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            let slot = &mut records[sink.encoding as usize];
            let record = slot.get_or_insert_with(|| sink.encoding.record(event)).clone();
            if sink.tx.try_send(record).is_err() {
                stuck.push(*id);
            }
        }
        for id in stuck {
            tracing::warn!(stream = id, "operator subscriber too slow; closing its event stream");
            self.operator_streams.remove(&id);
            let now = self.clock.now();
            self.master.stream_closed(now, id);
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        mut control: mpsc::UnboundedReceiver<Input>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let wake = self.master.next_timeout().map(|t| self.clock.instant_at(t));
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(input) = control.recv() => self.apply(input),
                Some(input) = rx.recv() => {
                    let began = self.clock.now();
                    self.apply(input);
                    // Take what else is queued before polling, so bursts coalesce into one
                    // allocation pass.
                    let mut taken = 1;
                    while !batch_done(taken, || {
                        Duration::from_nanos(self.clock.now().0.saturating_sub(began.0))
                    }) {
                        match rx.try_recv() {
                            Ok(input) => self.apply(input),
                            Err(_) => break,
                        }
                        taken += 1;
                    }
                }
                _ = sleep_until(wake) => {
                    let now = self.clock.now();
                    self.master.handle_timeout(now);
                }
            }
            self.perform();
        }
        // Closing: end every stream and connection.
        for (_, tx) in self.agents.drain() {
            tx.close("master shutting down".into());
        }
        self.streams.clear();
        self.operator_streams.clear();
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The address clients should use when the master binds a wildcard address: the interface
/// that routes outward, else loopback.
pub fn default_advertise_ip(bind: IpAddr) -> Ipv4Addr {
    match bind {
        IpAddr::V4(v4) if !v4.is_unspecified() => v4,
        _ => std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| {
                s.connect("192.0.2.1:9")?;
                s.local_addr()
            })
            .ok()
            .and_then(|a| match a.ip() {
                IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
                _ => None,
            })
            .unwrap_or(Ipv4Addr::LOCALHOST),
    }
}

/// Runs a master until `shutdown` resolves.
pub async fn run(
    args: MasterArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let running = start(args).await?;
    shutdown.await;
    running.stop().await
}

/// A master started by [`start`]: its actor, agent endpoint and HTTP server run as tasks on
/// the current runtime until [`Running::stop`].
#[derive(Debug)]
pub struct Running {
    /// The actor's input handle: what the transports use, and what an in-process party (a
    /// benchmark's simulated frameworks) may use too.
    pub handle: Handle,
    /// The port HTTP (tcp) and the agent endpoint (udp) listen on.
    pub port: u16,
    stop_tx: tokio::sync::watch::Sender<bool>,
    endpoint: quinn::Endpoint,
    actor_task: tokio::task::JoinHandle<()>,
    quic_task: tokio::task::JoinHandle<()>,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops the master: the actor ends every stream and connection, then the transports
    /// close.
    pub async fn stop(self) -> Result<(), MasterError> {
        tracing::info!("master shutting down");
        let _ = self.stop_tx.send(true);
        self.endpoint.close(0u32.into(), b"master shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(5), self.actor_task).await;
        self.quic_task.abort();
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), self.http_task).await {
            return Err(MasterError::Http(e));
        }
        self.endpoint.wait_idle().await;
        Ok(())
    }
}

/// Starts a master on the current tokio runtime and returns once it listens.
pub async fn start(args: MasterArgs) -> Result<Running, MasterError> {
    let config = args.core_config()?;
    let tls = args.tls_files();
    let server_config = corral_wire::tls::server_config(&tls)?;
    let bind_ip: IpAddr = args.ip;
    // HTTP (TCP) and the agent endpoint (UDP) share one port number.
    let (listener, endpoint) = bind_pair(bind_ip, args.port, server_config)?;
    let port = listener.local_addr().map_err(MasterError::Http)?.port();
    let advertise = args.advertise_ip.unwrap_or_else(|| default_advertise_ip(bind_ip));
    let hostname = args.hostname.clone().unwrap_or_else(|| advertise.to_string());
    let identity = Identity {
        id: uuid::Uuid::new_v4().to_string(),
        hostname,
        ip: advertise,
        port,
        version: corral_wire::MESOS_COMPAT_VERSION.to_string(),
    };
    let clock = Clock::new();
    let heartbeat_interval = config.heartbeat_interval;
    let mut master = Master::new(config, identity.clone(), clock.now());
    std::fs::create_dir_all(&args.work_dir).map_err(|e| MasterError::Registry {
        path: args.work_dir.clone(),
        why: format!("cannot create the work dir: {e}"),
    })?;
    if let Some(reg) = load_registry(&args.work_dir)? {
        master.recover(clock.now(), reg);
    }
    let (tx, rx) = mpsc::channel(4096);
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let handle = Handle {
        tx,
        control: ctl_tx,
        next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        identity: Arc::new(identity.clone()),
        heartbeat_interval,
        flags: Arc::new(args.flag_list()),
    };
    tracing::info!(
        master_id = %identity.id,
        url = %format!("http://{}:{port}", identity.ip),
        "corral master listening (HTTP on tcp/{port}, agents on udp/{port})"
    );
    let actor = Actor {
        master,
        clock,
        agents: HashMap::new(),
        streams: HashMap::new(),
        operator_streams: HashMap::new(),
        work_dir: args.work_dir.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let actor_task = tokio::spawn(actor.run(rx, ctl_rx, {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.changed().await;
        }
    }));
    let quic_task = tokio::spawn(quic::serve(endpoint.clone(), handle.clone(), args.max_frame));
    let http_stop = {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.changed().await;
        }
    };
    let http_task = tokio::spawn(http::serve(listener, handle.clone(), http_stop));
    Ok(Running { handle, port, stop_tx, endpoint, actor_task, quic_task, http_task })
}

/// Socket receive buffer the agent endpoint asks for. A master failover, or a cluster
/// starting, has every agent handshake at once: each QUIC Initial is a padded 1,200-byte
/// datagram, and a default 208 KiB buffer overflows at a few hundred of them, so handshakes
/// are lost and retried after a backoff of seconds.
const AGENT_SOCKET_BUFFER: usize = 16 << 20;

/// The agent endpoint on `addr`, with a receive buffer sized for registration storms: as
/// root the size is forced past `net.core.rmem_max`, otherwise that limit caps it.
fn agent_endpoint(
    server_config: quinn::ServerConfig,
    addr: SocketAddr,
) -> std::io::Result<quinn::Endpoint> {
    use nix::sys::socket::{setsockopt, sockopt};
    let socket = std::net::UdpSocket::bind(addr)?;
    if setsockopt(&socket, sockopt::RcvBufForce, &AGENT_SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&socket, sockopt::RcvBuf, &AGENT_SOCKET_BUFFER);
    }
    let got = nix::sys::socket::getsockopt(&socket, sockopt::RcvBuf).unwrap_or(0);
    tracing::debug!(bytes = got, "agent endpoint receive buffer");
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for the agent endpoint"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server_config), socket, runtime)
}

/// Binds TCP and UDP on the same port. With port 0, retries until a port free for both is
/// found.
fn bind_pair(
    ip: IpAddr,
    port: u16,
    server_config: quinn::ServerConfig,
) -> Result<(tokio::net::TcpListener, quinn::Endpoint), MasterError> {
    let mut last = None;
    for _ in 0..if port == 0 { 20 } else { 1 } {
        let addr = SocketAddr::new(ip, port);
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|source| MasterError::Bind { what: "http (tcp)", addr, source })?;
        std_listener.set_nonblocking(true).map_err(MasterError::Http)?;
        let bound = std_listener.local_addr().map_err(MasterError::Http)?;
        match agent_endpoint(server_config.clone(), bound) {
            Ok(endpoint) => {
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).map_err(MasterError::Http)?;
                return Ok((listener, endpoint));
            }
            Err(source) => {
                last = Some(MasterError::Bind { what: "agent endpoint (udp)", addr: bound, source })
            }
        }
    }
    Err(last.unwrap_or(MasterError::Flag("no port".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_ends_at_257_inputs_or_after_its_time_budget() {
        let never = || -> Duration { panic!("the clock is read only every 16 inputs") };
        assert!(!batch_done(1, never));
        assert!(!batch_done(17, never));
        assert!(!batch_done(16, || Duration::from_micros(100)));
        assert!(batch_done(16, || ACTOR_BATCH_BUDGET));
        assert!(batch_done(ACTOR_BATCH, never));
        // Cheap inputs still coalesce into a full batch.
        let taken =
            (1..).find(|&n| batch_done(n, || Duration::from_nanos(n as u64 * 500))).unwrap();
        assert_eq!(taken, ACTOR_BATCH);
    }
}
