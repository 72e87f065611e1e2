//! The agent's sans-I/O core: the task table, the status-update queues and their retries,
//! acknowledgement matching, kill grace timers and the (re-)registration message.
//!
//! It owns decisions, not effects. The shell feeds it [`Event`]s with the current time
//! ([`Core::handle`], [`Core::handle_timeout`]), executes the [`Command`]s it emits
//! ([`Core::poll_command`]) and wakes it at [`Core::next_timeout`]. Nothing here reads a clock,
//! touches a file, spawns a process or owns a socket; randomness (update uuids, container ids)
//! comes from an injected [`IdSource`]. That keeps every rule below testable with a fake clock.
//!
//! Rules:
//! - A task is keyed by (framework id, task id). A `RunTask` for a key that has a task is
//!   ignored. A task launches in a fresh container (uuid); `TASK_STARTING` follows the spawn of
//!   its init, `TASK_RUNNING` the start of its command, and exactly one terminal update its end.
//! - Each key has a FIFO of updates; only the head is in flight. It is sent when the agent is
//!   registered and sent again after a backoff (`retry_min`, doubling, capped at `retry_max`)
//!   until a `StatusAck` names its uuid; an ack naming another uuid changes nothing. Then the
//!   next update goes out. On every new registration each head is sent again at once.
//! - After its terminal update is acknowledged a task is forgotten: it leaves the table (the
//!   shell is told with [`Command::Forget`]) and joins a bounded list of completed tasks.
//! - A kill sends [`Command::Terminate`] at once and [`Command::ForceKill`] when the grace
//!   period (the request's, else the task's, else the agent's default) has passed.
//! - `ShutdownFramework` kills the framework's tasks and drops their pending updates: the
//!   master forgot the framework, so nothing would acknowledge them (as Mesos cleans up its
//!   status-update streams on framework shutdown).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use corral_wire::mesos::v1::TaskState;
use corral_wire::mesos::v1::task_status::{Reason, Source};
use corral_wire::proto::{
    AgentMessage, FrameworkRef, MasterMessage, Registration, RunTask, StatusUpdate, TaskReport,
    TaskSpec,
};
use corral_wire::resources::{Conversion, Resources};

/// The two clocks an event happens at: monotonic for timers, wall for update timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    /// Nanoseconds since the Unix epoch.
    pub wall_ns: u64,
}

/// Where fresh 16-byte ids (status-update uuids, container ids) come from.
pub trait IdSource: Send {
    fn next_id(&mut self) -> [u8; 16];
}

/// Random (version 4 uuid) ids from the operating system's generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn next_id(&mut self) -> [u8; 16] {
        uuid::Uuid::new_v4().into_bytes()
    }
}

/// A task's identity on this agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    pub framework_id: String,
    pub task_id: String,
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task '{}' of framework '{}'", self.task_id, self.framework_id)
    }
}

/// How a task's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection to the master is up; register on it. `http_address` is the address the
    /// agent's HTTP API is reachable at, as seen from that connection.
    Connected { http_address: String },
    /// The connection is gone; nothing can be sent until the next registration.
    Disconnected,
    /// A message from the master.
    Master(MasterMessage),
    /// The container's init is running (sandbox and cgroup exist) but has not reported the
    /// task running yet: TASK_STARTING. A launch whose task runs at once goes straight to
    /// `Started` (Mesos' command executor sends STARTING too, but it is optional in the
    /// protocol, and sending it would put one more acknowledgement round trip in front of
    /// TASK_RUNNING: one update in flight per task).
    Launched { container_id: String },
    /// The task's command is running.
    Started { container_id: String, pid: u32 },
    /// The container could not start its task; its cgroup is already removed.
    LaunchFailed { container_id: String, message: String },
    /// The task's command ended; its cgroup is already emptied and removed.
    Exited { container_id: String, status: ExitStatus },
    /// The container hit one of its limits and was stopped (e.g. the OOM killer at
    /// `memory.max`); its cgroup is already emptied and removed.
    Limited { container_id: String, reason: Reason, message: String },
    /// The agent is stopping: kill every task.
    Shutdown,
    /// A custom executor subscribed on the executor API (`stream` numbered by the shell).
    ExecutorSubscribed { framework_id: String, executor_id: String, stream: u64 },
    /// Its stream ended.
    ExecutorDisconnected { framework_id: String, executor_id: String, stream: u64 },
    /// An executor's UPDATE call.
    ExecutorUpdate {
        framework_id: String,
        executor_id: String,
        status: corral_wire::mesos::v1::TaskStatus,
    },
    /// An executor's MESSAGE call.
    ExecutorMessage { framework_id: String, executor_id: String, data: Vec<u8> },
}

/// What the core asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Send to the master on the current connection.
    Send(AgentMessage),
    /// Prepare the sandbox and cgroup and start the task's init; report back with
    /// `Launched`/`Started`/`LaunchFailed`/`Exited`.
    Launch(Launch),
    /// Ask the task to stop (SIGTERM through its init).
    Terminate { container_id: String },
    /// The grace period is over: kill everything in the container's cgroup.
    ForceKill { container_id: String },
    /// The task is forgotten: drop its handle and run directory (its sandbox stays).
    Forget { container_id: String },
    /// The master refused this agent: stop.
    Exit { reason: String },
    /// A RESERVE, UNRESERVE, CREATE or DESTROY was applied to the agent's resources: create
    /// or delete the volumes and checkpoint the new `total`.
    Convert { conv: Conversion, total: Resources },
    /// Write an event to a custom executor's stream.
    ExecutorEvent {
        framework_id: String,
        executor_id: String,
        event: corral_wire::mesos::v1::executor::Event,
    },
    /// End a custom executor's stream.
    CloseExecutorStream { framework_id: String, executor_id: String },
    /// Set a container's limits for `resources` (an executor's grow with its tasks).
    Resize { container_id: String, resources: Resources },
    /// Persist this task's state; done before any later command is executed (so before
    /// anything the change causes is sent).
    Checkpoint(Box<crate::checkpoint::TaskCheckpoint>),
    /// The task is forgotten: remove its checkpoint.
    RemoveCheckpoint(TaskKey),
    /// The master gave this agent its id: persist it (with the boot id) before going on.
    CheckpointAgent { agent_id: String },
}

/// Everything the shell needs to start a container.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub container_id: String,
    pub agent_id: String,
    pub framework: FrameworkRef,
    pub task: TaskSpec,
    /// For a task of a group: the run id of the group's executor, whose sandbox it shares.
    pub executor_container: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// What the agent says about itself; `agent_id` and `tasks` are filled in by the core.
    pub registration: Registration,
    pub default_kill_grace: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How many forgotten tasks [`Core::completed`] keeps.
    pub completed_capacity: usize,
}

/// Where a task's process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The shell is preparing the container.
    Launching,
    /// The init runs; the command is being started.
    Starting,
    /// The command runs.
    Running,
    /// No process is left; the terminal update is generated.
    Done,
}

/// A task the agent knows, as the HTTP API and re-registration see it.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub framework: FrameworkRef,
    pub spec: TaskSpec,
    /// `None` only for a task refused before it got a container.
    pub container_id: Option<String>,
    /// For a task of a group: the run id of the group's executor (its shared sandbox).
    pub executor_container: Option<String>,
    /// The agent id its sandbox path was made with.
    pub agent_id: String,
    /// The latest state generated for it.
    pub state: TaskState,
    pub phase: Phase,
    kill: Option<Kill>,
    /// The framework was shut down: no more updates for this task.
    framework_gone: bool,
}

#[derive(Debug, Clone, Copy)]
struct Kill {
    /// When to force the kill; `None` once forced.
    deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    backoff: Duration,
}

/// One key's task (if any: a `TASK_LOST` for an unknown task has none) and update queue.
#[derive(Debug, Default)]
struct Entry {
    task: Option<TaskRecord>,
    updates: VecDeque<StatusUpdate>,
    /// Set while the head is in flight on the current registration.
    retry: Option<Retry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    Registering,
    Registered,
}

