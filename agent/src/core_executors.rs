//! Custom executors in the agent's core: the executor container, the executor API session
//! (`/api/v1/executor`: SUBSCRIBE, UPDATE, MESSAGE in; SUBSCRIBED, LAUNCH, KILL,
//! ACKNOWLEDGED, MESSAGE, SHUTDOWN out) and the tasks the executor runs.
//!
//! An executor is started (in its own container, sandbox
//! `executors/<executor-id>/runs/<container-id>`) with the first task given to it; tasks
//! wait until it subscribes, then go to it as LAUNCH events. Its UPDATE calls become the
//! tasks' status updates (with the executor's uuid, so the acknowledgement that comes back
//! from the scheduler is passed on as ACKNOWLEDGED). When its last task has ended, or its
//! framework asks (SHUTDOWN) or goes away, it gets SHUTDOWN and is killed after a grace
//! period. If it exits with tasks still live, they fail with REASON_EXECUTOR_TERMINATED.

use std::collections::BTreeSet;
use std::time::Duration;

use corral_wire::mesos::v1::{self, executor::event};
use corral_wire::mesos::{IdExt as _, is_terminal};
use corral_wire::proto::{AgentMessage, CommandSpec, ExecutorSpec, FrameworkRef, TaskSpec};

use super::{Command, Core, Launch, Now, Phase, Reason, Source, TaskKey, TaskState};

/// How long an executor told to shut down has before it is killed.
pub const EXECUTOR_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// (framework id, executor id).
pub type ExecutorKey = (String, String);

/// One running custom executor.
#[derive(Debug, Clone)]
pub struct ExecutorRun {
    pub framework: FrameworkRef,
    pub spec: ExecutorSpec,
    pub container_id: String,
    /// The subscribed event stream (numbered by the shell).
    pub stream: Option<u64>,
    /// Tasks waiting for the executor to subscribe.
    pending: Vec<TaskKey>,
    /// Every task given to this run.
    pub tasks: BTreeSet<TaskKey>,
    /// Told to shut down: killed at this time.
    shutdown_at: Option<std::time::Instant>,
}

