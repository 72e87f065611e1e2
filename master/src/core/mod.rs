//! The master's sans-I/O core: agents, frameworks, offers and tasks, the allocator, agent
//! liveness and the status-update path, as one deterministic state machine.
//!
//! Shape (as quinn-proto): inputs are method calls that carry `now`
//! ([`Master::agent_message`], [`Master::subscribe`], [`Master::call`],
//! [`Master::handle_timeout`], ...); outputs are [`Command`]s drained with
//! [`Master::poll_command`]; [`Master::next_timeout`] says when to call
//! [`Master::handle_timeout`]. No sockets, no clock, no tokio: the shell (`crate::shell`) owns
//! I/O and translates. Synchronous answers to scheduler calls (202, 400, ...) are returned
//! directly; everything that goes to an agent or a framework stream is a command.
//!
//! Allocation is event driven: inputs mark agents dirty in the [`allocator`], and the next
//! [`Master::poll_command`] with an empty queue runs one allocation pass over them, so a
//! burst of inputs handled before polling coalesces into one pass.
//!
//! Ready for HA: identity (`master_id`) and counters are injected, and every state change is
//! a method here, so a replicated registry and leader epochs can wrap these inputs later.

pub mod allocator;
pub mod offer_path;
mod operator;
mod registry;
mod scheduler;
pub mod time;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use corral_wire::mesos::v1::{self, scheduler::Event};
use corral_wire::mesos::{IdExt as _, is_terminal};
use corral_wire::proto::{
    AgentMessage, MasterMessage, PROTOCOL_VERSION, Registration, StatusUpdate,
};
use corral_wire::resources::Resources;

pub use self::allocator::{Allocator, AllocatorConfig};
pub use self::operator::{Drain, OperatorResponse, operator_heartbeat, validate_operator_call};
pub use self::registry::{AgentEntry, REGISTRY_VERSION, Registry};
pub use self::scheduler::{CallError, CallResponse, heartbeat_event, validate_call};
pub use self::time::Time;

/// The core's maps keyed by id (agents, frameworks, offers, tasks): hashed, because at
/// 50,000 agents and 500,000 tasks a sorted map's comparisons each chase a key's heap
/// string (a cache miss), and ids share long prefixes (the master's id). Views that show
/// them to people sort as they render. FxHash has no random seed, so a run replays in the
/// same order.
pub type IdMap<V> = rustc_hash::FxHashMap<String, V>;
/// A set of ids; see [`IdMap`].
pub type IdSet = rustc_hash::FxHashSet<String>;

/// `map`'s values in id order: for what people read (JSON views, operator lists), so that
/// listings are stable from one request to the next.
pub fn by_id<V>(map: &IdMap<V>) -> impl Iterator<Item = &V> {
    let mut v: Vec<(&String, &V)> = map.iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v.into_iter().map(|(_, v)| v)
}

/// An agent connection, numbered by the shell.
pub type ConnId = u64;
/// A framework's SUBSCRIBE event stream, numbered by the shell.
pub type StreamId = u64;

/// Most task statuses kept per task (the latest ones).
const MAX_STATUSES_PER_TASK: usize = 16;

/// Tunables.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// A ping goes to every agent this often; a ping unanswered by the next one is missed.
    pub agent_ping_timeout: Duration,
    /// An agent that misses this many pings in a row is unreachable.
    pub max_agent_ping_timeouts: u32,
    /// Announced in SUBSCRIBED; the shell sends the heartbeats.
    pub heartbeat_interval: Duration,
    pub max_completed_frameworks: usize,
    pub max_completed_tasks_per_framework: usize,
    /// Role weights (`--weights`).
    pub weights: Vec<(String, f64)>,
    /// After a restart, how long agents the registry lists have to re-register.
    pub agent_reregister_timeout: Duration,
    pub allocator: AllocatorConfig,
    /// A monotonic nanosecond clock for timing allocation runs (instrumentation only:
    /// decisions never read it). Cores under test use [`offer_path::no_stopwatch`].
    pub stopwatch: fn() -> u64,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            agent_ping_timeout: Duration::from_secs(15),
            max_agent_ping_timeouts: 5,
            heartbeat_interval: Duration::from_secs(15),
            max_completed_frameworks: 50,
            max_completed_tasks_per_framework: 1000,
            weights: Vec::new(),
            agent_reregister_timeout: Duration::from_secs(600),
            allocator: AllocatorConfig::default(),
            stopwatch: offer_path::no_stopwatch,
        }
    }
}

/// Who this master is (MasterInfo).
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub hostname: String,
    pub ip: std::net::Ipv4Addr,
    pub port: u16,
    pub version: String,
}

impl Identity {
    /// `MasterInfo` as Mesos fills it.
    pub fn master_info(&self) -> v1::MasterInfo {
        let o = self.ip.octets();
        let packed = u32::from(o[0])
            | (u32::from(o[1]) << 8)
            | (u32::from(o[2]) << 16)
            | (u32::from(o[3]) << 24);
        v1::MasterInfo {
            id: self.id.clone(),
            ip: packed,
            port: u32::from(self.port),
            pid: Some(self.pid()),
            hostname: Some(self.hostname.clone()),
            version: Some(self.version.clone()),
            address: Some(v1::Address {
                hostname: Some(self.hostname.clone()),
                ip: Some(self.ip.to_string()),
                port: i32::from(self.port),
            }),
            domain: None,
            capabilities: [
                v1::master_info::capability::Type::AgentUpdate,
                v1::master_info::capability::Type::AgentDraining,
                v1::master_info::capability::Type::QuotaV2,
            ]
            .into_iter()
            .map(|t| v1::master_info::Capability { r#type: Some(t as i32) })
            .collect(),
        }
    }

    /// `master@ip:port`.
    pub fn pid(&self) -> String {
        format!("master@{}:{}", self.ip, self.port)
    }
}

/// Something for the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Send a message on an agent connection.
    SendAgent { conn: ConnId, msg: MasterMessage },
    /// Close an agent connection, saying why in the log.
    CloseAgent { conn: ConnId, reason: String },
    /// Write an event to a framework's stream (boxed: commands queue by the thousand, and
    /// an event is a kilobyte).
    SendEvent { stream: StreamId, event: Box<Event> },
    /// End a framework's stream (after any events queued before it).
    CloseStream { stream: StreamId },
    /// Write an operator API event to one operator stream, or (`None`) to every one.
    OperatorEvent { stream: Option<StreamId>, event: Box<v1::master::Event> },
    /// Durably store the registry ([`Master::take_registry`]) before performing any later
    /// command.
    Persist,
}

/// An agent's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Connected,
    /// Connection lost; waiting for re-registration until the ping timeouts run out.
    Disconnected,
    /// Missed too many pings: tasks were reported lost/unreachable, resources withdrawn.
    Unreachable,
}