/// The agent's state machine. See the module doc for its rules.
pub struct Core {
    config: CoreConfig,
    ids: Box<dyn IdSource>,
    agent_id: Option<String>,
    link: Link,
    entries: BTreeMap<TaskKey, Entry>,
    containers: HashMap<String, TaskKey>,
    completed: VecDeque<TaskRecord>,
    commands: VecDeque<Command>,
    shutting_down: bool,
    /// Custom executors running here.
    executors: BTreeMap<executors::ExecutorKey, executors::ExecutorRun>,
    /// Executor container id -> executor.
    executor_containers: HashMap<String, executors::ExecutorKey>,
    /// Keys whose checkpoint is out of date; flushed by `poll_command` before anything else.
    dirty: std::collections::BTreeSet<TaskKey>,
}

#[path = "core_executors.rs"]
mod executors;

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("agent_id", &self.agent_id)
            .field("link", &self.link)
            .field("entries", &self.entries)
            .field("shutting_down", &self.shutting_down)
            .finish_non_exhaustive()
    }
}

impl Core {
    pub fn new(config: CoreConfig, ids: Box<dyn IdSource>) -> Core {
        Core {
            config,
            ids,
            agent_id: None,
            link: Link::Down,
            entries: BTreeMap::new(),
            containers: HashMap::new(),
            completed: VecDeque::new(),
            commands: VecDeque::new(),
            shutting_down: false,
            executors: BTreeMap::new(),
            executor_containers: HashMap::new(),
            dirty: std::collections::BTreeSet::new(),
        }
    }

    /// Takes back what a previous run of this agent checkpointed: its id and its tasks with
    /// their unacknowledged updates. Call before the first event; the shell then re-adopts
    /// the containers (or reports them gone) with the usual container events.
    pub fn recover(
        &mut self,
        now: Now,
        agent_id: String,
        tasks: Vec<crate::checkpoint::TaskCheckpoint>,
    ) {
        self.agent_id = Some(agent_id);
        for t in tasks {
            let key =
                TaskKey { framework_id: t.framework.id.clone(), task_id: t.spec.task_id.clone() };
            let phase = match t.phase {
                0 => Phase::Launching,
                1 => Phase::Starting,
                2 => Phase::Running,
                _ => Phase::Done,
            };
            if phase == Phase::Done && t.updates.is_empty() {
                self.dirty.insert(key);
                continue;
            }
            let record = TaskRecord {
                framework: t.framework,
                spec: t.spec,
                container_id: t.container_id,
                executor_container: t.executor_container,
                agent_id: t.agent_id,
                state: TaskState::try_from(t.state).unwrap_or(TaskState::TaskStaging),
                phase,
                // A kill in progress goes on: the SIGTERM was sent, the force follows.
                kill: t
                    .killing
                    .then_some(Kill { deadline: Some(now.mono + self.config.default_kill_grace) }),
                framework_gone: false,
            };
            if let Some(cid) = &record.container_id {
                self.containers.insert(cid.clone(), key.clone());
            }
            tracing::info!(%key, phase = ?record.phase, pending = t.updates.len(), "recovered task");
            self.entries
                .insert(key, Entry { task: Some(record), updates: t.updates.into(), retry: None });
        }
    }

    /// The checkpoint of `key`'s task, if it has one worth keeping.
    fn snapshot(&self, key: &TaskKey) -> Option<crate::checkpoint::TaskCheckpoint> {
        let e = self.entries.get(key)?;
        let t = e.task.as_ref()?;
        // A custom executor's task is its executor's to recover; not checkpointed here.
        if t.spec.executor.is_some() || t.framework_gone {
            return None;
        }
        Some(crate::checkpoint::TaskCheckpoint {
            framework: t.framework.clone(),
            spec: t.spec.clone(),
            container_id: t.container_id.clone(),
            executor_container: t.executor_container.clone(),
            agent_id: t.agent_id.clone(),
            state: t.state as i32,
            phase: match t.phase {
                Phase::Launching => 0,
                Phase::Starting => 1,
                Phase::Running => 2,
                Phase::Done => 3,
            },
            killing: t.kill.is_some(),
            updates: e.updates.iter().cloned().collect(),
        })
    }

    /// The id the master gave this agent, once registered.
    pub fn agent_id(&self) -> Option<&str> {
        self.agent_id.as_deref()
    }

    /// The registration template (with the latest http address).
    pub fn registration(&self) -> &Registration {
        &self.config.registration
    }

    pub fn is_registered(&self) -> bool {
        self.link == Link::Registered
    }

    /// Tasks not yet forgotten, in key order.
    pub fn tasks(&self) -> impl Iterator<Item = &TaskRecord> {
        self.entries.values().filter_map(|e| e.task.as_ref())
    }

    /// Forgotten tasks, oldest first (bounded).
    pub fn completed(&self) -> impl Iterator<Item = &TaskRecord> {
        self.completed.iter()
    }

    /// How many tasks still have (or may still get) a process.
    pub fn live_containers(&self) -> usize {
        self.tasks().filter(|t| t.phase != Phase::Done).count() + self.live_executors()
    }

    /// How many keys have updates not yet acknowledged.
    pub fn pending_updates(&self) -> usize {
        self.entries.values().filter(|e| !e.updates.is_empty()).count()
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        // Persist before anything the change causes goes out.
        if let Some(key) = self.dirty.pop_first() {
            return Some(match self.snapshot(&key) {
                Some(c) => Command::Checkpoint(Box::new(c)),
                None => Command::RemoveCheckpoint(key),
            });
        }
        self.commands.pop_front()
    }

    /// The earliest time [`Core::handle_timeout`] has work to do.
    pub fn next_timeout(&self) -> Option<Instant> {
        let registered = self.link == Link::Registered;
        let retries =
            self.entries.values().filter_map(|e| e.retry.filter(|_| registered).map(|r| r.at));
        let kills = self.tasks().filter_map(|t| t.kill.and_then(|k| k.deadline));
        retries.chain(kills).chain(self.executor_next_timeout()).min()
    }

    /// Runs every timer due at `now`: resends unacknowledged heads, forces overdue kills.
    pub fn handle_timeout(&mut self, now: Now) {
        let link = self.link;
        let max = self.config.retry_max;
        for entry in self.entries.values_mut() {
            if let (Some(retry), Some(head)) = (entry.retry, entry.updates.front())
                && retry.at <= now.mono
                && link == Link::Registered
            {
                let backoff = (retry.backoff * 2).min(max);
                entry.retry = Some(Retry { at: now.mono + backoff, backoff });
                self.commands.push_back(Command::Send(AgentMessage::StatusUpdate(head.clone())));
            }
            if let Some(task) = entry.task.as_mut()
                && let Some(Kill { deadline: Some(at) }) = task.kill
                && at <= now.mono
            {
                task.kill = Some(Kill { deadline: None });
                if let Some(cid) = &task.container_id {
                    self.commands.push_back(Command::ForceKill { container_id: cid.clone() });
                }
            }
        }
        self.executor_timeouts(now);
    }

