//! An in-process cluster for `corral bench`: the real master core ([`Master`], the same state
//! machine `corral master` runs) driven directly by simulated agents and frameworks, with no
//! QUIC or HTTP in between. What it measures is the master's own work: allocation, offers,
//! launches, status updates and acknowledgements.
//!
//! Time is real time, except that when neither the master nor any simulated party has
//! anything to do, the clock jumps to the next timer (a task ending, a ping, a filter
//! expiring). So a 30 s task costs no waiting, while every microsecond the master spends
//! computing shows up in the latencies exactly as it would on a live master.
//!
//! Simulated agents register, answer pings, report TASK_RUNNING as soon as a task arrives
//! and TASK_FINISHED when its duration has passed; simulated frameworks subscribe, then per
//! [`Behaviour`] decline every offer or fill it with tasks, and acknowledge every update.
#![allow(clippy::disallowed_methods)] // the simulation's clock is real time

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corral_master::core::{Command, Master, MasterConfig, Time};
use corral_master::shell::batch_done;
use corral_wire::mesos::v1::scheduler::{Call, Event, call, event};
use corral_wire::mesos::v1::{self, TaskState};
use corral_wire::proto::{
    AgentMessage, IsolationReport, MasterMessage, PROTOCOL_VERSION, Registration, StatusUpdate,
};
use corral_wire::resources::Resources;

/// What a simulated framework does with offers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Declines every offer, filtering the agent for `refuse`.
    DeclineAll { refuse: Duration },
    /// Launches tasks of `task` resources running `duration` (± `jitter`, uniform): as many
    /// as fit in each offer, or at most `per_offer`; until `limit` tasks were launched (if
    /// set), when it SUPPRESSes offers, as a framework with nothing left to run should. The
    /// master's default filter (5 s) applies to what an offer had left.
    Launch {
        task: Resources,
        duration: Duration,
        jitter: Duration,
        per_offer: Option<u64>,
        limit: Option<u64>,
    },
}

/// Counters a scenario reads.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub offers: u64,
    pub declines: u64,
    pub launched: u64,
    pub running: u64,
    pub finished: u64,
    pub updates: u64,
    /// When the framework got SUBSCRIBED, its first offer and its first TASK_RUNNING (a
    /// probe's overhead, stage by stage).
    pub subscribed_at: Option<Time>,
    pub first_offer_at: Option<Time>,
    pub first_running_at: Option<Time>,
}

/// What a simulated framework decides, whichever transport carries its calls and events:
/// the in-process [`Sim`] and the QUIC cluster of [`crate::sim_quic`] both drive it.
///
/// A launched task's command is `sleep SECONDS`: the simulated agent that receives it reports
/// TASK_RUNNING at once and TASK_FINISHED when that time has passed ([`task_duration`]).
#[derive(Debug)]
pub struct FrameworkModel {
    index: usize,
    pub id: Option<String>,
    role: String,
    behaviour: Behaviour,
    pub counts: Counts,
    /// When a task of this framework finished, by task id (for one-task probes).
    pub finished_at: HashMap<String, Time>,
    next_task: u64,
    rng: u64,
    /// It sent SUPPRESS (once its `limit` is reached).
    suppressed: bool,
}