#[derive(Debug)]
struct Ping {
    due: Time,
    outstanding: Option<u64>,
    missed: u32,
    seq: u64,
}

/// An agent as the master knows it.
#[derive(Debug)]
pub struct Agent {
    pub id: String,
    pub registration: Registration,
    pub state: AgentState,
    conn: Option<ConnId>,
    pub registered_time: Time,
    pub reregistered_time: Option<Time>,
    pub unreachable_time: Option<Time>,
    ping: Ping,
    /// (framework, task) of tasks on it.
    pub tasks: BTreeSet<(String, String)>,
    pub offers: BTreeSet<String>,
    /// Deactivated by the operator (DEACTIVATE_AGENT or DRAIN_AGENT): not offered.
    pub deactivated: bool,
    pub drain: Option<Drain>,
}

impl Agent {
    pub fn total(&self) -> &Resources {
        &self.registration.resources
    }

    pub fn agent_info(&self) -> v1::AgentInfo {
        v1::AgentInfo {
            hostname: self.registration.hostname.clone(),
            port: Some(i32::from(self.registration.http_port)),
            resources: self.registration.resources.to_mesos(None),
            attributes: self.registration.attributes.iter().map(attribute_to_mesos).collect(),
            id: Some(v1::AgentId::from_str(&self.id)),
            domain: None,
        }
    }

    /// `slave(1)@ip:port`, which clients split to reach the agent.
    pub fn pid(&self) -> String {
        format!("slave(1)@{}:{}", self.registration.http_address, self.registration.http_port)
    }
}

fn attribute_to_mesos(a: &corral_wire::proto::Attribute) -> v1::Attribute {
    use corral_wire::proto::AttributeValue as V;
    let mut out = v1::Attribute { name: a.name.clone(), ..Default::default() };
    match &a.value {
        V::Text(t) => {
            out.set_type(v1::value::Type::Text);
            out.text = Some(v1::value::Text { value: t.clone() });
        }
        V::Scalar(s) => {
            out.set_type(v1::value::Type::Scalar);
            out.scalar = Some(v1::value::Scalar { value: s.as_f64() });
        }
        V::Ranges(r) => {
            out.set_type(v1::value::Type::Ranges);
            out.ranges = Some(v1::value::Ranges {
                range: r.iter().map(|(begin, end)| v1::value::Range { begin, end }).collect(),
            });
        }
        V::Set(s) => {
            out.set_type(v1::value::Type::Set);
            out.set = Some(v1::value::Set { item: s.clone() });
        }
    }
    out
}

/// A task as the master knows it.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub name: String,
    pub framework_id: String,
    pub agent_id: String,
    pub role: String,
    pub resources: Resources,
    /// Latest state the master knows.
    pub state: v1::TaskState,
    /// uuid of the latest update forwarded (acknowledging it acknowledges that state).
    pub latest_uuid: Option<Vec<u8>>,
    /// Its status updates, protobuf-encoded (as `info_pb`, for memory); [`Task::statuses`].
    pub statuses_pb: Vec<Box<[u8]>>,
    /// The TaskInfo it was launched with, protobuf-encoded: a decoded TaskInfo is ~4 KB and
    /// the master holds hundreds of thousands of tasks; views decode it ([`Task::info`]).
    pub info_pb: Option<Box<[u8]>>,
    pub container_id: Option<String>,
    pub user: Option<String>,
    /// The task group's executor (LAUNCH_GROUP); command tasks have none.
    pub executor_id: Option<String>,
    /// The latest usage sample its agent reported.
    pub usage: Option<Box<corral_wire::proto::TaskUsage>>,
    /// When the ACCEPT that launched it arrived, until its first TASK_RUNNING.
    pub accepted_at: Option<Time>,
}

/// A task group's executor: the agent's built-in default executor, holding its own resources
/// for as long as one of its tasks lives.
#[derive(Debug, Clone)]
pub struct Executor {
    pub agent_id: String,
    pub info: v1::ExecutorInfo,
    pub role: String,
    pub resources: Resources,
    pub tasks: BTreeSet<String>,
}

impl Task {
    /// Its status updates, oldest first (decoded on each call).
    pub fn statuses(&self) -> Vec<v1::TaskStatus> {
        use prost::Message as _;
        self.statuses_pb.iter().filter_map(|b| v1::TaskStatus::decode(&b[..]).ok()).collect()
    }

    /// Its first status update, if any (decoded).
    pub fn first_status(&self) -> Option<v1::TaskStatus> {
        use prost::Message as _;
        v1::TaskStatus::decode(&self.statuses_pb.first()?[..]).ok()
    }

    /// The TaskInfo it was launched with (decoded on each call).
    pub fn info(&self) -> Option<v1::TaskInfo> {
        use prost::Message as _;
        v1::TaskInfo::decode(self.info_pb.as_deref()?).ok()
    }

    /// `mesos.v1.Task`, the master's view used by the operator API and /state.
    pub fn to_mesos(&self) -> v1::Task {
        let info = self.info().unwrap_or_default();
        v1::Task {
            name: self.name.clone(),
            task_id: v1::TaskId::from_str(&self.id),
            framework_id: v1::FrameworkId::from_str(&self.framework_id),
            executor_id: self.executor_id.as_deref().map(v1::ExecutorId::from_str),
            agent_id: v1::AgentId::from_str(&self.agent_id),
            state: self.state as i32,
            resources: self.resources.to_mesos(Some(&self.role)),
            statuses: self.statuses(),
            status_update_state: Some(self.state as i32),
            status_update_uuid: self.latest_uuid.clone(),
            labels: info.labels,
            discovery: info.discovery,
            container: info.container,
            health_check: info.health_check,
            kill_policy: info.kill_policy,
            user: self.user.clone(),
            limits: info.limits,
            statistics: self.usage.as_ref().map(|u| u.to_statistics()),
        }
    }
}

/// A framework's live event stream.
#[derive(Debug, Clone)]
pub struct Stream {
    pub id: StreamId,
    /// The `Mesos-Stream-Id` every call must carry.
    pub uuid: String,
}