    pub fn handle(&mut self, now: Now, event: Event) {
        // An executor's own container.
        match &event {
            Event::Launched { container_id } | Event::Started { container_id, .. }
                if self.executor_containers.contains_key(container_id) =>
            {
                return;
            }
            Event::LaunchFailed { container_id, message }
            | Event::Limited { container_id, message, .. }
                if self.executor_containers.contains_key(container_id) =>
            {
                let (cid, why) = (container_id.clone(), message.clone());
                return self.executor_exited(now, &cid, &why);
            }
            Event::Exited { container_id, status }
                if self.executor_containers.contains_key(container_id) =>
            {
                let why = match status {
                    ExitStatus::Code(c) => format!("exited with status {c}"),
                    ExitStatus::Signal(s) => format!("terminated with signal {}", signal_name(*s)),
                };
                let cid = container_id.clone();
                return self.executor_exited(now, &cid, &why);
            }
            _ => {}
        }
        match event {
            Event::ExecutorSubscribed { framework_id, executor_id, stream } => {
                self.executor_subscribed((framework_id, executor_id), stream)
            }
            Event::ExecutorDisconnected { framework_id, executor_id, stream } => {
                self.executor_disconnected((framework_id, executor_id), stream)
            }
            Event::ExecutorUpdate { framework_id, executor_id, status } => {
                self.executor_update(now, (framework_id, executor_id), status)
            }
            Event::ExecutorMessage { framework_id, executor_id, data } => {
                self.executor_message((framework_id, executor_id), data)
            }
            Event::Connected { http_address } => self.connected(http_address),
            Event::Disconnected => {
                self.link = Link::Down;
                for e in self.entries.values_mut() {
                    e.retry = None;
                }
            }
            Event::Master(msg) => self.master(now, msg),
            Event::Launched { container_id } => {
                if let Some(key) = self.live(&container_id, &[Phase::Launching]) {
                    self.set_phase(&key, Phase::Starting);
                    self.push_update(
                        now,
                        &key,
                        TaskState::TaskStarting,
                        None,
                        Source::Executor,
                        "",
                    );
                }
            }
            Event::Started { container_id, pid } => {
                // From Launching too: a task that runs at once skips TASK_STARTING.
                if let Some(key) = self.live(&container_id, &[Phase::Launching, Phase::Starting]) {
                    tracing::info!(%key, container_id, pid, "task running");
                    self.set_phase(&key, Phase::Running);
                    self.push_update(now, &key, TaskState::TaskRunning, None, Source::Executor, "");
                }
            }
            Event::LaunchFailed { container_id, message } => {
                let any = [Phase::Launching, Phase::Starting, Phase::Running];
                if let Some(key) = self.live(&container_id, &any) {
                    tracing::warn!(%key, container_id, message, "task launch failed");
                    let killed = self.finish(&key);
                    if killed {
                        self.push_update(
                            now,
                            &key,
                            TaskState::TaskKilled,
                            None,
                            Source::Agent,
                            "Task killed",
                        );
                    } else {
                        let reason = Some(Reason::ContainerLaunchFailed);
                        self.push_update(
                            now,
                            &key,
                            TaskState::TaskFailed,
                            reason,
                            Source::Agent,
                            &message,
                        );
                        self.fail_group(now, &key);
                    }
                    self.maybe_forget(&key);
                }
            }
            Event::Limited { container_id, reason, message } => {
                let any = [Phase::Launching, Phase::Starting, Phase::Running];
                if let Some(key) = self.live(&container_id, &any) {
                    let killed = self.finish(&key);
                    tracing::warn!(%key, container_id, ?reason, message, "task stopped at a limit");
                    let (state, reason) = if killed {
                        (TaskState::TaskKilled, None)
                    } else {
                        (TaskState::TaskFailed, Some(reason))
                    };
                    self.push_update(now, &key, state, reason, Source::Agent, &message);
                    if state != TaskState::TaskKilled {
                        self.fail_group(now, &key);
                    }
                    self.maybe_forget(&key);
                }
            }
            Event::Exited { container_id, status } => {
                let any = [Phase::Launching, Phase::Starting, Phase::Running];
                if let Some(key) = self.live(&container_id, &any) {
                    let killed = self.finish(&key);
                    let (state, message) = terminal(status, killed);
                    tracing::info!(%key, container_id, ?status, "task ended");
                    self.push_update(now, &key, state, None, Source::Executor, &message);
                    if state == TaskState::TaskFailed {
                        self.fail_group(now, &key);
                    }
                    self.maybe_forget(&key);
                }
            }
            Event::Shutdown => {
                self.shutting_down = true;
                let keys: Vec<TaskKey> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| e.task.as_ref().is_some_and(|t| t.phase != Phase::Done))
                    .map(|(k, _)| k.clone())
                    .collect();
                let grace = self.config.default_kill_grace;
                for key in keys {
                    self.kill(now, &key, grace);
                }
                for ekey in self.all_executors() {
                    self.shutdown_executor(now, &ekey);
                }
            }
        }
    }

    fn connected(&mut self, http_address: String) {
        self.link = Link::Registering;
        // Heads go out again once registered, with fresh timers.
        for e in self.entries.values_mut() {
            e.retry = None;
        }
        self.config.registration.http_address = http_address;
        let mut registration = self.config.registration.clone();
        registration.agent_id = self.agent_id.clone();
        registration.tasks = self
            .entries
            .iter()
            .filter_map(|(key, e)| e.task.as_ref().map(|t| (key, t)))
            .map(|(key, t)| TaskReport {
                framework_id: key.framework_id.clone(),
                task: t.spec.clone(),
                state: t.state as i32,
            })
            .collect();
        self.commands.push_back(Command::Send(AgentMessage::Register(registration)));
    }

    fn master(&mut self, now: Now, msg: MasterMessage) {
        match msg {
            MasterMessage::Registered { agent_id, master_id, .. } => {
                if let Err(why) = crate::paths::validate_id(&agent_id) {
                    let reason = format!("the master assigned an unusable agent id: {why}");
                    self.commands.push_back(Command::Exit { reason });
                    return;
                }
                if let Some(old) = &self.agent_id
                    && *old != agent_id
                {
                    tracing::warn!(old, new = agent_id, "the master gave this agent a new id");
                }
                tracing::info!(agent_id, master_id, "registered");
                if self.agent_id.as_deref() != Some(agent_id.as_str()) {
                    self.commands
                        .push_back(Command::CheckpointAgent { agent_id: agent_id.clone() });
                }
                self.agent_id = Some(agent_id);
                self.link = Link::Registered;
                let keys: Vec<TaskKey> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| !e.updates.is_empty())
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
                    self.send_head(now, &key);
                }
            }
            MasterMessage::Refused { reason } => self.commands.push_back(Command::Exit { reason }),
            MasterMessage::Ping { seq } => {
                self.commands.push_back(Command::Send(AgentMessage::Pong { seq }));
            }
            MasterMessage::RunTask(run) => self.run_task(now, *run),
            MasterMessage::KillTask { framework_id, task_id, grace_period_ns } => {
                let key = TaskKey { framework_id, task_id };
                let live = self.entries.get(&key).and_then(|e| e.task.as_ref());
                match live {
                    None => {
                        tracing::warn!(%key, "kill for a task this agent does not know");
                        self.entries.entry(key.clone()).or_default();
                        let reason = Some(Reason::TaskUnknown);
                        let msg = "Task not found on agent";
                        self.push_update(
                            now,
                            &key,
                            TaskState::TaskLost,
                            reason,
                            Source::Agent,
                            msg,
                        );
                    }
                    Some(task) if task.spec.executor.is_some() => {
                        let eid = task.spec.executor.as_ref().map(|e| e.executor_id.clone());
                        if let Some(t) = self.entries.get_mut(&key).and_then(|e| e.task.as_mut())
                            && t.phase != Phase::Done
                        {
                            t.kill.get_or_insert(Kill { deadline: None });
                        }
                        self.kill_executor_task(now, &key, &eid.unwrap_or_default());
                    }
                    Some(task) => {
                        let grace = grace_period_ns
                            .or(task.spec.kill_grace_period_ns)
                            .map(Duration::from_nanos)
                            .unwrap_or(self.config.default_kill_grace);
                        self.kill(now, &key, grace);
                    }
                }
            }
            MasterMessage::FrameworkMessage { framework_id, executor_id, data } => {
                self.framework_message((framework_id, executor_id), data);
            }
            MasterMessage::ShutdownExecutor { framework_id, executor_id } => {
                self.shutdown_executor(now, &(framework_id, executor_id));
            }
            MasterMessage::Convert(conv) => {
                let total = &mut self.config.registration.resources;
                match total.apply(&conv) {
                    Ok(t) => {
                        *total = t.clone();
                        self.commands.push_back(Command::Convert { conv, total: t });
                    }
                    // The master checked it against its view of this agent: the two are out of
                    // step. Keep what is checkpointed; the next registration reports it.
                    Err(e) => tracing::error!(operation = conv.name(), "cannot apply: {e}"),
                }
            }
            MasterMessage::StatusAck { framework_id, task_id, uuid } => {
                self.ack(now, TaskKey { framework_id, task_id }, uuid);
            }
            MasterMessage::ShutdownFramework { framework_id } => {
                let keys: Vec<TaskKey> = self
                    .entries
                    .keys()
                    .filter(|k| k.framework_id == framework_id)
                    .cloned()
                    .collect();
                tracing::info!(framework_id, tasks = keys.len(), "shutting down framework");
                for key in keys {
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.updates.clear();
                        e.retry = None;
                        if let Some(t) = e.task.as_mut() {
                            t.framework_gone = true;
                        }
                        self.dirty.insert(key.clone());
                    }
                    self.kill(now, &key, self.config.default_kill_grace);
                    self.maybe_forget(&key);
                }
                for ekey in self.executors_of(&framework_id) {
                    self.shutdown_executor(now, &ekey);
                }
            }
        }
    }

    fn run_task(&mut self, now: Now, run: RunTask) {
        let key =
            TaskKey { framework_id: run.framework.id.clone(), task_id: run.task.task_id.clone() };
        if self.entries.get(&key).is_some_and(|e| e.task.is_some()) {
            tracing::warn!(%key, "ignoring a second RunTask for a task this agent has");
            return;
        }
        let refuse = if self.shutting_down {
            Some((
                TaskState::TaskLost,
                Reason::AgentRestarted,
                "agent is shutting down".to_string(),
            ))
        } else if let Err(why) = crate::paths::validate_id(&key.framework_id) {
            Some((
                TaskState::TaskError,
                Reason::TaskInvalid,
                format!("invalid framework id: {why}"),
            ))
        } else if let Err(why) = crate::paths::validate_id(&key.task_id) {
            Some((TaskState::TaskError, Reason::TaskInvalid, format!("invalid task id: {why}")))
        } else if self.agent_id.is_none() {
            let why = "agent is not registered".to_string();
            Some((TaskState::TaskLost, Reason::AgentUnknown, why))
        } else {
            None
        };
        let agent_id = self.agent_id.clone().unwrap_or_default();
        let mut record = TaskRecord {
            framework: run.framework,
            spec: run.task,
            container_id: None,
            executor_container: None,
            agent_id: agent_id.clone(),
            state: TaskState::TaskStaging,
            phase: Phase::Done,
            kill: None,
            framework_gone: false,
        };
        if let Some((state, reason, message)) = refuse {
            tracing::warn!(%key, message, "refusing task");
            self.entries.entry(key.clone()).or_default().task = Some(record);
            self.push_update(now, &key, state, Some(reason), Source::Agent, &message);
            return;
        }
        if let Some(spec) = record.spec.executor.clone() {
            // Run by its custom executor, not in a container of its own.
            record.phase = Phase::Starting;
            let framework = record.framework.clone();
            tracing::info!(%key, executor = %spec.executor_id, "task for a custom executor");
            self.entries.entry(key.clone()).or_default().task = Some(record);
            self.run_on_executor(&key, &spec, &framework);
            return;
        }
        let container_id =
            uuid::Builder::from_random_bytes(self.ids.next_id()).into_uuid().to_string();
        record.container_id = Some(container_id.clone());
        record.phase = Phase::Launching;
        if let Some(g) = &record.spec.group {
            // The group's tasks share one executor run: a sibling that is still known has it.
            let sibling = self.entries.iter().find_map(|(k, e)| {
                let t = e.task.as_ref()?;
                let same = k.framework_id == key.framework_id
                    && t.spec.group.as_ref().is_some_and(|o| o.executor_id == g.executor_id);
                same.then(|| t.executor_container.clone()).flatten()
            });
            record.executor_container = Some(sibling.unwrap_or_else(|| {
                uuid::Builder::from_random_bytes(self.ids.next_id()).into_uuid().to_string()
            }));
        }
        let launch = Launch {
            container_id: container_id.clone(),
            agent_id,
            framework: record.framework.clone(),
            task: record.spec.clone(),
            executor_container: record.executor_container.clone(),
        };
        tracing::info!(%key, container_id, "launching task");
        self.entries.entry(key.clone()).or_default().task = Some(record);
        self.dirty.insert(key.clone());
        self.containers.insert(container_id, key);
        self.commands.push_back(Command::Launch(launch));
    }

    /// A task of a group failed: the default executor's rule is that the group goes down
    /// together, so its live siblings are killed (each with its own grace).
    fn fail_group(&mut self, now: Now, key: &TaskKey) {
        let Some(group) =
            self.entries.get(key).and_then(|e| e.task.as_ref()).and_then(|t| t.spec.group.clone())
        else {
            return;
        };
        for sibling in group.task_ids.iter().filter(|t| **t != key.task_id) {
            let k = TaskKey { framework_id: key.framework_id.clone(), task_id: sibling.clone() };
            let grace = self
                .entries
                .get(&k)
                .and_then(|e| e.task.as_ref())
                .and_then(|t| t.spec.kill_grace_period_ns)
                .map(Duration::from_nanos)
                .unwrap_or(self.config.default_kill_grace);
            tracing::info!(task = %k, failed = %key, "killing the rest of a failed task group");
            self.kill(now, &k, grace);
        }
    }

    /// Starts killing a live task (once): terminate now, force after `grace`.
    fn kill(&mut self, now: Now, key: &TaskKey, grace: Duration) {
        let Some(task) = self.entries.get_mut(key).and_then(|e| e.task.as_mut()) else {
            return;
        };
        if task.phase == Phase::Done || task.kill.is_some() {
            return;
        }
        tracing::info!(%key, ?grace, "killing task");
        task.kill = Some(Kill { deadline: Some(now.mono + grace) });
        self.dirty.insert(key.clone());
        if let Some(cid) = &task.container_id {
            self.commands.push_back(Command::Terminate { container_id: cid.clone() });
        }
    }

    fn ack(&mut self, now: Now, key: TaskKey, uuid: [u8; 16]) {
        let Some(entry) = self.entries.get_mut(&key) else {
            tracing::debug!(%key, "ack for a forgotten task");
            return;
        };
        if entry.updates.front().is_none_or(|head| head.uuid != uuid) {
            tracing::debug!(%key, "ack for an update that is not in flight; ignored");
            return;
        }
        entry.updates.pop_front();
        entry.retry = None;
        self.dirty.insert(key.clone());
        let executor = entry
            .task
            .as_ref()
            .and_then(|t| t.spec.executor.as_ref())
            .map(|e| e.executor_id.clone());
        if let Some(eid) = executor {
            self.executor_acknowledged(&key, &eid, uuid);
        }
        let Some(entry) = self.entries.get_mut(&key) else { return };
        if entry.updates.is_empty() {
            self.maybe_forget(&key);
        } else {
            self.send_head(now, &key);
        }
    }

    /// Finds a task by container id if it is in one of `phases`.
    fn live(&self, container_id: &str, phases: &[Phase]) -> Option<TaskKey> {
        let key = self.containers.get(container_id)?;
        let task = self.entries.get(key)?.task.as_ref()?;
        phases.contains(&task.phase).then(|| key.clone())
    }

    fn set_phase(&mut self, key: &TaskKey, phase: Phase) {
        if let Some(t) = self.entries.get_mut(key).and_then(|e| e.task.as_mut()) {
            t.phase = phase;
            self.dirty.insert(key.clone());
        }
    }

    /// Marks the process gone; says whether a kill had been requested.
    fn finish(&mut self, key: &TaskKey) -> bool {
        match self.entries.get_mut(key).and_then(|e| e.task.as_mut()) {
            Some(t) => {
                t.phase = Phase::Done;
                self.dirty.insert(key.clone());
                t.kill.take().is_some()
            }
            None => false,
        }
    }

    fn push_update(
        &mut self,
        now: Now,
        key: &TaskKey,
        state: TaskState,
        reason: Option<Reason>,
        source: Source,
        message: &str,
    ) {
        self.push_update_as(now, key, state, reason, source, message, None);
    }

    /// [`Core::push_update`] with a given uuid (an executor's), else a fresh one.
    #[allow(clippy::too_many_arguments)]
    fn push_update_as(
        &mut self,
        now: Now,
        key: &TaskKey,
        state: TaskState,
        reason: Option<Reason>,
        source: Source,
        message: &str,
        uuid: Option<[u8; 16]>,
    ) {
        let uuid = uuid.unwrap_or_else(|| self.ids.next_id());
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if let Some(t) = entry.task.as_mut() {
            t.state = state;
            if t.framework_gone {
                return;
            }
        }
        entry.updates.push_back(StatusUpdate {
            framework_id: key.framework_id.clone(),
            task_id: key.task_id.clone(),
            state: state as i32,
            reason: reason.map(|r| r as i32),
            source: source as i32,
            message: message.to_string(),
            uuid,
            timestamp_ns: now.wall_ns,
            container_id: entry.task.as_ref().and_then(|t| t.container_id.clone()),
        });
        self.dirty.insert(key.clone());
        if entry.updates.len() == 1 {
            self.send_head(now, key);
        }
    }

    /// Sends the key's head update if registered, and arms its first retry.
    fn send_head(&mut self, now: Now, key: &TaskKey) {
        if self.link != Link::Registered {
            return;
        }
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if let Some(head) = entry.updates.front() {
            let backoff = self.config.retry_min;
            entry.retry = Some(Retry { at: now.mono + backoff, backoff });
            self.commands.push_back(Command::Send(AgentMessage::StatusUpdate(head.clone())));
        }
    }

    /// Forgets a key whose updates are all acknowledged and whose task (if any) is over.
    fn maybe_forget(&mut self, key: &TaskKey) {
        let done = self.entries.get(key).is_some_and(|e| {
            e.updates.is_empty() && e.task.as_ref().is_none_or(|t| t.phase == Phase::Done)
        });
        if !done {
            return;
        }
        let Some(task) = self.entries.remove(key).and_then(|e| e.task) else {
            return;
        };
        tracing::info!(%key, state = task.state.as_str_name(), "forgetting task");
        self.dirty.insert(key.clone());
        if let Some(cid) = &task.container_id {
            self.containers.remove(cid);
            self.commands.push_back(Command::Forget { container_id: cid.clone() });
        }
        self.completed.push_back(task);
        while self.completed.len() > self.config.completed_capacity {
            self.completed.pop_front();
        }
    }
}