fn executor_event(
    t: event::Type,
    fill: impl FnOnce(&mut v1::executor::Event),
) -> v1::executor::Event {
    let mut e = v1::executor::Event { r#type: Some(t as i32), ..Default::default() };
    fill(&mut e);
    e
}

fn command_info(c: &CommandSpec) -> v1::CommandInfo {
    v1::CommandInfo {
        shell: Some(c.shell),
        value: c.value.clone(),
        arguments: c.arguments.clone(),
        user: c.user.clone(),
        environment: (!c.environment.is_empty()).then(|| v1::Environment {
            variables: c
                .environment
                .iter()
                .map(|(k, v)| v1::environment::Variable {
                    name: k.clone(),
                    value: Some(v.clone()),
                    ..Default::default()
                })
                .collect(),
        }),
        ..Default::default()
    }
}

impl Core {
    /// The executor's `ExecutorInfo`, as SUBSCRIBED and LAUNCH carry it.
    fn executor_info(&self, run: &ExecutorRun) -> v1::ExecutorInfo {
        v1::ExecutorInfo {
            r#type: Some(v1::executor_info::Type::Custom as i32),
            executor_id: v1::ExecutorId::from_str(&run.spec.executor_id),
            framework_id: Some(v1::FrameworkId::from_str(&run.framework.id)),
            command: Some(command_info(&run.spec.command)),
            resources: run.spec.resources.to_mesos(Some(&run.framework.role)),
            name: (!run.spec.name.is_empty()).then(|| run.spec.name.clone()),
            data: run.spec.data.clone(),
            ..Default::default()
        }
    }

    /// A task as its executor receives it in LAUNCH.
    fn task_info(&self, key: &TaskKey, run: &ExecutorRun) -> Option<v1::TaskInfo> {
        let t = self.entries.get(key)?.task.as_ref()?;
        Some(v1::TaskInfo {
            name: t.spec.name.clone(),
            task_id: v1::TaskId::from_str(&t.spec.task_id),
            agent_id: v1::AgentId::from_str(&t.agent_id),
            resources: t.spec.resources.to_mesos(Some(&t.framework.role)),
            executor: Some(self.executor_info(run)),
            data: t.spec.data.clone(),
            kill_policy: t.spec.kill_grace_period_ns.map(|ns| v1::KillPolicy {
                grace_period: Some(v1::DurationInfo { nanoseconds: ns as i64 }),
            }),
            ..Default::default()
        })
    }

    fn send_executor(&mut self, key: &ExecutorKey, event: v1::executor::Event) {
        if self.executors.get(key).is_some_and(|r| r.stream.is_some()) {
            self.commands.push_back(Command::ExecutorEvent {
                framework_id: key.0.clone(),
                executor_id: key.1.clone(),
                event,
            });
        }
    }

    /// A task for a custom executor: to the executor if it is subscribed, else queued (and
    /// the executor started if it does not run).
    pub(super) fn run_on_executor(
        &mut self,
        key: &TaskKey,
        spec: &ExecutorSpec,
        framework: &FrameworkRef,
    ) {
        let ekey: ExecutorKey = (key.framework_id.clone(), spec.executor_id.clone());
        if !self.executors.contains_key(&ekey) {
            self.start_executor(&ekey, spec, framework);
        }
        let Some(run) = self.executors.get_mut(&ekey) else { return };
        run.tasks.insert(key.clone());
        let container = run.container_id.clone();
        if let Some(t) = self.entries.get_mut(key).and_then(|e| e.task.as_mut()) {
            t.executor_container = Some(container.clone());
        }
        let run = &self.executors[&ekey];
        if run.stream.is_some() && run.shutdown_at.is_none() {
            let run = run.clone();
            if let Some(task) = self.task_info(key, &run) {
                let ev = executor_event(event::Type::Launch, |e| {
                    e.launch = Some(event::Launch { task })
                });
                self.send_executor(&ekey, ev);
            }
            self.resize_executor(&ekey);
        } else if let Some(run) = self.executors.get_mut(&ekey) {
            // A run shutting down is replaced when it is gone; these go to the new one.
            run.pending.push(key.clone());
        }
    }

    fn start_executor(
        &mut self,
        ekey: &ExecutorKey,
        spec: &ExecutorSpec,
        framework: &FrameworkRef,
    ) {
        let container_id =
            uuid::Builder::from_random_bytes(self.ids.next_id()).into_uuid().to_string();
        let reg = &self.config.registration;
        let mut command = spec.command.clone();
        let endpoint = format!("{}:{}", reg.http_address, reg.http_port);
        command.environment.extend([
            ("MESOS_AGENT_ENDPOINT".to_string(), endpoint),
            ("MESOS_CHECKPOINT".into(), "0".into()),
            ("MESOS_HTTP_COMMAND_EXECUTOR".into(), "0".into()),
            (
                "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD".into(),
                format!("{}secs", EXECUTOR_SHUTDOWN_GRACE.as_secs()),
            ),
        ]);
        let launch = Launch {
            container_id: container_id.clone(),
            agent_id: self.agent_id.clone().unwrap_or_default(),
            framework: framework.clone(),
            // The executor runs as a "task" whose id is its executor id: its sandbox is
            // `executors/<executor-id>/runs/<container-id>` and MESOS_EXECUTOR_ID is set.
            task: TaskSpec {
                task_id: spec.executor_id.clone(),
                name: spec.name.clone(),
                resources: spec.resources.clone(),
                command,
                kill_grace_period_ns: Some(EXECUTOR_SHUTDOWN_GRACE.as_nanos() as u64),
                group: None,
                executor: None,
                data: None,
            },
            executor_container: None,
        };
        tracing::info!(framework = %ekey.0, executor = %ekey.1, container_id, "starting executor");
        self.executor_containers.insert(container_id.clone(), ekey.clone());
        self.executors.insert(
            ekey.clone(),
            ExecutorRun {
                framework: framework.clone(),
                spec: spec.clone(),
                container_id,
                stream: None,
                pending: Vec::new(),
                tasks: BTreeSet::new(),
                shutdown_at: None,
            },
        );
        self.commands.push_back(Command::Launch(launch));
    }

    /// The executor's container grows and shrinks with its live tasks.
    fn resize_executor(&mut self, ekey: &ExecutorKey) {
        let Some(run) = self.executors.get(ekey) else { return };
        let mut total = run.spec.resources.clone();
        for k in &run.tasks {
            if let Some(t) = self.entries.get(k).and_then(|e| e.task.as_ref())
                && t.phase != Phase::Done
            {
                total.add(&t.spec.resources);
            }
        }
        self.commands.push_back(Command::Resize {
            container_id: run.container_id.clone(),
            resources: total,
        });
    }

    /// Whether the task under `key` still has a process (or an executor running it).
    fn is_live(&self, key: &TaskKey) -> bool {
        self.entries.get(key).and_then(|e| e.task.as_ref()).is_some_and(|t| t.phase != Phase::Done)
    }

    /// Whether `(framework, executor)` runs here (the executor API's SUBSCRIBE checks it).
    pub fn executor_known(&self, framework_id: &str, executor_id: &str) -> bool {
        self.executors.contains_key(&(framework_id.to_string(), executor_id.to_string()))
    }

    /// The executor subscribed on `stream`: SUBSCRIBED, then the tasks that waited for it.
    pub(super) fn executor_subscribed(&mut self, ekey: ExecutorKey, stream: u64) {
        let Some(run) = self.executors.get_mut(&ekey) else { return };
        run.stream = Some(stream);
        let run = run.clone();
        let reg = &self.config.registration;
        let agent_info = v1::AgentInfo {
            hostname: reg.hostname.clone(),
            port: Some(i32::from(reg.http_port)),
            resources: reg.resources.to_mesos(None),
            id: self.agent_id.as_deref().map(v1::AgentId::from_str),
            ..Default::default()
        };
        let framework_info = v1::FrameworkInfo {
            user: run.framework.user.clone(),
            name: run.framework.name.clone(),
            id: Some(v1::FrameworkId::from_str(&run.framework.id)),
            ..Default::default()
        };
        let executor_info = self.executor_info(&run);
        tracing::info!(framework = %ekey.0, executor = %ekey.1, "executor subscribed");
        let ev = executor_event(event::Type::Subscribed, |e| {
            e.subscribed = Some(event::Subscribed {
                executor_info,
                framework_info,
                agent_info,
                container_id: Some(v1::ContainerId {
                    value: run.container_id.clone(),
                    parent: None,
                }),
            })
        });
        self.send_executor(&ekey, ev);
        if run.shutdown_at.is_some() {
            self.send_executor(&ekey, executor_event(event::Type::Shutdown, |_| {}));
            return;
        }
        let pending = self
            .executors
            .get_mut(&ekey)
            .map(|r| std::mem::take(&mut r.pending))
            .unwrap_or_default();
        for key in pending {
            let live = self.is_live(&key);
            if let (true, Some(task)) = (live, self.task_info(&key, &run)) {
                let ev = executor_event(event::Type::Launch, |e| {
                    e.launch = Some(event::Launch { task })
                });
                self.send_executor(&ekey, ev);
            }
        }
        self.resize_executor(&ekey);
    }

    /// The executor's stream ended; it may subscribe again.
    pub(super) fn executor_disconnected(&mut self, ekey: ExecutorKey, stream: u64) {
        if let Some(run) = self.executors.get_mut(&ekey)
            && run.stream == Some(stream)
        {
            run.stream = None;
        }
    }

    /// An UPDATE from the executor: the task's next status update, with the executor's uuid.
    pub(super) fn executor_update(&mut self, now: Now, ekey: ExecutorKey, status: v1::TaskStatus) {
        let key = TaskKey { framework_id: ekey.0.clone(), task_id: status.task_id.value.clone() };
        let Some(run) = self.executors.get(&ekey) else { return };
        if !run.tasks.contains(&key) {
            tracing::warn!(executor = %ekey.1, task = %key, "update for a task this executor does not run; ignored");
            return;
        }
        let Some(task) = self.entries.get(&key).and_then(|e| e.task.as_ref()) else { return };
        if task.phase == Phase::Done {
            tracing::debug!(task = %key, "update after a terminal one; ignored");
            return;
        }
        let state = status.state();
        let Ok(uuid) = <[u8; 16]>::try_from(status.uuid.clone().unwrap_or_default()) else {
            return;
        };
        let phase = if is_terminal(state) {
            Phase::Done
        } else if state == TaskState::TaskRunning {
            Phase::Running
        } else {
            Phase::Starting
        };
        self.set_phase(&key, phase);
        let reason = status.reason.and_then(|r| Reason::try_from(r).ok());
        self.push_update_as(
            now,
            &key,
            state,
            reason,
            Source::Executor,
            status.message(),
            Some(uuid),
        );
        if is_terminal(state) {
            self.maybe_forget(&key);
            self.executor_task_ended(now, &ekey);
        }
    }

    /// After an executor task ended: an executor with no live task left is shut down.
    fn executor_task_ended(&mut self, now: Now, ekey: &ExecutorKey) {
        let Some(run) = self.executors.get(ekey) else { return };
        let live = run.tasks.iter().any(|k| self.is_live(k));
        if !live {
            self.shutdown_executor(now, ekey);
        } else {
            self.resize_executor(ekey);
        }
    }

    /// SHUTDOWN to the executor; killed after the grace period.
    pub(super) fn shutdown_executor(&mut self, now: Now, ekey: &ExecutorKey) {
        let Some(run) = self.executors.get_mut(ekey) else { return };
        if run.shutdown_at.is_some() {
            return;
        }
        tracing::info!(framework = %ekey.0, executor = %ekey.1, "shutting the executor down");
        run.shutdown_at = Some(now.mono + EXECUTOR_SHUTDOWN_GRACE);
        let (cid, subscribed) = (run.container_id.clone(), run.stream.is_some());
        if subscribed {
            // It exits by itself; killed when the grace period is over.
            self.send_executor(ekey, executor_event(event::Type::Shutdown, |_| {}));
        } else {
            // Nobody to tell: SIGTERM now, SIGKILL after the grace period.
            self.commands.push_back(Command::Terminate { container_id: cid });
        }
    }

    /// A MESSAGE from the executor, for its scheduler.
    pub(super) fn executor_message(&mut self, ekey: ExecutorKey, data: Vec<u8>) {
        if self.executors.contains_key(&ekey) {
            self.commands.push_back(Command::Send(AgentMessage::ExecutorMessage {
                framework_id: ekey.0,
                executor_id: ekey.1,
                data,
            }));
        }
    }

    /// A scheduler's MESSAGE for the executor.
    pub(super) fn framework_message(&mut self, ekey: ExecutorKey, data: Vec<u8>) {
        let ev =
            executor_event(event::Type::Message, |e| e.message = Some(event::Message { data }));
        self.send_executor(&ekey, ev);
    }

    /// A kill for an executor's task: KILL to a subscribed executor; a task still waiting for
    /// its executor is killed at once.
    pub(super) fn kill_executor_task(&mut self, now: Now, key: &TaskKey, executor_id: &str) {
        let ekey: ExecutorKey = (key.framework_id.clone(), executor_id.to_string());
        let waiting =
            self.executors.get(&ekey).is_none_or(|r| r.stream.is_none() || r.pending.contains(key));
        if waiting {
            if let Some(r) = self.executors.get_mut(&ekey) {
                r.pending.retain(|k| k != key);
            }
            if self.is_live(key) {
                self.set_phase(key, Phase::Done);
                self.push_update(
                    now,
                    key,
                    TaskState::TaskKilled,
                    None,
                    Source::Agent,
                    "Killed before the executor ran it",
                );
                self.maybe_forget(key);
                self.executor_task_ended(now, &ekey);
            }
            return;
        }
        let ev = executor_event(event::Type::Kill, |e| {
            e.kill =
                Some(event::Kill { task_id: v1::TaskId::from_str(&key.task_id), kill_policy: None })
        });
        self.send_executor(&ekey, ev);
    }

    /// The acknowledgement of an executor task's update goes back to the executor.
    pub(super) fn executor_acknowledged(
        &mut self,
        key: &TaskKey,
        executor_id: &str,
        uuid: [u8; 16],
    ) {
        let ekey: ExecutorKey = (key.framework_id.clone(), executor_id.to_string());
        let ev = executor_event(event::Type::Acknowledged, |e| {
            e.acknowledged = Some(event::Acknowledged {
                task_id: v1::TaskId::from_str(&key.task_id),
                uuid: uuid.to_vec(),
            })
        });
        self.send_executor(&ekey, ev);
    }

    /// The executor's container is gone: its live tasks fail; tasks that were waiting for a
    /// replacement get a new executor.
    pub(super) fn executor_exited(&mut self, now: Now, container_id: &str, why: &str) {
        let Some(ekey) = self.executor_containers.remove(container_id) else { return };
        let Some(run) = self.executors.remove(&ekey) else { return };
        tracing::info!(framework = %ekey.0, executor = %ekey.1, why, "executor exited");
        self.commands.push_back(Command::CloseExecutorStream {
            framework_id: ekey.0.clone(),
            executor_id: ekey.1.clone(),
        });
        self.commands.push_back(Command::Forget { container_id: container_id.to_string() });
        let mut requeue = Vec::new();
        for key in &run.tasks {
            let Some(t) = self.entries.get(key).and_then(|e| e.task.as_ref()) else { continue };
            if t.phase == Phase::Done {
                continue;
            }
            if run.pending.contains(key) && run.shutdown_at.is_some() && !self.shutting_down {
                requeue.push(key.clone());
                continue;
            }
            let killed = t.kill.is_some();
            self.set_phase(key, Phase::Done);
            if killed {
                self.push_update(
                    now,
                    key,
                    TaskState::TaskKilled,
                    None,
                    Source::Agent,
                    "Task killed",
                );
            } else {
                let msg = format!("Executor terminated: {why}");
                self.push_update(
                    now,
                    key,
                    TaskState::TaskFailed,
                    Some(Reason::ExecutorTerminated),
                    Source::Agent,
                    &msg,
                );
            }
            self.maybe_forget(key);
        }
        for key in requeue {
            self.run_on_executor(&key, &run.spec, &run.framework);
        }
    }

    /// Kills executors whose grace period after SHUTDOWN is over.
    pub(super) fn executor_timeouts(&mut self, now: Now) {
        let due: Vec<String> = self
            .executors
            .values_mut()
            .filter_map(|r| match r.shutdown_at {
                Some(at) if at <= now.mono => {
                    r.shutdown_at = Some(now.mono + Duration::from_secs(3600));
                    Some(r.container_id.clone())
                }
                _ => None,
            })
            .collect();
        for container_id in due {
            self.commands.push_back(Command::ForceKill { container_id });
        }
    }

    pub(super) fn executor_next_timeout(&self) -> Option<std::time::Instant> {
        self.executors.values().filter_map(|r| r.shutdown_at).min()
    }

    /// The executor runs of one framework (to shut down with it).
    pub(super) fn executors_of(&self, framework_id: &str) -> Vec<ExecutorKey> {
        self.executors.keys().filter(|k| k.0 == framework_id).cloned().collect()
    }

    pub(super) fn all_executors(&self) -> Vec<ExecutorKey> {
        self.executors.keys().cloned().collect()
    }

    /// How many executor containers are alive.
    pub fn live_executors(&self) -> usize {
        self.executors.len()
    }
}