/// A framework as the master knows it.
#[derive(Debug)]
pub struct Framework {
    pub id: String,
    pub info: v1::FrameworkInfo,
    pub roles: Vec<String>,
    pub suppressed: Vec<String>,
    pub stream: Option<Stream>,
    /// Known only from agents' task reports; has not subscribed to this master yet.
    pub recovered: bool,
    pub registered_time: Option<Time>,
    pub reregistered_time: Option<Time>,
    pub unregistered_time: Option<Time>,
    failover_deadline: Option<Time>,
    pub tasks: IdMap<Task>,
    pub unreachable_tasks: IdMap<Task>,
    pub completed_tasks: VecDeque<Task>,
    pub offers: IdSet,
    /// Task group executors by id.
    pub executors: BTreeMap<String, Executor>,
    /// Offer-path latencies by role (created on a role's first sample).
    pub offer_path: BTreeMap<String, offer_path::Stages>,
}

impl Framework {
    /// The offer-path histograms of `role`.
    pub fn stages(&mut self, role: &str) -> &mut offer_path::Stages {
        if !self.offer_path.contains_key(role) {
            self.offer_path.insert(role.to_string(), offer_path::Stages::default());
        }
        self.offer_path.get_mut(role).expect("inserted above")
    }

    /// A framework that subscribed on `stream`, or (`stream: None`) one recovered from an
    /// agent's report that has not subscribed to this master yet.
    fn new(
        id: &str,
        info: v1::FrameworkInfo,
        roles: Vec<String>,
        suppressed: Vec<String>,
        stream: Option<(Stream, Time)>,
    ) -> Framework {
        let recovered = stream.is_none();
        let (stream, registered_time) =
            stream.map(|(s, t)| (Some(s), Some(t))).unwrap_or((None, None));
        Framework {
            id: id.to_string(),
            info,
            roles,
            suppressed,
            stream,
            recovered,
            registered_time,
            reregistered_time: None,
            unregistered_time: None,
            failover_deadline: None,
            tasks: IdMap::default(),
            unreachable_tasks: IdMap::default(),
            completed_tasks: VecDeque::new(),
            offers: IdSet::default(),
            executors: BTreeMap::new(),
            offer_path: BTreeMap::new(),
        }
    }

    pub fn connected(&self) -> bool {
        self.stream.is_some()
    }

    pub fn partition_aware(&self) -> bool {
        has_capability(&self.info, v1::framework_info::capability::Type::PartitionAware)
    }

    /// The state to report where Mesos would say `partition_aware_state` (UNREACHABLE, GONE,
    /// DROPPED, UNKNOWN, ...): frameworks that are not PARTITION_AWARE get TASK_LOST.
    fn lost(&self, partition_aware_state: v1::TaskState) -> v1::TaskState {
        if self.partition_aware() { partition_aware_state } else { v1::TaskState::TaskLost }
    }
}

pub(crate) fn has_capability(
    info: &v1::FrameworkInfo,
    cap: v1::framework_info::capability::Type,
) -> bool {
    info.capabilities.iter().any(|c| c.r#type == Some(cap as i32))
}

/// An outstanding offer.
#[derive(Debug, Clone)]
pub struct Offer {
    pub id: String,
    pub framework_id: String,
    pub agent_id: String,
    pub role: String,
    pub resources: Resources,
    /// When it was sent: the start of the accepted/declined stage.
    pub created: Time,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    AgentPing(String),
    FrameworkFailover(String),
    RecoveredAgents,
}

/// The master state machine. See the module docs.
#[derive(Debug)]
pub struct Master {
    config: MasterConfig,
    identity: Identity,
    start_time: Time,
    now: Time,
    allocator: Allocator,
    agents: IdMap<Agent>,
    /// Live connection -> agent id.
    conns: HashMap<ConnId, String>,
    frameworks: IdMap<Framework>,
    completed_frameworks: VecDeque<Framework>,
    /// Live stream -> framework id.
    streams: HashMap<StreamId, String>,
    offers: IdMap<Offer>,
    timers: BTreeSet<(Time, Timer)>,
    commands: VecDeque<Command>,
    next_framework: u64,
    next_agent: u64,
    next_offer: u64,
    /// Role weights, configured and updated through the operator API.
    weights: BTreeMap<String, f64>,
    /// Live operator API event streams.
    operator_streams: BTreeSet<StreamId>,
    /// Agents marked gone: they may never register again.
    gone_agents: BTreeSet<String>,
    /// Agents the recovered registry lists that have not re-registered yet.
    recovered_agents: BTreeMap<String, registry::RecoveredAgent>,
    /// The registry as last handed to the shell to persist.
    persisted: Option<Registry>,
    /// A `Command::Persist` is queued and not yet taken.
    persist_pending: bool,
    pub metrics: Metrics,
    /// How long allocation passes took.
    pub allocation_run: offer_path::Latency,
}

/// Counters exposed as Mesos metrics.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub valid_status_updates: u64,
    pub invalid_status_updates: u64,
    pub valid_status_update_acknowledgements: u64,
    pub invalid_status_update_acknowledgements: u64,
    pub offers_sent: u64,
    pub offers_declined: u64,
    pub offers_accepted: u64,
    pub offers_rescinded: u64,
    pub tasks_launched: u64,
    pub agents_unreachable: u64,
    pub agent_registrations: u64,
    pub agent_reregistrations: u64,
    pub allocation_runs: u64,
}

impl Master {
    pub fn new(config: MasterConfig, identity: Identity, now: Time) -> Master {
        let mut allocator = Allocator::new(config.allocator.clone());
        for (role, w) in &config.weights {
            allocator.set_weight(role, *w);
        }
        let weights = config.weights.iter().cloned().collect();
        Master {
            weights,
            config,
            identity,
            start_time: now,
            now,
            allocator,
            agents: IdMap::default(),
            conns: HashMap::new(),
            frameworks: IdMap::default(),
            completed_frameworks: VecDeque::new(),
            streams: HashMap::new(),
            offers: IdMap::default(),
            timers: BTreeSet::new(),
            commands: VecDeque::new(),
            next_framework: 0,
            next_agent: 0,
            next_offer: 0,
            operator_streams: BTreeSet::new(),
            gone_agents: BTreeSet::new(),
            recovered_agents: BTreeMap::new(),
            persisted: None,
            persist_pending: false,
            metrics: Metrics::default(),
            allocation_run: offer_path::Latency::default(),
        }
    }