/// The terminal state and message for a process that ended with `status`.
fn terminal(status: ExitStatus, killed: bool) -> (TaskState, String) {
    match (status, killed) {
        (ExitStatus::Signal(sig), true) => {
            (TaskState::TaskKilled, format!("Command terminated with signal {}", signal_name(sig)))
        }
        (ExitStatus::Code(_), true) => (TaskState::TaskKilled, "Task killed".to_string()),
        (ExitStatus::Code(0), false) => {
            (TaskState::TaskFinished, "Command exited with status 0".to_string())
        }
        (ExitStatus::Code(n), false) => {
            (TaskState::TaskFailed, format!("Command exited with status {n}"))
        }
        (ExitStatus::Signal(sig), false) => {
            (TaskState::TaskFailed, format!("Command terminated with signal {}", signal_name(sig)))
        }
    }
}

/// The description `strsignal(3)` gives on glibc (what Mesos prints).
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "Hangup",
        libc::SIGINT => "Interrupt",
        libc::SIGQUIT => "Quit",
        libc::SIGILL => "Illegal instruction",
        libc::SIGTRAP => "Trace/breakpoint trap",
        libc::SIGABRT => "Aborted",
        libc::SIGBUS => "Bus error",
        libc::SIGFPE => "Floating point exception",
        libc::SIGKILL => "Killed",
        libc::SIGUSR1 => "User defined signal 1",
        libc::SIGSEGV => "Segmentation fault",
        libc::SIGUSR2 => "User defined signal 2",
        libc::SIGPIPE => "Broken pipe",
        libc::SIGALRM => "Alarm clock",
        libc::SIGTERM => "Terminated",
        libc::SIGXCPU => "CPU time limit exceeded",
        libc::SIGXFSZ => "File size limit exceeded",
        libc::SIGSYS => "Bad system call",
        _ => return format!("Unknown signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_wire::proto::CommandSpec;

    /// Deterministic ids: 1, 2, 3, ... in the first byte pair.
    #[derive(Debug, Default)]
    struct CountingIds(u16);

    impl IdSource for CountingIds {
        fn next_id(&mut self) -> [u8; 16] {
            self.0 += 1;
            let mut id = [0u8; 16];
            id[..2].copy_from_slice(&self.0.to_be_bytes());
            id
        }
    }

    /// A core with a fake clock.
    struct Harness {
        core: Core,
        base: Instant,
        at: Duration,
        /// The checkpoint commands `drain` took out, in order.
        persisted: Vec<Command>,
        /// Every command in the order the core emitted it.
        raw: Vec<Command>,
    }

    const SEC: Duration = Duration::from_secs(1);

    impl Harness {
        fn new() -> Harness {
            let config = CoreConfig {
                registration: Registration {
                    protocol_version: corral_wire::proto::PROTOCOL_VERSION,
                    hostname: "host-a".into(),
                    http_port: 5051,
                    ..Registration::default()
                },
                default_kill_grace: 3 * SEC,
                retry_min: 10 * SEC,
                retry_max: 600 * SEC,
                completed_capacity: 2,
            };
            #[allow(clippy::disallowed_methods)]
            // the fake clock's arbitrary origin; only offsets matter
            let base = Instant::now();
            Harness {
                core: Core::new(config, Box::new(CountingIds::default())),
                base,
                at: Duration::ZERO,
                persisted: Vec::new(),
                raw: Vec::new(),
            }
        }

        fn now(&self) -> Now {
            Now { mono: self.base + self.at, wall_ns: 1_000_000_000 + self.at.as_nanos() as u64 }
        }

        fn handle(&mut self, event: Event) -> Vec<Command> {
            self.core.handle(self.now(), event);
            self.drain()
        }

        fn master(&mut self, msg: MasterMessage) -> Vec<Command> {
            self.handle(Event::Master(msg))
        }

        /// Advances the fake clock to `at` (from the origin) and runs due timers.
        fn advance_to(&mut self, at: Duration) -> Vec<Command> {
            self.at = at;
            self.core.handle_timeout(self.now());
            self.drain()
        }

        /// The commands emitted, less the checkpoint ones (kept in `persisted`).
        fn drain(&mut self) -> Vec<Command> {
            let all: Vec<Command> = std::iter::from_fn(|| self.core.poll_command()).collect();
            self.raw.extend(all.iter().cloned());
            let (persist, rest): (Vec<Command>, Vec<Command>) = all.into_iter().partition(|c| {
                matches!(
                    c,
                    Command::Checkpoint(_)
                        | Command::RemoveCheckpoint(_)
                        | Command::CheckpointAgent { .. }
                )
            });
            self.persisted.extend(persist);
            rest
        }

        /// Connects and registers as `agent-1`.
        fn register(&mut self) -> Vec<Command> {
            let cmds = self.handle(Event::Connected { http_address: "10.0.0.5".into() });
            assert!(matches!(&cmds[..], [Command::Send(AgentMessage::Register(_))]), "{cmds:?}");
            self.master(MasterMessage::Registered {
                agent_id: "agent-1".into(),
                master_id: "m".into(),
                ping_interval_ms: 1000,
            })
        }

        /// Runs a task and returns its container id.
        fn run(&mut self, task_id: &str) -> String {
            let cmds = self.master(MasterMessage::RunTask(Box::new(run_task("fw", task_id))));
            match &cmds[..] {
                [Command::Launch(l)] => {
                    assert_eq!(l.agent_id, "agent-1");
                    assert_eq!(l.task.task_id, task_id);
                    l.container_id.clone()
                }
                other => panic!("expected one launch, got {other:?}"),
            }
        }

        fn ack(&mut self, u: &StatusUpdate) -> Vec<Command> {
            self.master(MasterMessage::StatusAck {
                framework_id: u.framework_id.clone(),
                task_id: u.task_id.clone(),
                uuid: u.uuid,
            })
        }
    }

    fn run_task(fw: &str, task_id: &str) -> RunTask {
        RunTask {
            framework: FrameworkRef {
                id: fw.into(),
                name: "f".into(),
                user: String::new(),
                role: "*".into(),
            },
            task: TaskSpec {
                task_id: task_id.into(),
                name: task_id.into(),
                command: CommandSpec {
                    shell: true,
                    value: Some("true".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }

    /// The status updates among `cmds`, in order.
    fn updates(cmds: &[Command]) -> Vec<StatusUpdate> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Send(AgentMessage::StatusUpdate(u)) => Some(u.clone()),
                _ => None,
            })
            .collect()
    }

    fn one_update(cmds: &[Command]) -> StatusUpdate {
        let u = updates(cmds);
        assert_eq!(u.len(), 1, "expected exactly one update in {cmds:?}");
        u[0].clone()
    }

    fn state(u: &StatusUpdate) -> TaskState {
        u.task_state().expect("known state")
    }

    #[test]
    fn first_registration_has_no_id_and_no_tasks() {
        let mut h = Harness::new();
        let cmds = h.handle(Event::Connected { http_address: "10.0.0.5".into() });
        let [Command::Send(AgentMessage::Register(r))] = &cmds[..] else { panic!("{cmds:?}") };
        assert_eq!(r.agent_id, None);
        assert!(r.tasks.is_empty());
        assert_eq!(r.http_address, "10.0.0.5");
        assert_eq!(r.hostname, "host-a");
    }

    #[test]
    fn ping_is_answered_with_pong() {
        let mut h = Harness::new();
        h.register();
        assert_eq!(
            h.master(MasterMessage::Ping { seq: 42 }),
            vec![Command::Send(AgentMessage::Pong { seq: 42 })]
        );
    }

    #[test]
    fn refused_asks_the_shell_to_exit() {
        let mut h = Harness::new();
        h.handle(Event::Connected { http_address: "a".into() });
        let cmds = h.master(MasterMessage::Refused { reason: "old protocol".into() });
        assert_eq!(cmds, vec![Command::Exit { reason: "old protocol".into() }]);
    }

    #[test]
    fn an_unusable_agent_id_stops_the_agent() {
        let mut h = Harness::new();
        h.handle(Event::Connected { http_address: "a".into() });
        let cmds = h.master(MasterMessage::Registered {
            agent_id: "../etc".into(),
            master_id: "m".into(),
            ping_interval_ms: 1,
        });
        assert!(matches!(&cmds[..], [Command::Exit { .. }]), "{cmds:?}");
        assert_eq!(h.core.agent_id(), None);
    }

    #[test]
    fn lifecycle_sends_updates_in_order_one_at_a_time() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        let starting = one_update(&h.handle(Event::Launched { container_id: cid.clone() }));
        assert_eq!(state(&starting), TaskState::TaskStarting);
        assert_eq!(starting.source, Source::Executor as i32);
        assert_eq!(starting.container_id.as_deref(), Some(cid.as_str()));
        assert_eq!(starting.timestamp_ns, 1_000_000_000);
        // RUNNING and the exit are queued behind the unacknowledged STARTING.
        assert!(
            updates(&h.handle(Event::Started { container_id: cid.clone(), pid: 7 })).is_empty()
        );
        let exited = Event::Exited { container_id: cid.clone(), status: ExitStatus::Code(3) };
        assert!(updates(&h.handle(exited)).is_empty());
        let running = one_update(&h.ack(&starting));
        assert_eq!(state(&running), TaskState::TaskRunning);
        let failed = one_update(&h.ack(&running));
        assert_eq!(state(&failed), TaskState::TaskFailed);
        assert_eq!(failed.message, "Command exited with status 3");
        assert_eq!(failed.reason, None);
        assert_eq!(h.core.tasks().count(), 1, "not forgotten before the terminal ack");
        let cmds = h.ack(&failed);
        assert_eq!(cmds, vec![Command::Forget { container_id: cid }]);
        assert_eq!(h.core.tasks().count(), 0);
        assert_eq!(h.core.completed().count(), 1);
        // Every update got its own uuid.
        assert!(starting.uuid != running.uuid && running.uuid != failed.uuid);
    }

    /// The last checkpoint of `task_id` among the persisted commands.
    fn last_checkpoint(h: &Harness, task_id: &str) -> Option<crate::checkpoint::TaskCheckpoint> {
        h.persisted.iter().rev().find_map(|c| match c {
            Command::Checkpoint(t) if t.spec.task_id == task_id => Some((**t).clone()),
            _ => None,
        })
    }

    #[test]
    fn every_change_is_checkpointed_before_what_it_causes_is_sent() {
        let mut h = Harness::new();
        h.register();
        assert!(
            h.persisted.contains(&Command::CheckpointAgent { agent_id: "agent-1".into() }),
            "the agent id is persisted once given"
        );
        let cid = h.run("t1");
        let launch_at = h.raw.iter().position(|c| matches!(c, Command::Launch(_))).unwrap();
        assert!(
            h.raw[..launch_at].iter().any(|c| matches!(c, Command::Checkpoint(t) if t.phase == 0)),
            "the task is persisted before its container is made"
        );
        h.raw.clear();
        let running = one_update(&h.handle(Event::Started { container_id: cid.clone(), pid: 2 }));
        let send_at = h.raw.iter().position(|c| matches!(c, Command::Send(_))).unwrap();
        let ckpt = h.raw[..send_at].iter().find_map(|c| match c {
            Command::Checkpoint(t) => Some(t.clone()),
            _ => None,
        });
        let ckpt = ckpt.expect("a checkpoint precedes the update");
        assert_eq!((ckpt.phase, ckpt.updates.clone()), (2, vec![running.clone()]));
        h.ack(&running);
        assert!(last_checkpoint(&h, "t1").unwrap().updates.is_empty(), "the ack is persisted");
        h.handle(Event::Exited { container_id: cid.clone(), status: ExitStatus::Code(0) });
        let finished = last_checkpoint(&h, "t1").unwrap().updates[0].clone();
        h.ack(&finished);
        assert_eq!(
            h.persisted.last(),
            Some(&Command::RemoveCheckpoint(TaskKey {
                framework_id: "fw".into(),
                task_id: "t1".into()
            })),
            "a forgotten task's checkpoint goes"
        );
    }

    #[test]
    fn a_recovered_core_reregisters_and_resends_in_order_at_least_once() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        let running = one_update(&h.handle(Event::Started { container_id: cid.clone(), pid: 2 }));
        h.handle(Event::Exited { container_id: cid.clone(), status: ExitStatus::Code(0) });
        // The agent dies here: RUNNING in flight, FINISHED queued behind it.
        let ckpt = last_checkpoint(&h, "t1").unwrap();
        assert_eq!(ckpt.updates.len(), 2);

        let mut h2 = Harness::new();
        h2.core.recover(h2.now(), "agent-1".into(), vec![ckpt]);
        let cmds = h2.handle(Event::Connected { http_address: "10.0.0.5".into() });
        let Command::Send(AgentMessage::Register(reg)) = &cmds[0] else { panic!("{cmds:?}") };
        assert_eq!(reg.agent_id.as_deref(), Some("agent-1"), "re-registers under its id");
        assert_eq!(reg.tasks.len(), 1);
        let cmds = h2.master(MasterMessage::Registered {
            agent_id: "agent-1".into(),
            master_id: "m".into(),
            ping_interval_ms: 1000,
        });
        assert!(
            !h2.persisted.iter().any(|c| matches!(c, Command::CheckpointAgent { .. })),
            "same id: nothing to persist"
        );
        let resent = one_update(&cmds);
        assert_eq!(resent, running, "the same update, same uuid: the master deduplicates");
        let finished = one_update(&h2.ack(&resent));
        assert_eq!(state(&finished), TaskState::TaskFinished);
        assert_eq!(h2.ack(&finished), vec![Command::Forget { container_id: cid }]);
    }

    #[test]
    fn a_recovered_running_task_ends_through_the_usual_events() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        let running = one_update(&h.handle(Event::Started { container_id: cid.clone(), pid: 2 }));
        h.ack(&running);
        let ckpt = last_checkpoint(&h, "t1").unwrap();
        let mut h2 = Harness::new();
        h2.core.recover(h2.now(), "agent-1".into(), vec![ckpt]);
        h2.register();
        assert_eq!(h2.core.live_containers(), 1);
        // A late `started` from the adopted init changes nothing.
        assert!(
            updates(&h2.handle(Event::Started { container_id: cid.clone(), pid: 2 })).is_empty()
        );
        let done = one_update(
            &h2.handle(Event::Exited { container_id: cid, status: ExitStatus::Code(4) }),
        );
        assert_eq!(state(&done), TaskState::TaskFailed);
        assert_eq!(done.message, "Command exited with status 4");
    }

    #[test]
    fn a_task_that_runs_at_once_skips_task_starting() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        let running = one_update(&h.handle(Event::Started { container_id: cid.clone(), pid: 2 }));
        assert_eq!(state(&running), TaskState::TaskRunning);
        assert_eq!(running.container_id.as_deref(), Some(cid.as_str()));
        // A late Launched changes nothing.
        assert!(updates(&h.handle(Event::Launched { container_id: cid.clone() })).is_empty());
        h.handle(Event::Exited { container_id: cid, status: ExitStatus::Code(0) });
        let done = one_update(&h.ack(&running));
        assert_eq!(state(&done), TaskState::TaskFinished);
    }

    #[test]
    fn a_container_stopped_at_its_memory_limit_fails_with_the_limitation_reason() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        let starting = one_update(&h.handle(Event::Launched { container_id: cid.clone() }));
        h.handle(Event::Started { container_id: cid.clone(), pid: 2 });
        let running = one_update(&h.ack(&starting));
        let message = "Memory limit exceeded: Requested: 32MB Maximum Used: 32MB".to_string();
        assert!(
            updates(&h.handle(Event::Limited {
                container_id: cid.clone(),
                reason: Reason::ContainerLimitationMemory,
                message: message.clone(),
            }))
            .is_empty()
        );
        let failed = one_update(&h.ack(&running));
        assert_eq!(state(&failed), TaskState::TaskFailed);
        assert_eq!(failed.reason, Some(Reason::ContainerLimitationMemory as i32));
        assert_eq!(failed.source, Source::Agent as i32);
        assert_eq!(failed.message, message);
    }

    #[test]
    fn exit_statuses_map_to_mesos_states_and_messages() {
        let cases = [
            (ExitStatus::Code(0), false, TaskState::TaskFinished, "Command exited with status 0"),
            (ExitStatus::Code(1), false, TaskState::TaskFailed, "Command exited with status 1"),
            (
                ExitStatus::Signal(9),
                false,
                TaskState::TaskFailed,
                "Command terminated with signal Killed",
            ),
            (
                ExitStatus::Signal(15),
                true,
                TaskState::TaskKilled,
                "Command terminated with signal Terminated",
            ),
            (ExitStatus::Code(0), true, TaskState::TaskKilled, "Task killed"),
        ];
        for (status, killed, want_state, want_msg) in cases {
            assert_eq!(
                terminal(status, killed),
                (want_state, want_msg.to_string()),
                "{status:?} {killed}"
            );
        }
        assert_eq!(signal_name(64), "Unknown signal 64");
    }

    #[test]
    fn retry_backoff_doubles_to_the_cap() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        let first = one_update(&h.handle(Event::Launched { container_id: cid }));
        assert_eq!(h.core.next_timeout(), Some(h.base + 10 * SEC));
        assert!(h.advance_to(10 * SEC - Duration::from_millis(1)).is_empty());
        // Resends at t = 10, 30, 70, 150, 310, 630 (capped at 600 s apart), 1230, ...
        let mut at = Duration::ZERO;
        let mut backoff = 10 * SEC;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            at += backoff;
            assert_eq!(h.core.next_timeout(), Some(h.base + at));
            let again = one_update(&h.advance_to(at));
            assert_eq!(again, first, "a resend is the same update, same uuid");
            gaps.push(backoff.as_secs());
            backoff = (backoff * 2).min(600 * SEC);
        }
        assert_eq!(gaps, vec![10, 20, 40, 80, 160, 320, 600, 600]);
    }

    #[test]
    fn an_ack_with_another_uuid_is_ignored() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        let starting = one_update(&h.handle(Event::Launched { container_id: cid.clone() }));
        h.handle(Event::Started { container_id: cid, pid: 1 });
        let mut wrong = starting.clone();
        wrong.uuid[15] ^= 0xff;
        assert!(h.ack(&wrong).is_empty(), "wrong uuid releases nothing");
        // Still in flight: resent at its retry time.
        assert_eq!(one_update(&h.advance_to(10 * SEC)), starting);
        // Acks for unknown tasks are ignored too.
        let mut other = starting.clone();
        other.task_id = "nope".into();
        assert!(h.ack(&other).is_empty());
        let running = one_update(&h.ack(&starting));
        assert_eq!(state(&running), TaskState::TaskRunning);
        // A duplicate ack of the already-acknowledged update does not release RUNNING.
        assert!(h.ack(&starting).is_empty());
    }

    #[test]
    fn queues_of_different_tasks_are_independent() {
        let mut h = Harness::new();
        h.register();
        let a = h.run("a");
        let b = h.run("b");
        let ua = one_update(&h.handle(Event::Launched { container_id: a }));
        let ub = one_update(&h.handle(Event::Launched { container_id: b }));
        assert_eq!((ua.task_id.as_str(), ub.task_id.as_str()), ("a", "b"));
        // Acking b does not touch a's retry.
        assert!(updates(&h.ack(&ub)).is_empty());
        assert_eq!(one_update(&h.advance_to(10 * SEC)), ua);
    }

    #[test]
    fn nothing_is_sent_while_disconnected_and_heads_go_out_on_reregistration() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        let starting = one_update(&h.handle(Event::Launched { container_id: cid.clone() }));
        assert!(h.handle(Event::Disconnected).is_empty());
        // Events while disconnected generate updates but send nothing, and no timer runs.
        assert!(h.handle(Event::Started { container_id: cid.clone(), pid: 9 }).is_empty());
        assert_eq!(h.core.next_timeout(), None);
        assert!(h.advance_to(100 * SEC).is_empty());
        // Re-registration carries the id and the task at its latest state.
        let cmds = h.handle(Event::Connected { http_address: "10.0.0.6".into() });
        let [Command::Send(AgentMessage::Register(r))] = &cmds[..] else { panic!("{cmds:?}") };
        assert_eq!(r.agent_id.as_deref(), Some("agent-1"));
        assert_eq!(r.http_address, "10.0.0.6");
        assert_eq!(r.tasks.len(), 1);
        assert_eq!(r.tasks[0].task.task_id, "t1");
        assert_eq!(r.tasks[0].state, TaskState::TaskRunning as i32);
        // Nothing goes out before Registered ...
        assert!(h.advance_to(200 * SEC).is_empty());
        // ... then the head (still STARTING, same uuid) at once, with a fresh retry timer.
        let cmds = h.master(MasterMessage::Registered {
            agent_id: "agent-1".into(),
            master_id: "m2".into(),
            ping_interval_ms: 1000,
        });
        assert_eq!(one_update(&cmds), starting);
        assert_eq!(h.core.next_timeout(), Some(h.base + 210 * SEC));
    }

    #[test]
    fn a_new_connection_without_a_disconnect_rearms_nothing_until_registered() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        let starting = one_update(&h.handle(Event::Launched { container_id: cid }));
        // The transport reports a new connection straight away: no timer may stay due while
        // the core cannot send (the shell would spin on it).
        h.handle(Event::Connected { http_address: "a".into() });
        assert_eq!(h.core.next_timeout(), None);
        assert!(h.advance_to(60 * SEC).is_empty());
        let cmds = h.master(MasterMessage::Registered {
            agent_id: "agent-1".into(),
            master_id: "m".into(),
            ping_interval_ms: 1,
        });
        assert_eq!(one_update(&cmds), starting);
    }

    #[test]
    fn updates_generated_before_registration_wait_for_it() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        h.handle(Event::Disconnected);
        assert!(h.handle(Event::Launched { container_id: cid }).is_empty());
        let cmds = h.register();
        assert_eq!(state(&one_update(&cmds)), TaskState::TaskStarting);
    }

    #[test]
    fn terminal_ack_forgets_and_completed_list_is_bounded() {
        let mut h = Harness::new();
        h.register();
        for id in ["a", "b", "c"] {
            let cid = h.run(id);
            let u =
                one_update(&h.handle(Event::LaunchFailed {
                    container_id: cid.clone(),
                    message: "no".into(),
                }));
            assert_eq!(state(&u), TaskState::TaskFailed);
            assert_eq!(u.reason, Some(Reason::ContainerLaunchFailed as i32));
            assert_eq!(u.source, Source::Agent as i32);
            assert_eq!(h.ack(&u), vec![Command::Forget { container_id: cid }]);
        }
        let done: Vec<_> = h.core.completed().map(|t| t.spec.task_id.clone()).collect();
        assert_eq!(done, vec!["b", "c"]);
        // A forgotten task id can be used again.
        h.run("a");
    }

    #[test]
    fn duplicate_run_task_is_ignored() {
        let mut h = Harness::new();
        h.register();
        h.run("t1");
        assert!(h.master(MasterMessage::RunTask(Box::new(run_task("fw", "t1")))).is_empty());
        // The same task id in another framework is another task.
        let cmds = h.master(MasterMessage::RunTask(Box::new(run_task("fw2", "t1"))));
        assert!(matches!(&cmds[..], [Command::Launch(_)]));
    }

    #[test]
    fn invalid_ids_are_refused_with_task_error() {
        let mut h = Harness::new();
        h.register();
        let u =
            one_update(&h.master(MasterMessage::RunTask(Box::new(run_task("fw", "../../etc")))));
        assert_eq!(state(&u), TaskState::TaskError);
        assert_eq!(u.reason, Some(Reason::TaskInvalid as i32));
        assert_eq!(h.ack(&u), vec![], "no container to forget");
        assert_eq!(h.core.tasks().count(), 0);
    }

    #[test]
    fn kill_terminates_then_forces_after_the_grace_period() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        let s = one_update(&h.handle(Event::Launched { container_id: cid.clone() }));
        h.ack(&s);
        let r = one_update(&h.handle(Event::Started { container_id: cid.clone(), pid: 5 }));
        h.ack(&r);
        let kill = MasterMessage::KillTask {
            framework_id: "fw".into(),
            task_id: "t1".into(),
            grace_period_ns: Some(2_000_000_000),
        };
        assert_eq!(h.master(kill.clone()), vec![Command::Terminate { container_id: cid.clone() }]);
        // A second kill does not restart anything.
        assert!(h.master(kill).is_empty());
        assert!(h.advance_to(2 * SEC - Duration::from_millis(1)).is_empty());
        assert_eq!(h.advance_to(2 * SEC), vec![Command::ForceKill { container_id: cid.clone() }]);
        assert!(h.advance_to(20 * SEC).is_empty(), "forced once");
        let u =
            one_update(&h.handle(Event::Exited {
                container_id: cid.clone(),
                status: ExitStatus::Signal(9),
            }));
        assert_eq!(state(&u), TaskState::TaskKilled);
        assert_eq!(u.message, "Command terminated with signal Killed");
        assert_eq!(h.ack(&u), vec![Command::Forget { container_id: cid }]);
    }

    #[test]
    fn kill_grace_comes_from_the_task_then_the_default() {
        let mut h = Harness::new();
        h.register();
        let mut run = run_task("fw", "t1");
        run.task.kill_grace_period_ns = Some(5_000_000_000);
        let cmds = h.master(MasterMessage::RunTask(Box::new(run)));
        let [Command::Launch(l)] = &cmds[..] else { panic!() };
        let cid = l.container_id.clone();
        let kill = |t: &str| MasterMessage::KillTask {
            framework_id: "fw".into(),
            task_id: t.into(),
            grace_period_ns: None,
        };
        h.master(kill("t1"));
        assert_eq!(h.core.next_timeout(), Some(h.base + 5 * SEC));
        assert_eq!(h.advance_to(5 * SEC), vec![Command::ForceKill { container_id: cid }]);
        let cid2 = h.run("t2");
        assert_eq!(h.master(kill("t2")), vec![Command::Terminate { container_id: cid2.clone() }]);
        assert_eq!(h.core.next_timeout(), Some(h.base + 8 * SEC));
        // Killed before the init started: the shell reports a launch failure; it is a kill.
        let u = one_update(
            &h.handle(Event::LaunchFailed { container_id: cid2, message: "killed".into() }),
        );
        assert_eq!(state(&u), TaskState::TaskKilled);
        assert_eq!(u.message, "Task killed");
    }

    #[test]
    fn kill_of_an_unknown_task_is_a_reliable_task_lost() {
        let mut h = Harness::new();
        h.register();
        let kill = MasterMessage::KillTask {
            framework_id: "fw".into(),
            task_id: "ghost".into(),
            grace_period_ns: None,
        };
        let u = one_update(&h.master(kill));
        assert_eq!(state(&u), TaskState::TaskLost);
        assert_eq!(u.message, "Task not found on agent");
        assert_eq!(u.reason, Some(Reason::TaskUnknown as i32));
        assert_eq!(u.container_id, None);
        assert_eq!(one_update(&h.advance_to(10 * SEC)), u, "retried like any update");
        // It is not a task: re-registration does not report it.
        h.handle(Event::Disconnected);
        let cmds = h.handle(Event::Connected { http_address: "a".into() });
        let [Command::Send(AgentMessage::Register(r))] = &cmds[..] else { panic!() };
        assert!(r.tasks.is_empty());
        let cmds = h.master(MasterMessage::Registered {
            agent_id: "agent-1".into(),
            master_id: "m".into(),
            ping_interval_ms: 1,
        });
        assert_eq!(one_update(&cmds), u);
        assert!(h.ack(&u).is_empty());
        assert_eq!(h.core.pending_updates(), 0);
        assert_eq!(h.core.next_timeout(), None);
    }

    #[test]
    fn shutdown_framework_kills_and_drops_pending_updates() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        one_update(&h.handle(Event::Launched { container_id: cid.clone() }));
        let cmds = h.master(MasterMessage::ShutdownFramework { framework_id: "fw".into() });
        assert_eq!(cmds, vec![Command::Terminate { container_id: cid.clone() }]);
        assert_eq!(h.core.pending_updates(), 0);
        let cmds =
            h.handle(Event::Exited { container_id: cid.clone(), status: ExitStatus::Signal(15) });
        assert_eq!(
            cmds,
            vec![Command::Forget { container_id: cid }],
            "no update for a gone framework"
        );
        assert_eq!(h.core.tasks().count(), 0);
        assert_eq!(h.core.next_timeout(), None);
    }

    #[test]
    fn shutdown_kills_every_live_task_and_refuses_new_ones() {
        let mut h = Harness::new();
        h.register();
        let a = h.run("a");
        let b = h.run("b");
        let cmds = h.handle(Event::Shutdown);
        assert_eq!(cmds.len(), 2);
        assert!(cmds.contains(&Command::Terminate { container_id: a.clone() }));
        assert!(cmds.contains(&Command::Terminate { container_id: b.clone() }));
        assert_eq!(h.core.live_containers(), 2);
        assert_eq!(h.advance_to(3 * SEC).len(), 2, "both forced after the default grace");
        h.handle(Event::Exited { container_id: a, status: ExitStatus::Signal(9) });
        h.handle(Event::LaunchFailed { container_id: b, message: "killed".into() });
        assert_eq!(h.core.live_containers(), 0);
        let u = one_update(&h.master(MasterMessage::RunTask(Box::new(run_task("fw", "late")))));
        assert_eq!(state(&u), TaskState::TaskLost);
    }

    #[test]
    fn late_events_for_a_finished_container_are_ignored() {
        let mut h = Harness::new();
        h.register();
        let cid = h.run("t1");
        let exited = Event::Exited { container_id: cid.clone(), status: ExitStatus::Code(0) };
        let u = one_update(&h.handle(exited.clone()));
        assert_eq!(state(&u), TaskState::TaskFinished);
        assert!(h.handle(exited).is_empty());
        assert!(h.handle(Event::Started { container_id: cid.clone(), pid: 1 }).is_empty());
        assert!(h.handle(Event::Launched { container_id: "unknown".into() }).is_empty());
    }

    /// Runs `ids` as one task group under executor `eid`; returns their launches.
    fn launch_group(h: &mut Harness, eid: &str, ids: &[&str]) -> Vec<Launch> {
        let group = corral_wire::proto::TaskGroupRef {
            executor_id: eid.into(),
            task_ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        let mut launches = Vec::new();
        for id in ids {
            let mut run = run_task("fw", id);
            run.task.group = Some(group.clone());
            match &h.master(MasterMessage::RunTask(Box::new(run)))[..] {
                [Command::Launch(l)] => launches.push(l.clone()),
                other => panic!("{other:?}"),
            }
        }
        launches
    }

    #[test]
    fn a_task_group_shares_one_executor_run_and_goes_down_together() {
        let mut h = Harness::new();
        h.register();
        let launches = launch_group(&mut h, "e1", &["a", "b"]);
        assert!(launches[0].executor_container.is_some());
        assert_eq!(
            launches[0].executor_container, launches[1].executor_container,
            "one shared sandbox"
        );
        for l in &launches {
            h.handle(Event::Started { container_id: l.container_id.clone(), pid: 7 });
        }
        h.drain();
        // a fails: b is terminated.
        let cmds = h.handle(Event::Exited {
            container_id: launches[0].container_id.clone(),
            status: ExitStatus::Code(3),
        });
        // (a's FAILED waits behind its unacknowledged RUNNING.)
        assert!(
            cmds.contains(&Command::Terminate { container_id: launches[1].container_id.clone() }),
            "{cmds:?}"
        );
        // A group whose task finishes well leaves its siblings alone.
        let ls = launch_group(&mut h, "e2", &["c", "d"]);
        assert_ne!(ls[0].executor_container, launches[0].executor_container);
        let cmds = h.handle(Event::Exited {
            container_id: ls[0].container_id.clone(),
            status: ExitStatus::Code(0),
        });
        assert!(!cmds.iter().any(|c| matches!(c, Command::Terminate { .. })), "{cmds:?}");
    }
}