impl FrameworkModel {
    pub fn new(index: usize, role: &str, behaviour: Behaviour) -> FrameworkModel {
        FrameworkModel {
            index,
            id: None,
            role: role.into(),
            behaviour,
            counts: Counts::default(),
            finished_at: HashMap::new(),
            next_task: 0,
            suppressed: false,
            rng: 0x9e37_79b9_7f4a_7c15 ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d),
        }
    }

    /// The SUBSCRIBE call of a framework named `name` in this model's role.
    pub fn subscribe(&self, name: &str) -> call::Subscribe {
        let info = v1::FrameworkInfo {
            user: "root".into(),
            name: name.into(),
            roles: vec![self.role.clone()],
            capabilities: vec![v1::framework_info::Capability {
                r#type: Some(v1::framework_info::capability::Type::MultiRole as i32),
            }],
            ..Default::default()
        };
        call::Subscribe { framework_info: info, ..Default::default() }
    }

    /// Reacts to one event at `now`: the calls to make go to `out`. `Err` when the master
    /// sent an ERROR (the run stops).
    pub fn on_event(&mut self, event: Event, now: Time, out: &mut Vec<Call>) -> Result<(), String> {
        match event.r#type() {
            event::Type::Subscribed => {
                self.id = event.subscribed.map(|s| s.framework_id.value);
                self.counts.subscribed_at.get_or_insert(now);
            }
            event::Type::Offers => {
                self.counts.first_offer_at.get_or_insert(now);
                for offer in event.offers.map(|o| o.offers).unwrap_or_default() {
                    self.counts.offers += 1;
                    out.push(self.answer(offer));
                }
                if !self.suppressed
                    && matches!(self.behaviour, Behaviour::Launch { limit: Some(l), .. } if self.counts.launched >= l)
                {
                    // Nothing left to launch: no more offers, please.
                    self.suppressed = true;
                    out.push(Call {
                        framework_id: self.framework_id(),
                        r#type: Some(call::Type::Suppress as i32),
                        suppress: Some(call::Suppress { roles: Vec::new() }),
                        ..Default::default()
                    });
                }
            }
            event::Type::Update => {
                let Some(status) = event.update.map(|u| u.status) else { return Ok(()) };
                self.counts.updates += 1;
                match status.state() {
                    TaskState::TaskRunning => {
                        self.counts.running += 1;
                        self.counts.first_running_at.get_or_insert(now);
                    }
                    TaskState::TaskFinished => {
                        self.counts.finished += 1;
                        if matches!(self.behaviour, Behaviour::Launch { limit: Some(_), .. }) {
                            self.finished_at.insert(status.task_id.value.clone(), now);
                        }
                    }
                    _ => {}
                }
                if let (Some(uuid), Some(agent_id)) = (status.uuid, status.agent_id) {
                    out.push(Call {
                        framework_id: self.framework_id(),
                        r#type: Some(call::Type::Acknowledge as i32),
                        acknowledge: Some(call::Acknowledge {
                            agent_id,
                            task_id: status.task_id,
                            uuid,
                        }),
                        ..Default::default()
                    });
                }
            }
            event::Type::Error => return Err(format!("a framework got ERROR: {:?}", event.error)),
            _ => {}
        }
        Ok(())
    }

    fn framework_id(&self) -> Option<v1::FrameworkId> {
        self.id.as_ref().map(|id| v1::FrameworkId { value: id.clone() })
    }

    fn random(&mut self, bound: u64) -> u64 {
        // xorshift64*: plenty for jitter.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        if bound == 0 { 0 } else { x % bound }
    }

    /// The framework's answer to one offer: DECLINE or ACCEPT with tasks.
    fn answer(&mut self, offer: v1::Offer) -> Call {
        let framework_id = self.framework_id();
        let (task, limit, duration, jitter) = match &self.behaviour {
            Behaviour::DeclineAll { refuse } => {
                let refuse = refuse.as_secs_f64();
                self.counts.declines += 1;
                return Call {
                    framework_id,
                    r#type: Some(call::Type::Decline as i32),
                    decline: Some(call::Decline {
                        offer_ids: vec![offer.id],
                        filters: Some(v1::Filters { refuse_seconds: Some(refuse) }),
                    }),
                    ..Default::default()
                };
            }
            Behaviour::Launch { task, limit, per_offer, duration, jitter } => {
                let left = limit.map(|l| l.saturating_sub(self.counts.launched));
                let cap = match (left, per_offer) {
                    (Some(a), Some(b)) => Some(a.min(*b)),
                    (a, b) => a.or(*b),
                };
                (task.clone(), cap, *duration, *jitter)
            }
        };
        let mut left = Resources::from_mesos(&offer.resources).unwrap_or_default();
        let mut tasks = Vec::new();
        while left.contains(&task) && limit.is_none_or(|l| (tasks.len() as u64) < l) {
            left.subtract(&task);
            self.next_task += 1;
            let id = format!("f{}-t{}", self.index, self.next_task);
            let d = duration.saturating_sub(jitter)
                + Duration::from_nanos(self.random(2 * jitter.as_nanos() as u64 + 1));
            tasks.push(v1::TaskInfo {
                name: id.clone(),
                task_id: v1::TaskId { value: id },
                agent_id: offer.agent_id.clone(),
                resources: task.to_mesos(Some(&self.role)),
                command: Some(v1::CommandInfo {
                    value: Some(format!("sleep {:.3}", d.as_secs_f64())),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        self.counts.launched += tasks.len() as u64;
        if tasks.is_empty() {
            // Nothing fits: decline, with the default filter.
            self.counts.declines += 1;
            return Call {
                framework_id,
                r#type: Some(call::Type::Decline as i32),
                decline: Some(call::Decline { offer_ids: vec![offer.id], filters: None }),
                ..Default::default()
            };
        }
        Call {
            framework_id,
            r#type: Some(call::Type::Accept as i32),
            accept: Some(call::Accept {
                offer_ids: vec![offer.id],
                operations: vec![v1::offer::Operation {
                    r#type: Some(v1::offer::operation::Type::Launch as i32),
                    launch: Some(v1::offer::operation::Launch { task_infos: tasks }),
                    ..Default::default()
                }],
                filters: None,
            }),
            ..Default::default()
        }
    }
}

/// A simulated agent's status update (both transports).
pub fn status_update(
    framework_id: &str,
    task_id: &str,
    state: TaskState,
    uuid: [u8; 16],
    at: Time,
) -> AgentMessage {
    AgentMessage::StatusUpdate(StatusUpdate {
        framework_id: framework_id.into(),
        task_id: task_id.into(),
        state: state as i32,
        reason: None,
        source: v1::task_status::Source::Executor as i32,
        message: String::new(),
        uuid,
        timestamp_ns: at.0,
        container_id: None,
    })
}

/// The registration of simulated agent number `n` (both transports).
pub fn registration(n: usize, resources: &Resources) -> Registration {
    Registration {
        protocol_version: PROTOCOL_VERSION,
        agent_id: None,
        hostname: format!("sim-{n}"),
        http_address: "127.0.0.1".into(),
        http_port: 5051,
        resources: resources.clone(),
        attributes: Vec::new(),
        version: env!("CARGO_PKG_VERSION").into(),
        boot_id: "sim".into(),
        tasks: Vec::new(),
        isolation: IsolationReport::default(),
    }
}

/// How long a simulated task runs: its command is `sleep SECONDS` (see [`FrameworkModel`]).
pub fn task_duration(command: Option<&str>) -> Duration {
    command
        .and_then(|c| c.strip_prefix("sleep "))
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::ZERO)
}

#[derive(Debug)]
struct SimAgent {
    id: Option<String>,
    next_uuid: u64,
}

/// Something that happens later (virtual time).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Later {
    /// A task's process ends.
    Finish { conn: u64, framework_id: String, task_id: String },
    /// Framework `index` subscribes, as `name`.
    Subscribe { index: usize, name: String },
}

/// An input for the master, queued in arrival order.
#[derive(Debug)]
enum Input {
    Agent(u64, AgentMessage),
    /// A scheduler call on the stream whose `Mesos-Stream-Id` is `uuid`.
    Call {
        uuid: String,
        call: Box<Call>,
    },
    Subscribe {
        stream: u64,
        uuid: String,
        sub: Box<call::Subscribe>,
    },
}

/// The subscriber stream id of framework `i`.
fn stream_of(i: usize) -> u64 {
    1_000_000 + i as u64
}

/// Applies one input to the master (both modes).
fn apply(master: &mut Master, now: Time, input: Input) -> Option<String> {
    match input {
        Input::Agent(conn, msg) => master.agent_message(now, conn, msg),
        Input::Call { uuid, call } => {
            if let Err(e) = master.call(now, Some(&uuid), *call) {
                return Some(format!("the master refused a call: {e:?}"));
            }
        }
        Input::Subscribe { stream, uuid, sub } => master.subscribe(now, stream, uuid, *sub),
    }
    None
}

/// What flows to the master thread in [`Sim::run_threaded`].
enum ToMaster {
    Inputs(Vec<Input>),
    Stop,
}

/// Where work waits in [`Sim::run_threaded`], sampled as it runs: inputs queued at the
/// master, and commands the master sent that the simulation has not handled yet.
#[derive(Debug, Default)]
pub struct Backlog {
    pub master_inputs: AtomicU64,
    pub sim_commands: AtomicU64,
}

/// The simulation: the master core and everyone around it.
#[derive(Debug)]
pub struct Sim {
    pub master: Master,
    start: Instant,
    epoch_ns: u64,
    skipped: Duration,
    agents: Vec<SimAgent>,
    frameworks: Vec<FrameworkModel>,
    /// Each framework's `Mesos-Stream-Id`.
    uuids: Vec<String>,
    by_stream: HashMap<u64, usize>,
    later: BinaryHeap<Reverse<(Time, Later)>>,
    inbox: VecDeque<Input>,
    /// What went wrong, if the master refused or closed something (the run stops).
    pub failure: Option<String>,
    /// Wall time spent inside the master core (its calls and its command queue), as opposed
    /// to the simulation's own work.
    pub master_time: Duration,
    /// Where work waits while [`Sim::run_threaded`] runs.
    pub backlog: Arc<Backlog>,
}

impl Sim {
    pub fn new(config: MasterConfig) -> Sim {
        let epoch_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let identity = corral_master::core::Identity {
            id: uuid::Uuid::new_v4().to_string(),
            hostname: "sim".into(),
            ip: std::net::Ipv4Addr::LOCALHOST,
            port: 5050,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let master = Master::new(config, identity, Time(epoch_ns));
        Sim {
            master,
            start: Instant::now(),
            epoch_ns,
            skipped: Duration::ZERO,
            agents: Vec::new(),
            frameworks: Vec::new(),
            by_stream: HashMap::new(),
            later: BinaryHeap::new(),
            inbox: VecDeque::new(),
            uuids: Vec::new(),
            failure: None,
            master_time: Duration::ZERO,
            backlog: Arc::default(),
        }
    }

    /// The simulation's clock: real time plus the idle stretches it skipped.
    pub fn now(&self) -> Time {
        Time(self.epoch_ns + (self.start.elapsed() + self.skipped).as_nanos() as u64)
    }

    /// Virtual seconds since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed() + self.skipped
    }

    /// How much idle time was skipped.
    pub fn skipped(&self) -> Duration {
        self.skipped
    }

    /// Adds `n` agents offering `resources` each; they register at once.
    pub fn add_agents(&mut self, n: usize, resources: &Resources) {
        for _ in 0..n {
            let conn = self.agents.len() as u64 + 1;
            self.agents.push(SimAgent { id: None, next_uuid: 0 });
            let reg = registration(conn as usize, resources);
            self.inbox.push_back(Input::Agent(conn, AgentMessage::Register(reg)));
        }
    }

    /// Subscribes a framework in `role`; returns its index.
    pub fn add_framework(&mut self, name: &str, role: &str, behaviour: Behaviour) -> usize {
        let i = self.new_framework(role, behaviour);
        self.subscribe(i, name);
        i
    }

    /// Like [`Sim::add_framework`], but the framework subscribes at `at`, while a run goes on
    /// (a run that stops and starts again has a hiccup, which a probe should not measure).
    pub fn add_framework_at(
        &mut self,
        at: Time,
        name: &str,
        role: &str,
        behaviour: Behaviour,
    ) -> usize {
        let index = self.new_framework(role, behaviour);
        self.later.push(Reverse((at, Later::Subscribe { index, name: name.into() })));
        index
    }

    fn new_framework(&mut self, role: &str, behaviour: Behaviour) -> usize {
        let i = self.frameworks.len();
        self.frameworks.push(FrameworkModel::new(i, role, behaviour));
        self.uuids.push(format!("sim-stream-{i}"));
        self.by_stream.insert(stream_of(i), i);
        i
    }

    fn subscribe(&mut self, i: usize, name: &str) {
        let sub = Box::new(self.frameworks[i].subscribe(name));
        let (stream, uuid) = (stream_of(i), self.uuids[i].clone());
        self.inbox.push_back(Input::Subscribe { stream, uuid, sub });
    }

    pub fn counts(&self, framework: usize) -> &Counts {
        &self.frameworks[framework].counts
    }

    /// Every framework's counts added up.
    pub fn total_counts(&self) -> Counts {
        let mut t = Counts::default();
        for f in &self.frameworks {
            t.offers += f.counts.offers;
            t.declines += f.counts.declines;
            t.launched += f.counts.launched;
            t.running += f.counts.running;
            t.finished += f.counts.finished;
            t.updates += f.counts.updates;
        }
        t
    }

    /// When framework `f`'s task `task` finished, if it did.
    pub fn finished_at(&self, f: usize, task: &str) -> Option<Time> {
        self.frameworks[f].finished_at.get(task).copied()
    }

    /// When framework `f`'s first task finished, if one did.
    pub fn first_finished(&self, f: usize) -> Option<Time> {
        self.frameworks[f].finished_at.values().min().copied()
    }

    /// Runs until `until` (virtual) or until `done` says so, checked between steps.
    pub fn run(&mut self, until: Duration, mut done: impl FnMut(&Sim) -> bool) {
        loop {
            // Everything that is due now, until quiet.
            loop {
                let mut busy = false;
                loop {
                    let t0 = Instant::now();
                    let cmd = self.master.poll_command();
                    self.master_time += t0.elapsed();
                    let Some(cmd) = cmd else { break };
                    busy = true;
                    self.command(cmd);
                }
                // As the master's actor does: a batch of queued inputs (`batch_done`), then its
                // commands (so bursts coalesce into one allocation pass, and no more).
                let began = Instant::now();
                let mut taken = 0;
                while !batch_done(taken, || began.elapsed()) {
                    let Some(input) = self.inbox.pop_front() else { break };
                    busy = true;
                    self.deliver(input);
                    taken += 1;
                }
                let now = self.now();
                while self.later.peek().is_some_and(|Reverse((t, _))| *t <= now) {
                    let Some(Reverse((_, l))) = self.later.pop() else { break };
                    busy = true;
                    self.happen(l);
                }
                if self.master.next_timeout().is_some_and(|t| t <= now) {
                    busy = true;
                    let t0 = Instant::now();
                    self.master.handle_timeout(now);
                    self.master_time += t0.elapsed();
                }
                if !busy {
                    break;
                }
                if self.failure.is_some() || done(self) || self.elapsed() >= until {
                    return;
                }
            }
            if self.failure.is_some() || done(self) || self.elapsed() >= until {
                return;
            }
            // Idle: jump to the next thing that will happen.
            let next = [self.later.peek().map(|Reverse((t, _))| *t), self.master.next_timeout()]
                .into_iter()
                .flatten()
                .min();
            let now = self.now();
            match next {
                Some(t) if t > now => self.skipped += Duration::from_nanos(t.0 - now.0),
                Some(_) => {}
                None => {
                    // Nothing will ever happen again.
                    let left = until.saturating_sub(self.elapsed());
                    self.skipped += left;
                    return;
                }
            }
        }
    }

    fn deliver(&mut self, input: Input) {
        let now = self.now();
        let t0 = Instant::now();
        if let Some(f) = apply(&mut self.master, now, input) {
            self.failure.get_or_insert(f);
        }
        self.master_time += t0.elapsed();
    }

    /// Like [`Sim::run`], but the master core runs on a thread of its own, as on a real
    /// cluster where the master has its machine and agents and frameworks theirs: inputs go
    /// to it and commands come back over channels, the master coalescing a batch of queued
    /// inputs per pass as its actor does (`batch_done`). Real time only (nothing is skipped).
    pub fn run_threaded(&mut self, until: Duration, mut done: impl FnMut(&Sim) -> bool) {
        use std::sync::mpsc;
        let (to_master, master_rx) = mpsc::channel::<ToMaster>();
        let (master_tx, from_master) = mpsc::channel::<Vec<Command>>();
        let placeholder =
            Master::new(MasterConfig::default(), self.master.identity().clone(), self.now());
        let mut master = std::mem::replace(&mut self.master, placeholder);
        let (start, epoch_ns, skipped) = (self.start, self.epoch_ns, self.skipped);
        let clock = move || Time(epoch_ns + (start.elapsed() + skipped).as_nanos() as u64);
        let backlog = self.backlog.clone();
        let gauges = backlog.clone();
        let worker = std::thread::Builder::new().name("core".into()).spawn(move || {
            let mut busy = Duration::ZERO;
            let mut failure = None;
            let mut queued: VecDeque<Input> = VecDeque::new();
            let mut stopping = false;
            loop {
                if stopping && queued.is_empty() {
                    break;
                }
                if queued.is_empty() {
                    let wait = master
                        .next_timeout()
                        .map(|t| Duration::from_nanos(t.0.saturating_sub(clock().0)))
                        .unwrap_or(Duration::from_millis(50))
                        .min(Duration::from_millis(50));
                    match master_rx.recv_timeout(wait) {
                        Ok(ToMaster::Inputs(v)) => queued.extend(v),
                        Ok(ToMaster::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                            stopping = true
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                    }
                }
                while let Ok(m) = master_rx.try_recv() {
                    match m {
                        ToMaster::Inputs(v) => queued.extend(v),
                        ToMaster::Stop => stopping = true,
                    }
                }
                let t0 = Instant::now();
                let mut taken = 0;
                while !batch_done(taken, || t0.elapsed()) {
                    let Some(input) = queued.pop_front() else { break };
                    if let Some(f) = apply(&mut master, clock(), input) {
                        failure.get_or_insert(f);
                    }
                    taken += 1;
                }
                let now = clock();
                if master.next_timeout().is_some_and(|t| t <= now) {
                    master.handle_timeout(now);
                }
                let mut out = Vec::new();
                while let Some(c) = master.poll_command() {
                    match c {
                        Command::Persist => {
                            let _ = master.take_registry();
                        }
                        c => out.push(c),
                    }
                }
                busy += t0.elapsed();
                gauges.master_inputs.store(queued.len() as u64, Ordering::Relaxed);
                gauges.sim_commands.fetch_add(out.len() as u64, Ordering::Relaxed);
                if !out.is_empty() && master_tx.send(out).is_err() {
                    break;
                }
            }
            (master, busy, failure)
        });
        let worker = match worker {
            Ok(w) => w,
            Err(e) => {
                self.failure.get_or_insert(format!("cannot start the master's thread: {e}"));
                return;
            }
        };
        let end = self.elapsed() + until;
        let mut checked = Instant::now();
        loop {
            let next = self.later.peek().map(|Reverse((t, _))| *t);
            let wait = next
                .map(|t| Duration::from_nanos(t.0.saturating_sub(self.now().0)))
                .unwrap_or(Duration::from_millis(20))
                .min(Duration::from_millis(20));
            if let Ok(cmds) = from_master.recv_timeout(wait) {
                let mut handled = cmds.len() as u64;
                for c in cmds {
                    self.command(c);
                }
                while let Ok(cmds) = from_master.try_recv() {
                    handled += cmds.len() as u64;
                    for c in cmds {
                        self.command(c);
                    }
                }
                backlog.sim_commands.fetch_sub(handled, Ordering::Relaxed);
            }
            let now = self.now();
            while self.later.peek().is_some_and(|Reverse((t, _))| *t <= now) {
                let Some(Reverse((_, l))) = self.later.pop() else { break };
                self.happen(l);
            }
            if !self.inbox.is_empty() {
                let batch: Vec<Input> = self.inbox.drain(..).collect();
                if to_master.send(ToMaster::Inputs(batch)).is_err() {
                    break;
                }
            }
            // `done` may add up every framework's counters: at most once a millisecond.
            if self.failure.is_some() || self.elapsed() >= end {
                break;
            }
            if checked.elapsed() >= Duration::from_millis(1) {
                checked = Instant::now();
                if done(self) {
                    break;
                }
            }
        }
        let _ = to_master.send(ToMaster::Stop);
        let joined = worker.join();
        // What the master said before it stopped is still due.
        while let Ok(cmds) = from_master.try_recv() {
            backlog.sim_commands.fetch_sub(cmds.len() as u64, Ordering::Relaxed);
            for c in cmds {
                self.command(c);
            }
        }
        match joined {
            Ok((master, busy, failure)) => {
                self.master = master;
                self.master_time += busy;
                if let Some(f) = failure {
                    self.failure.get_or_insert(f);
                }
            }
            Err(_) => {
                self.failure.get_or_insert("the master thread panicked".into());
            }
        }
    }

    fn push_call(&mut self, stream: u64, call: Call) {
        let uuid = self.uuids[self.by_stream[&stream]].clone();
        self.inbox.push_back(Input::Call { uuid, call: Box::new(call) });
    }

    fn happen(&mut self, l: Later) {
        match l {
            Later::Finish { conn, framework_id, task_id } => {
                let m = self.update(conn, &framework_id, &task_id, TaskState::TaskFinished);
                self.inbox.push_back(Input::Agent(conn, m));
            }
            Later::Subscribe { index, name } => self.subscribe(index, &name),
        }
    }

    fn update(
        &mut self,
        conn: u64,
        framework_id: &str,
        task_id: &str,
        state: TaskState,
    ) -> AgentMessage {
        let agent = &mut self.agents[(conn - 1) as usize];
        agent.next_uuid += 1;
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&conn.to_le_bytes());
        uuid[8..].copy_from_slice(&agent.next_uuid.to_le_bytes());
        status_update(framework_id, task_id, state, uuid, self.now())
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::SendAgent { conn, msg } => self.agent_receives(conn, msg),
            Command::SendEvent { stream, event } => self.framework_receives(stream, *event),
            Command::CloseAgent { conn, reason } => {
                self.failure.get_or_insert(format!("the master closed agent {conn}: {reason}"));
            }
            Command::CloseStream { stream } => {
                self.failure.get_or_insert(format!("the master closed framework stream {stream}"));
            }
            Command::OperatorEvent { .. } => {}
            Command::Persist => {
                let _ = self.master.take_registry();
            }
        }
    }

    fn agent_receives(&mut self, conn: u64, msg: MasterMessage) {
        match msg {
            MasterMessage::Registered { agent_id, .. } => {
                self.agents[(conn - 1) as usize].id = Some(agent_id)
            }
            MasterMessage::Ping { seq } => {
                self.inbox.push_back(Input::Agent(conn, AgentMessage::Pong { seq }))
            }
            MasterMessage::RunTask(run) => {
                let (fid, tid) = (run.framework.id.clone(), run.task.task_id.clone());
                let m = self.update(conn, &fid, &tid, TaskState::TaskRunning);
                self.inbox.push_back(Input::Agent(conn, m));
                let duration = task_duration(run.task.command.value.as_deref());
                let at = Time(self.now().0 + duration.as_nanos() as u64);
                self.later
                    .push(Reverse((at, Later::Finish { conn, framework_id: fid, task_id: tid })));
            }
            MasterMessage::KillTask { framework_id, task_id, .. } => {
                let m = self.update(conn, &framework_id, &task_id, TaskState::TaskKilled);
                self.inbox.push_back(Input::Agent(conn, m));
            }
            _ => {}
        }
    }

    fn framework_receives(&mut self, stream: u64, event: Event) {
        let Some(&i) = self.by_stream.get(&stream) else { return };
        let now = self.now();
        let mut calls = Vec::new();
        if let Err(e) = self.frameworks[i].on_event(event, now, &mut calls) {
            self.failure.get_or_insert(e);
        }
        for call in calls {
            self.push_call(stream, call);
        }
    }
}

/// This process's resident set and CPU time (user + system).
pub fn process_usage() -> (u64, Duration) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let cpu = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
            };
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or_default();
    (rss, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> Behaviour {
        Behaviour::Launch {
            task: Resources::parse("cpus:1;mem:128").unwrap(),
            duration: Duration::from_secs(10),
            jitter: Duration::ZERO,
            per_offer: Some(1),
            limit: Some(1),
        }
    }

    #[test]
    fn a_framework_with_nothing_left_to_launch_suppresses_its_offers() {
        let mut sim = Sim::new(MasterConfig::default());
        sim.add_agents(4, &Resources::parse("cpus:2;mem:1024").unwrap());
        let f = sim.add_framework("probe", "*", probe());
        sim.run(Duration::from_secs(1), |_| false);
        assert_eq!(sim.counts(f).launched, 1);
        let offered = sim.counts(f).offers;
        let fw = sim.master.frameworks().values().next().unwrap();
        assert_eq!(fw.suppressed, vec!["*".to_string()]);
        // Its declines' 5 s filters expire and its task ends: without SUPPRESS it would be
        // offered everything again.
        sim.run(Duration::from_secs(60), |_| false);
        assert!(sim.failure.is_none(), "{:?}", sim.failure);
        assert_eq!(sim.counts(f).finished, 1);
        assert_eq!(sim.counts(f).offers, offered);
    }

    #[test]
    fn a_framework_added_for_later_subscribes_then_and_not_before() {
        let mut sim = Sim::new(MasterConfig::default());
        sim.add_agents(2, &Resources::parse("cpus:2;mem:1024").unwrap());
        let at = Time(sim.now().0 + 5_000_000_000);
        let f = sim.add_framework_at(at, "late", "*", probe());
        sim.run(Duration::from_secs(3), |_| false);
        assert_eq!(sim.counts(f).subscribed_at, None);
        assert!(sim.master.frameworks().is_empty());
        sim.run(Duration::from_secs(20), |_| false);
        let k = sim.counts(f);
        assert!(k.subscribed_at.is_some_and(|t| t >= at), "{k:?}");
        assert!(k.first_offer_at >= k.subscribed_at && k.first_running_at >= k.first_offer_at);
        assert_eq!(k.finished, 1);
    }
}