    // -- views --------------------------------------------------------------------------------

    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    pub fn config(&self) -> &MasterConfig {
        &self.config
    }
    pub fn start_time(&self) -> Time {
        self.start_time
    }
    pub fn now(&self) -> Time {
        self.now
    }
    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }
    pub fn agents(&self) -> &IdMap<Agent> {
        &self.agents
    }
    pub fn frameworks(&self) -> &IdMap<Framework> {
        &self.frameworks
    }
    pub fn completed_frameworks(&self) -> &VecDeque<Framework> {
        &self.completed_frameworks
    }
    pub fn offers(&self) -> &IdMap<Offer> {
        &self.offers
    }

    // -- the machine's outputs ----------------------------------------------------------------

    /// The next thing to do. Runs a pending allocation pass when the queue is empty.
    pub fn poll_command(&mut self) -> Option<Command> {
        if self.commands.is_empty() && self.allocator.has_pending() {
            self.allocate();
        }
        self.commands.pop_front()
    }

    /// When [`Master::handle_timeout`] should next be called.
    pub fn next_timeout(&self) -> Option<Time> {
        let timer = self.timers.first().map(|t| t.0);
        match (timer, self.allocator.next_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires every timer due by `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        self.allocator.set_now(now);
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((at, timer)) = self.timers.pop_first() else { break };
            match timer {
                Timer::AgentPing(id) => self.ping_due(&id, at),
                Timer::FrameworkFailover(id) => self.failover_expired(&id, at),
                Timer::RecoveredAgents => self.recovered_agents_expired(at),
            }
        }
        self.allocator.expire_filters(now);
    }

    fn send_agent(&mut self, agent_id: &str, msg: MasterMessage) {
        if let Some(conn) = self.agents.get(agent_id).and_then(|a| a.conn) {
            self.commands.push_back(Command::SendAgent { conn, msg });
        }
    }

    fn send_event(&mut self, framework_id: &str, event: Event) {
        if let Some(stream) = self.frameworks.get(framework_id).and_then(|f| f.stream.as_ref()) {
            self.commands
                .push_back(Command::SendEvent { stream: stream.id, event: Box::new(event) });
        }
    }

    // -- agents -------------------------------------------------------------------------------

    /// A message arrived on an agent connection (already validated by the wire layer).
    pub fn agent_message(&mut self, now: Time, conn: ConnId, msg: AgentMessage) {
        self.now = now;
        self.allocator.set_now(now);
        match msg {
            AgentMessage::Register(reg) => self.register_agent(conn, reg),
            AgentMessage::Pong { seq } => {
                let Some(id) = self.conns.get(&conn) else { return };
                if let Some(a) = self.agents.get_mut(id)
                    && a.ping.outstanding == Some(seq)
                {
                    a.ping.outstanding = None;
                    a.ping.missed = 0;
                }
            }
            AgentMessage::ExecutorMessage { framework_id, executor_id, data } => {
                let Some(agent) = self.conns.get(&conn).cloned() else { return };
                let event = Event {
                    r#type: Some(v1::scheduler::event::Type::Message as i32),
                    message: Some(v1::scheduler::event::Message {
                        agent_id: v1::AgentId::from_str(&agent),
                        executor_id: v1::ExecutorId::from_str(&executor_id),
                        data,
                    }),
                    ..Default::default()
                };
                self.send_event(&framework_id, event);
            }
            AgentMessage::Usage(samples) => {
                let Some(agent) = self.conns.get(&conn).cloned() else { return };
                self.usage(&agent, samples);
            }
            AgentMessage::StatusUpdate(update) => {
                let Some(id) = self.conns.get(&conn).cloned() else {
                    self.commands.push_back(Command::CloseAgent {
                        conn,
                        reason: "status update before registration".into(),
                    });
                    return;
                };
                self.status_update(&id, update);
            }
        }
    }

    /// Usage samples from `agent`: each replaces its task's previous one. A sample for a task
    /// that is not on that agent is ignored (one agent cannot speak for another's tasks).
    fn usage(&mut self, agent: &str, samples: Vec<corral_wire::proto::TaskUsage>) {
        for u in samples {
            let Some(fw) = self.frameworks.get_mut(&u.framework_id) else { continue };
            let task = match fw.tasks.get_mut(&u.task_id) {
                Some(t) => Some(t),
                // The last sample of a task that just ended.
                None => fw.completed_tasks.iter_mut().rev().find(|t| t.id == u.task_id),
            };
            if let Some(t) = task
                && t.agent_id == agent
            {
                t.usage = Some(Box::new(u));
            }
        }
    }

    /// An agent connection ended (closed, reset, bad record).
    pub fn agent_disconnected(&mut self, now: Time, conn: ConnId) {
        self.now = now;
        self.allocator.set_now(now);
        let Some(id) = self.conns.remove(&conn) else { return };
        let Some(agent) = self.agents.get_mut(&id) else { return };
        if agent.conn != Some(conn) {
            return;
        }
        agent.conn = None;
        if agent.state == AgentState::Connected {
            agent.state = AgentState::Disconnected;
            tracing::info!(agent = %id, "agent disconnected; waiting for it to re-register");
            self.allocator.deactivate_agent(&id);
            self.rescind_agent_offers(&id);
        }
    }

    fn register_agent(&mut self, conn: ConnId, reg: Registration) {
        let refuse = |this: &mut Master, reason: String| {
            tracing::warn!(conn, %reason, "refusing agent registration");
            this.commands.push_back(Command::SendAgent {
                conn,
                msg: MasterMessage::Refused { reason: reason.clone() },
            });
            this.commands.push_back(Command::CloseAgent { conn, reason });
        };
        if reg.protocol_version != PROTOCOL_VERSION {
            return refuse(
                self,
                format!(
                    "agent protocol version {} is not supported (this master speaks {})",
                    reg.protocol_version, PROTOCOL_VERSION
                ),
            );
        }
        if let Some(id) = &reg.agent_id
            && corral_wire::mesos::validate_id(id).is_err()
        {
            return refuse(self, format!("invalid agent id '{id}'"));
        }
        if let Some(id) = &reg.agent_id
            && self.gone_agents.contains(id)
        {
            return refuse(self, format!("Agent {id} has been marked gone"));
        }
        if let Some(old) = self.conns.get(&conn) {
            // A second Register on the same connection: treat as re-registration.
            tracing::debug!(agent = %old, "agent re-sent its registration");
        }
        let now = self.now;
        let (id, reregister) = match reg.agent_id.clone() {
            None => {
                let id = format!("{}-S{}", self.identity.id, self.next_agent);
                self.next_agent += 1;
                (id, false)
            }
            Some(id) => (id, true),
        };
        if reregister {
            self.metrics.agent_reregistrations += 1;
        } else {
            self.metrics.agent_registrations += 1;
        }
        // Replace any older connection of the same agent.
        if let Some(existing) = self.agents.get_mut(&id)
            && let Some(old) = existing.conn.take()
            && old != conn
        {
            self.conns.remove(&old);
            self.commands.push_back(Command::CloseAgent {
                conn: old,
                reason: "agent re-registered on a new connection".into(),
            });
        }
        self.conns.insert(conn, id.clone());

        let ping_due = now + self.config.agent_ping_timeout;
        let previous = self.agents.remove(&id);
        let was_unreachable = previous.as_ref().is_some_and(|a| a.state == AgentState::Unreachable);
        if let Some(prev) = &previous {
            // Rescind its outstanding offers (returning them while the allocator still knows
            // the agent, so nothing is released twice), then forget what the allocator knew:
            // it is rebuilt from the report below.
            let offers: Vec<String> = prev.offers.iter().cloned().collect();
            for o in offers {
                self.rescind_offer(&o);
            }
            self.allocator.remove_agent(&prev.id);
        }
        let mut agent = Agent {
            id: id.clone(),
            registration: reg,
            state: AgentState::Connected,
            conn: Some(conn),
            registered_time: previous.as_ref().map(|p| p.registered_time).unwrap_or(now),
            reregistered_time: reregister.then_some(now),
            unreachable_time: None,
            ping: Ping { due: ping_due, outstanding: None, missed: 0, seq: 0 },
            tasks: BTreeSet::new(),
            offers: BTreeSet::new(),
            deactivated: previous.as_ref().is_some_and(|p| p.deactivated),
            drain: previous.as_ref().and_then(|p| p.drain.clone()),
        };
        let recovered = self.take_recovered(&id);
        // The registry changes only when an agent it does not list is admitted.
        let admitted = previous.is_none() && recovered.is_none();
        if let Some((deactivated, drain)) = recovered {
            agent.deactivated = deactivated;
            agent.drain = drain;
        }
        let known: BTreeSet<(String, String)> =
            previous.as_ref().map(|p| p.tasks.clone()).unwrap_or_default();
        let reports = std::mem::take(&mut agent.registration.tasks);
        let mut used: Vec<(String, String, Resources)> = Vec::new();
        let mut reported = BTreeSet::new();
        let mut kill = Vec::new();
        let mut added_frameworks = Vec::new();
        let mut added_tasks = Vec::new();
        for report in &reports {
            let key = (report.framework_id.clone(), report.task.task_id.clone());
            reported.insert(key.clone());
            let state = v1::TaskState::try_from(report.state).unwrap_or(v1::TaskState::TaskStaging);
            if is_terminal(state) {
                // Terminal but unacknowledged: its update is being retried; no resources.
                if let Some(t) =
                    self.frameworks.get_mut(&key.0).and_then(|f| f.tasks.get_mut(&key.1))
                {
                    t.state = state;
                }
                agent.tasks.insert(key);
                continue;
            }
            if !self.frameworks.contains_key(&key.0) {
                // A framework this master has not seen (it restarted): recovered from the
                // agent's report, inactive until it subscribes.
                self.allocator.add_framework(&key.0, &["*".to_string()], &[], false);
                added_frameworks.push(key.0.clone());
            }
            let fw = self.frameworks.entry(key.0.clone()).or_insert_with(|| {
                let info = v1::FrameworkInfo {
                    id: Some(v1::FrameworkId::from_str(&key.0)),
                    ..Default::default()
                };
                Framework::new(&key.0, info, vec!["*".into()], Vec::new(), None)
            });
            // A task the master had declared lost to a framework that is not partition aware
            // must not come back: kill it.
            if was_unreachable && !fw.partition_aware() && fw.unreachable_tasks.contains_key(&key.1)
            {
                fw.unreachable_tasks.remove(&key.1);
                kill.push(key.clone());
                continue;
            }
            let role = fw
                .tasks
                .get(&key.1)
                .or_else(|| fw.unreachable_tasks.get(&key.1))
                .map(|t| t.role.clone())
                .unwrap_or_else(|| fw.roles.first().cloned().unwrap_or_else(|| "*".into()));
            let known_task =
                fw.unreachable_tasks.contains_key(&key.1) || fw.tasks.contains_key(&key.1);
            if !known_task {
                added_tasks.push(key.clone());
            }
            let mut task =
                fw.unreachable_tasks.remove(&key.1).or_else(|| fw.tasks.remove(&key.1)).unwrap_or(
                    Task {
                        id: key.1.clone(),
                        name: report.task.name.clone(),
                        framework_id: key.0.clone(),
                        agent_id: id.clone(),
                        role: role.clone(),
                        resources: report.task.resources.clone(),
                        state,
                        latest_uuid: None,
                        statuses_pb: Vec::new(),
                        info_pb: None,
                        container_id: None,
                        user: report.task.command.user.clone(),
                        executor_id: report.task.group.as_ref().map(|g| g.executor_id.clone()),
                        usage: None,
                        accepted_at: None,
                    },
                );
            task.state = state;
            task.agent_id = id.clone();
            fw.tasks.insert(key.1.clone(), task);
            used.push((key.0.clone(), role, report.task.resources.clone()));
            agent.tasks.insert(key);
        }
        // Tasks the master thought were on this agent but the agent does not report are gone.
        let mut gone = Vec::new();
        for key in known.difference(&reported) {
            gone.push(key.clone());
        }
        let deactivated = agent.deactivated;
        self.agents.insert(id.clone(), agent);
        self.allocator.add_agent(&id, self.agents[&id].total().clone(), &used);
        if deactivated {
            self.allocator.deactivate_agent(&id);
        }
        self.schedule(ping_due, Timer::AgentPing(id.clone()));
        if previous.is_none() || was_unreachable {
            self.emit_agent_added(&id);
        }
        for fid in added_frameworks {
            self.emit_framework(&fid, true);
        }
        for (fid, tid) in added_tasks {
            self.emit_task_added(&fid, &tid);
        }
        for (fid, tid) in gone {
            let state = self.frameworks.get(&fid).map(|f| f.lost(v1::TaskState::TaskGone));
            if let Some(state) = state {
                self.master_task_transition(
                    &fid,
                    &tid,
                    state,
                    v1::task_status::Reason::Reconciliation,
                    "Task is unknown to the agent",
                );
            }
        }
        for (fid, tid) in kill {
            self.send_agent(
                &id,
                MasterMessage::KillTask { framework_id: fid, task_id: tid, grace_period_ns: None },
            );
        }
        self.check_drained(&id);
        // Admitted durably before the agent is told.
        if admitted {
            self.persist();
        }
        tracing::info!(agent = %id, reregister, "agent registered");
        self.commands.push_back(Command::SendAgent {
            conn,
            msg: MasterMessage::Registered {
                agent_id: id,
                master_id: self.identity.id.clone(),
                ping_interval_ms: self.config.agent_ping_timeout.as_millis() as u64,
            },
        });
    }

    fn schedule(&mut self, at: Time, timer: Timer) {
        self.timers.insert((at, timer));
    }

    fn ping_due(&mut self, id: &str, at: Time) {
        let timeout = self.config.agent_ping_timeout;
        let max = self.config.max_agent_ping_timeouts;
        let Some(agent) = self.agents.get_mut(id) else { return };
        if agent.state == AgentState::Unreachable || agent.ping.due != at {
            return;
        }
        if agent.ping.outstanding.is_some() || agent.conn.is_none() {
            agent.ping.missed += 1;
        }
        if agent.ping.missed >= max {
            self.mark_unreachable(id, "health check timed out");
            return;
        }
        agent.ping.seq += 1;
        let seq = agent.ping.seq;
        agent.ping.due = at + timeout;
        let due = agent.ping.due;
        if let Some(conn) = agent.conn {
            agent.ping.outstanding = Some(seq);
            self.commands.push_back(Command::SendAgent { conn, msg: MasterMessage::Ping { seq } });
        }
        self.schedule(due, Timer::AgentPing(id.to_string()));
    }

    fn mark_unreachable(&mut self, id: &str, why: &str) {
        let now = self.now;
        let Some(agent) = self.agents.get_mut(id) else { return };
        tracing::warn!(agent = %id, hostname = %agent.registration.hostname, why, "agent unreachable");
        self.metrics.agents_unreachable += 1;
        agent.state = AgentState::Unreachable;
        agent.unreachable_time = Some(now);
        let conn = agent.conn.take();
        let tasks: Vec<(String, String)> = agent.tasks.iter().cloned().collect();
        let message = format!("Agent {} ({id}) is unreachable: {why}", agent.registration.hostname);
        if let Some(conn) = conn {
            self.conns.remove(&conn);
            self.commands.push_back(Command::CloseAgent { conn, reason: why.to_string() });
        }
        self.rescind_agent_offers(id);
        self.allocator.remove_agent(id);
        for fw in self.frameworks.values_mut() {
            fw.executors.retain(|_, e| e.agent_id != id);
        }
        for (fid, tid) in tasks {
            let Some(fw) = self.frameworks.get(&fid) else { continue };
            let state = fw.lost(v1::TaskState::TaskUnreachable);
            let Some(task) = fw.tasks.get(&tid) else { continue };
            if is_terminal(task.state) {
                continue;
            }
            let mut status = self.master_status(
                &fid,
                &tid,
                state,
                v1::task_status::Reason::AgentRemoved,
                &message,
            );
            status.unreachable_time = Some(v1::TimeInfo { nanoseconds: now.0 as i64 });
            let fw = self.frameworks.get_mut(&fid).expect("checked above");
            if let Some(mut task) = fw.tasks.remove(&tid) {
                task.state = state;
                push_status(&mut task, status.clone());
                fw.unreachable_tasks.insert(tid.clone(), task);
            }
            self.send_update(&fid, status);
        }
        self.emit(|_| operator::agent_removed(id));
        // Tell every framework the agent is lost (Mesos' FAILURE with only agent_id).
        let failure = Event {
            r#type: Some(v1::scheduler::event::Type::Failure as i32),
            failure: Some(v1::scheduler::event::Failure {
                agent_id: Some(v1::AgentId::from_str(id)),
                executor_id: None,
                status: None,
            }),
            ..Default::default()
        };
        let fids: Vec<String> = self.frameworks.keys().cloned().collect();
        for fid in fids {
            self.send_event(&fid, failure.clone());
        }
    }

    // -- status updates -------------------------------------------------------------------------

    fn status_update(&mut self, agent_id: &str, update: StatusUpdate) {
        let Some(state) = update.task_state() else {
            self.metrics.invalid_status_updates += 1;
            tracing::warn!(agent = %agent_id, state = update.state, "status update with unknown state");
            return;
        };
        if !self.frameworks.contains_key(&update.framework_id) {
            // A framework this master removed (or never knew): its tasks must go.
            self.metrics.invalid_status_updates += 1;
            self.send_agent(
                agent_id,
                MasterMessage::ShutdownFramework { framework_id: update.framework_id.clone() },
            );
            return;
        }
        self.metrics.valid_status_updates += 1;
        let status = v1::TaskStatus {
            task_id: v1::TaskId::from_str(&update.task_id),
            state: state as i32,
            message: (!update.message.is_empty()).then(|| update.message.clone()),
            source: Some(update.source),
            reason: update.reason,
            data: None,
            agent_id: Some(v1::AgentId::from_str(agent_id)),
            executor_id: Some(v1::ExecutorId::from_str(&update.task_id)),
            timestamp: Some(update.timestamp_ns as f64 / 1e9),
            uuid: Some(update.uuid.to_vec()),
            container_status: update.container_id.as_ref().map(|c| v1::ContainerStatus {
                container_id: Some(v1::ContainerId { value: c.clone(), parent: None }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let fw = self.frameworks.get_mut(&update.framework_id).expect("checked above");
        let mut status = status;
        if let Some(e) = fw.tasks.get(&update.task_id).and_then(|t| t.executor_id.clone()) {
            status.executor_id = Some(v1::ExecutorId::from_str(e));
        }
        let task = fw.tasks.get_mut(&update.task_id);
        let mut released = None;
        let mut changed = false;
        let mut reached_running = None;
        match task {
            Some(task) => {
                if state == v1::TaskState::TaskRunning
                    && let Some(at) = task.accepted_at.take()
                {
                    reached_running = Some((task.role.clone(), at));
                }
                let was_terminal = is_terminal(task.state);
                if !was_terminal {
                    changed = task.state != state;
                    task.state = state;
                }
                if task.latest_uuid.as_deref() != Some(&update.uuid[..]) {
                    push_status(task, status.clone());
                }
                task.latest_uuid = Some(update.uuid.to_vec());
                if update.container_id.is_some() {
                    task.container_id = update.container_id.clone();
                }
                if !was_terminal && is_terminal(state) {
                    released = Some((task.role.clone(), task.resources.clone()));
                }
            }
            None => {
                tracing::debug!(task = %update.task_id, "status update for a task the master does not track; forwarding");
            }
        }
        if let Some((role, at)) = reached_running {
            fw.stages(&role).running.record_between(at, self.now);
        }
        if let Some((role, resources)) = released {
            self.allocator.recover(
                self.now,
                &update.framework_id,
                agent_id,
                &role,
                &resources,
                None,
            );
        }
        if changed {
            self.emit_task_updated(&update.framework_id, &status);
        }
        self.maybe_release_executor(&update.framework_id, &update.task_id);
        self.send_event(&update.framework_id, update_event(status));
    }

    /// Builds a status update generated by the master (no uuid: not to be acknowledged).
    fn master_status(
        &self,
        framework_id: &str,
        task_id: &str,
        state: v1::TaskState,
        reason: v1::task_status::Reason,
        message: &str,
    ) -> v1::TaskStatus {
        let agent = self
            .frameworks
            .get(framework_id)
            .and_then(|f| f.tasks.get(task_id).or_else(|| f.unreachable_tasks.get(task_id)))
            .map(|t| t.agent_id.clone());
        master_update(task_id, state, reason, message, agent.as_deref(), self.now)
    }

    /// Moves a task to a terminal state decided by the master, releases its resources,
    /// tells the framework, and retires the task (master updates need no acknowledgement).
    fn master_task_transition(
        &mut self,
        framework_id: &str,
        task_id: &str,
        state: v1::TaskState,
        reason: v1::task_status::Reason,
        message: &str,
    ) {
        let status = self.master_status(framework_id, task_id, state, reason, message);
        let Some(fw) = self.frameworks.get_mut(framework_id) else { return };
        let Some(mut task) = fw.tasks.remove(task_id) else { return };
        let release = !is_terminal(task.state);
        task.state = state;
        push_status(&mut task, status.clone());
        let (agent, role, resources) =
            (task.agent_id.clone(), task.role.clone(), task.resources.clone());
        fw.completed_tasks.push_back(task);
        if fw.completed_tasks.len() > self.config.max_completed_tasks_per_framework {
            fw.completed_tasks.pop_front();
        }
        if let Some(a) = self.agents.get_mut(&agent) {
            a.tasks.remove(&(framework_id.to_string(), task_id.to_string()));
        }
        if release {
            self.allocator.recover(self.now, framework_id, &agent, &role, &resources, None);
        }
        self.send_update(framework_id, status);
        self.maybe_release_executor(framework_id, task_id);
        self.check_drained(&agent);
    }

    /// Gives back a task group executor's resources once every task of it is over.
    fn maybe_release_executor(&mut self, fid: &str, task_id: &str) {
        let Some(fw) = self.frameworks.get_mut(fid) else { return };
        let Some((eid, _)) = fw.executors.iter().find(|(_, e)| e.tasks.contains(task_id)) else {
            return;
        };
        let eid = eid.clone();
        let live = fw.executors[&eid]
            .tasks
            .iter()
            .any(|t| fw.tasks.get(t).is_some_and(|t| !is_terminal(t.state)));
        if live {
            return;
        }
        let Some(e) = fw.executors.remove(&eid) else { return };
        tracing::debug!(framework = %fid, executor = %eid, "task group executor done");
        self.allocator.recover(self.now, fid, &e.agent_id, &e.role, &e.resources, None);
    }

    // -- offers -----------------------------------------------------------------------------------

    fn allocate(&mut self) {
        self.metrics.allocation_runs += 1;
        let started = (self.config.stopwatch)();
        let decisions = self.allocator.allocate(self.now);
        self.allocation_run.record_ns((self.config.stopwatch)().saturating_sub(started));
        let mut by_framework: BTreeMap<String, Vec<v1::Offer>> = BTreeMap::new();
        for d in decisions {
            let id = format!("{}-O{}", self.identity.id, self.next_offer);
            self.next_offer += 1;
            let Some(agent) = self.agents.get_mut(&d.agent) else { continue };
            agent.offers.insert(id.clone());
            let record = Offer {
                id: id.clone(),
                framework_id: d.framework.clone(),
                agent_id: d.agent,
                role: d.role,
                resources: d.resources,
                created: self.now,
            };
            let offer = self.offer_proto(&record);
            if let Some(fw) = self.frameworks.get_mut(&d.framework) {
                fw.offers.insert(id.clone());
                fw.stages(&record.role).offered.record_between(d.since, self.now);
            }
            self.offers.insert(id, record);
            by_framework.entry(d.framework).or_default().push(offer);
        }
        for (fid, offers) in by_framework {
            self.metrics.offers_sent += offers.len() as u64;
            self.send_event(
                &fid,
                Event {
                    r#type: Some(v1::scheduler::event::Type::Offers as i32),
                    offers: Some(v1::scheduler::event::Offers { offers }),
                    ..Default::default()
                },
            );
        }
    }

    /// An outstanding offer as its framework sees it.
    pub fn offer_proto(&self, o: &Offer) -> v1::Offer {
        let reg = self.agents.get(&o.agent_id).map(|a| &a.registration);
        let hostname = reg.map(|r| r.hostname.clone()).unwrap_or_default();
        v1::Offer {
            id: v1::OfferId::from_str(&o.id),
            framework_id: v1::FrameworkId::from_str(&o.framework_id),
            agent_id: v1::AgentId::from_str(&o.agent_id),
            hostname: hostname.clone(),
            url: reg.map(|reg| v1::Url {
                scheme: "http".into(),
                address: v1::Address {
                    hostname: Some(hostname),
                    ip: Some(reg.http_address.clone()),
                    port: i32::from(reg.http_port),
                },
                path: Some("/slave(1)".into()),
                query: Vec::new(),
                fragment: None,
            }),
            resources: o.resources.to_mesos(Some(&o.role)),
            attributes: reg
                .map(|r| r.attributes.iter().map(attribute_to_mesos).collect())
                .unwrap_or_default(),
            allocation_info: Some(v1::resource::AllocationInfo { role: Some(o.role.clone()) }),
            ..Default::default()
        }
    }

    /// Removes an offer; with `recover`, its resources go back to the allocator.
    fn remove_offer(&mut self, id: &str, recover: bool) -> Option<Offer> {
        let offer = self.offers.remove(id)?;
        if let Some(a) = self.agents.get_mut(&offer.agent_id) {
            a.offers.remove(id);
        }
        if let Some(f) = self.frameworks.get_mut(&offer.framework_id) {
            f.offers.remove(id);
        }
        if recover {
            self.allocator.recover(
                self.now,
                &offer.framework_id,
                &offer.agent_id,
                &offer.role,
                &offer.resources,
                None,
            );
        }
        Some(offer)
    }

    /// Rescinds an offer: its framework gets RESCIND and the resources return.
    fn rescind_offer(&mut self, id: &str) {
        if let Some(offer) = self.remove_offer(id, true) {
            self.metrics.offers_rescinded += 1;
            self.send_event(
                &offer.framework_id,
                Event {
                    r#type: Some(v1::scheduler::event::Type::Rescind as i32),
                    rescind: Some(v1::scheduler::event::Rescind {
                        offer_id: v1::OfferId::from_str(id),
                    }),
                    ..Default::default()
                },
            );
        }
    }

    fn rescind_agent_offers(&mut self, agent_id: &str) {
        let offers: Vec<String> = self
            .agents
            .get(agent_id)
            .map(|a| a.offers.iter().cloned().collect())
            .unwrap_or_default();
        for o in offers {
            self.rescind_offer(&o);
        }
    }

    // -- frameworks: failover -----------------------------------------------------------------

    fn failover_expired(&mut self, id: &str, at: Time) {
        let expired = self
            .frameworks
            .get(id)
            .is_some_and(|f| !f.connected() && f.failover_deadline == Some(at));
        if expired {
            tracing::info!(framework = %id, "framework failover timeout expired; removing it");
            self.remove_framework(id);
        }
    }

    /// A framework's event stream ended (the HTTP connection closed).
    pub fn stream_closed(&mut self, now: Time, stream: StreamId) {
        self.now = now;
        self.allocator.set_now(now);
        if self.operator_streams.remove(&stream) {
            return;
        }
        let Some(fid) = self.streams.remove(&stream) else { return };
        let Some(fw) = self.frameworks.get_mut(&fid) else { return };
        if fw.stream.as_ref().map(|s| s.id) != Some(stream) {
            return;
        }
        fw.stream = None;
        fw.unregistered_time = Some(now);
        let timeout = fw.info.failover_timeout.unwrap_or(0.0);
        let timeout = if timeout.is_finite() && timeout > 0.0 {
            Duration::from_secs_f64(timeout.min(1e9))
        } else {
            Duration::ZERO
        };
        let deadline = now + timeout;
        fw.failover_deadline = Some(deadline);
        tracing::info!(framework = %fid, failover_timeout = ?timeout, "framework disconnected");
        self.allocator.deactivate_framework(&fid);
        let offers: Vec<String> = fw.offers.iter().cloned().collect();
        for o in offers {
            self.remove_offer(&o, true);
        }
        self.schedule(deadline, Timer::FrameworkFailover(fid.clone()));
        self.emit_framework(&fid, false);
    }

    /// Removes a framework: kills its tasks, releases its resources, closes its stream.
    fn remove_framework(&mut self, id: &str) {
        let offers: Vec<String> =
            self.frameworks.get(id).map(|f| f.offers.iter().cloned().collect()).unwrap_or_default();
        for o in offers {
            self.remove_offer(&o, true);
        }
        let Some(mut fw) = self.frameworks.remove(id) else { return };
        let mut agents_with_tasks = BTreeSet::new();
        let mut killed = Vec::new();
        let now = self.now;
        for (_, mut task) in std::mem::take(&mut fw.tasks) {
            agents_with_tasks.insert(task.agent_id.clone());
            if let Some(a) = self.agents.get_mut(&task.agent_id) {
                a.tasks.remove(&(id.to_string(), task.id.clone()));
            }
            if !is_terminal(task.state) {
                task.state = v1::TaskState::TaskKilled;
                let status = master_update(
                    &task.id,
                    v1::TaskState::TaskKilled,
                    v1::task_status::Reason::FrameworkRemoved,
                    "Framework removed",
                    Some(&task.agent_id),
                    now,
                );
                push_status(&mut task, status.clone());
                killed.push(status);
            }
            fw.completed_tasks.push_back(task);
        }
        for (_, task) in std::mem::take(&mut fw.unreachable_tasks) {
            agents_with_tasks.insert(task.agent_id.clone());
            fw.completed_tasks.push_back(task);
        }
        while fw.completed_tasks.len() > self.config.max_completed_tasks_per_framework {
            fw.completed_tasks.pop_front();
        }
        self.allocator.remove_framework(id);
        let touched: Vec<String> = agents_with_tasks.iter().cloned().collect();
        for agent in agents_with_tasks {
            self.send_agent(
                &agent,
                MasterMessage::ShutdownFramework { framework_id: id.to_string() },
            );
        }
        if let Some(stream) = fw.stream.take() {
            self.streams.remove(&stream.id);
            self.commands.push_back(Command::CloseStream { stream: stream.id });
        }
        fw.unregistered_time = Some(now);
        let info = fw.info.clone();
        self.completed_frameworks.push_back(fw);
        if self.completed_frameworks.len() > self.config.max_completed_frameworks {
            self.completed_frameworks.pop_front();
        }
        for status in killed {
            self.emit_task_updated(id, &status);
        }
        self.emit_framework_removed(&info);
        for a in touched {
            self.check_drained(&a);
        }
    }
}

fn push_status(task: &mut Task, status: v1::TaskStatus) {
    task.statuses_pb.push(prost::Message::encode_to_vec(&status).into_boxed_slice());
    if task.statuses_pb.len() > MAX_STATUSES_PER_TASK {
        task.statuses_pb.remove(0);
    }
}

/// A status update generated by the master: source MASTER and no uuid, so schedulers do not
/// acknowledge it.
pub(crate) fn master_update(
    task_id: &str,
    state: v1::TaskState,
    reason: v1::task_status::Reason,
    message: &str,
    agent_id: Option<&str>,
    now: Time,
) -> v1::TaskStatus {
    v1::TaskStatus {
        task_id: v1::TaskId::from_str(task_id),
        state: state as i32,
        message: Some(message.to_string()),
        source: Some(v1::task_status::Source::Master as i32),
        reason: Some(reason as i32),
        agent_id: agent_id.map(v1::AgentId::from_str),
        timestamp: Some(now.as_secs_f64()),
        ..Default::default()
    }
}

/// An UPDATE event carrying `status`.
pub fn update_event(status: v1::TaskStatus) -> Event {
    Event {
        r#type: Some(v1::scheduler::event::Type::Update as i32),
        update: Some(v1::scheduler::event::Update { status }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
