//! The agent <-> master protocol.
//!
//! An agent opens one QUIC connection (mutual TLS) to the leading master and one
//! bidirectional stream on it; every message in either direction is one [`crate::frame`]
//! record holding an rkyv archive of [`AgentMessage`] or [`MasterMessage`]. One ordered stream
//! keeps status updates of a task in order without sequence numbers.
//!
//! Session: the agent sends [`AgentMessage::Register`] first (with its `agent_id` and running
//! tasks when it registered before: re-registration); the master answers
//! [`MasterMessage::Registered`] or [`MasterMessage::Refused`]. Afterwards the master pings,
//! sends tasks to run or kill and forwards acknowledgements; the agent answers pings and
//! sends status updates, each carrying a fresh 16-byte uuid, retried until acknowledged.
//!
//! Enumerations that mirror Mesos (task state, reason, source) travel as their Mesos numbers
//! and are checked on use.

use rkyv::{Archive, Deserialize, Serialize};

use crate::mesos::v1;
use crate::resources::{Conversion, Ranges, Resources, Scalar};

/// Bumped on any incompatible change; the master refuses other versions by name.
pub const PROTOCOL_VERSION: u32 = 4;

/// Agent -> master.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum AgentMessage {
    Register(Registration),
    Pong {
        seq: u64,
    },
    StatusUpdate(StatusUpdate),
    /// An executor's MESSAGE for its scheduler.
    ExecutorMessage {
        framework_id: String,
        executor_id: String,
        data: Vec<u8>,
    },
    /// The latest usage of the tasks whose counters moved since the last report (about once a
    /// second). Not retried: a lost report is superseded by the next.
    Usage(Vec<TaskUsage>),
}

/// One container's resource usage, as the agent sampled it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct TaskUsage {
    pub framework_id: String,
    pub task_id: String,
    /// The executor, for tasks of a custom or default executor.
    pub executor_id: Option<String>,
    /// Seconds since the epoch when it was sampled.
    pub timestamp: f64,
    /// Cores used over the last interval.
    pub cpus_usage: f64,
    pub cpus_limit: f64,
    /// Scheduler runtime (eBPF) or `cpu.stat` usage, seconds.
    pub cpus_total_time_secs: f64,
    pub cpus_user_time_secs: f64,
    pub cpus_system_time_secs: f64,
    pub cpus_throttled_time_secs: Option<f64>,
    pub cpus_pressure_waiting_secs: Option<f64>,
    /// `memory.current`, where the memory controller is on.
    pub mem_total_bytes: Option<u64>,
    /// Anonymous memory (`memory.stat`), or the processes' resident set summed.
    pub mem_rss_bytes: Option<u64>,
    pub mem_file_bytes: Option<u64>,
    pub mem_limit_bytes: u64,
    pub processes: u32,
    pub threads: u32,
    /// What only the eBPF programs count; `None` when the agent reads cgroup files only.
    pub ebpf: Option<EbpfUsage>,
}

/// The eBPF counters of one container (see `agent-ebpf/bpf/telemetry.h`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct EbpfUsage {
    pub context_switches: u64,
    pub involuntary_context_switches: u64,
    pub runqueue_waits: u64,
    pub runqueue_wait_secs: f64,
    pub runqueue_latency_p50_secs: f64,
    pub runqueue_latency_p99_secs: f64,
    pub page_faults: u64,
    pub blk_read_bytes: u64,
    pub blk_write_bytes: u64,
    pub blk_read_ops: u64,
    pub blk_write_ops: u64,
    pub execs: u64,
    pub forks: u64,
    pub threads_created: u64,
    pub process_exits: u64,
    pub oom_kills: u64,
    pub net_rx_bytes: u64,
    pub net_rx_packets: u64,
    pub net_tx_bytes: u64,
    pub net_tx_packets: u64,
}

impl TaskUsage {
    /// As Mesos' `ResourceStatistics`, with Corral's extension fields filled.
    pub fn to_statistics(&self) -> v1::ResourceStatistics {
        let e = self.ebpf.as_ref();
        v1::ResourceStatistics {
            timestamp: self.timestamp,
            processes: Some(self.processes),
            threads: Some(self.threads),
            cpus_user_time_secs: Some(self.cpus_user_time_secs),
            cpus_system_time_secs: Some(self.cpus_system_time_secs),
            cpus_limit: Some(self.cpus_limit),
            cpus_throttled_time_secs: self.cpus_throttled_time_secs,
            mem_total_bytes: self.mem_total_bytes,
            mem_limit_bytes: Some(self.mem_limit_bytes),
            mem_rss_bytes: self.mem_rss_bytes,
            mem_file_bytes: self.mem_file_bytes,
            net_rx_bytes: e.map(|e| e.net_rx_bytes),
            net_rx_packets: e.map(|e| e.net_rx_packets),
            net_tx_bytes: e.map(|e| e.net_tx_bytes),
            net_tx_packets: e.map(|e| e.net_tx_packets),
            telemetry_source: Some(if e.is_some() { "ebpf" } else { "cgroup" }.into()),
            cpus_usage: Some(self.cpus_usage),
            cpus_total_time_secs: Some(self.cpus_total_time_secs),
            cpus_pressure_waiting_secs: self.cpus_pressure_waiting_secs,
            context_switches: e.map(|e| e.context_switches),
            involuntary_context_switches: e.map(|e| e.involuntary_context_switches),
            runqueue_waits: e.map(|e| e.runqueue_waits),
            runqueue_wait_secs: e.map(|e| e.runqueue_wait_secs),
            runqueue_latency_p50_secs: e.map(|e| e.runqueue_latency_p50_secs),
            runqueue_latency_p99_secs: e.map(|e| e.runqueue_latency_p99_secs),
            page_faults: e.map(|e| e.page_faults),
            blk_read_bytes: e.map(|e| e.blk_read_bytes),
            blk_write_bytes: e.map(|e| e.blk_write_bytes),
            blk_read_ops: e.map(|e| e.blk_read_ops),
            blk_write_ops: e.map(|e| e.blk_write_ops),
            execs: e.map(|e| e.execs),
            forks: e.map(|e| e.forks),
            threads_created: e.map(|e| e.threads_created),
            process_exits: e.map(|e| e.process_exits),
            oom_kills: e.map(|e| e.oom_kills),
            ..Default::default()
        }
    }
}

/// Master -> agent.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum MasterMessage {
    Registered {
        agent_id: String,
        master_id: String,
        ping_interval_ms: u64,
    },
    Refused {
        reason: String,
    },
    Ping {
        seq: u64,
    },
    /// Boxed: the largest message by far, and queues hold many smaller ones.
    RunTask(Box<RunTask>),
    KillTask {
        framework_id: String,
        task_id: String,
        grace_period_ns: Option<u64>,
    },
    StatusAck {
        framework_id: String,
        task_id: String,
        uuid: [u8; 16],
    },
    /// Kill every task of a framework that is gone, and forget it.
    ShutdownFramework {
        framework_id: String,
    },
    /// A RESERVE, UNRESERVE, CREATE or DESTROY the master applied to this agent's resources:
    /// the agent applies it to its checkpointed total (and creates or deletes the volume).
    Convert(Conversion),
    /// A scheduler's MESSAGE for one of its executors.
    FrameworkMessage {
        framework_id: String,
        executor_id: String,
        data: Vec<u8>,
    },
    /// A scheduler's SHUTDOWN of one of its custom executors.
    ShutdownExecutor {
        framework_id: String,
        executor_id: String,
    },
}

/// What an agent says about itself when it (re-)registers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct Registration {
    pub protocol_version: u32,
    /// Set when re-registering: the id a master gave this agent before.
    pub agent_id: Option<String>,
    pub hostname: String,
    /// The address the agent's HTTP API listens on, as clients should reach it.
    pub http_address: String,
    pub http_port: u16,
    pub resources: Resources,
    pub attributes: Vec<Attribute>,
    /// Corral's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The kernel boot id the agent runs under (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Tasks that are not yet terminal-and-acknowledged (re-registration only).
    pub tasks: Vec<TaskReport>,
    /// What the agent enforces (cgroup controllers found) and what it cannot.
    pub isolation: IsolationReport,
}

/// What an agent's isolation can and cannot enforce on its host.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct IsolationReport {
    /// `strict` or `best-effort` (the agent's `--isolation`).
    pub policy: String,
    /// The cgroup2 directory tasks are created under.
    pub cgroup_root: String,
    /// cgroup v2 controllers available to tasks.
    pub controllers: Vec<String>,
    /// Human-readable limits that are not enforced, e.g. `memory: not enforced (...)`.
    pub not_enforced: Vec<String>,
    /// Whether tasks get their own pid, mount, uts and ipc namespaces.
    pub namespaces: bool,
    /// `host` or `isolated`.
    pub network: String,
    /// Where per-task usage comes from: `ebpf`, `ebpf (not attached: …)` or `cgroup: <why>`.
    pub telemetry: String,
}

impl IsolationReport {
    /// The `isolation` object of the agent's and the master's `/state`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "policy": self.policy,
            "cgroup_root": self.cgroup_root,
            "controllers": self.controllers,
            "not_enforced": self.not_enforced,
            "namespaces": self.namespaces,
            "network": self.network,
            "telemetry": self.telemetry,
        })
    }
}

/// An agent attribute (`rack:r1`, `zone:{a,b}`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Attribute {
    pub name: String,
    pub value: AttributeValue,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum AttributeValue {
    Text(String),
    Scalar(Scalar),
    Ranges(Ranges),
    Set(Vec<String>),
}

/// A task an agent runs, as reported when it re-registers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TaskReport {
    pub framework_id: String,
    pub task: TaskSpec,
    /// Latest state (a `mesos.v1.TaskState` number).
    pub state: i32,
}

/// A task to launch.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct RunTask {
    pub framework: FrameworkRef,
    pub task: TaskSpec,
}

/// The framework a task belongs to, as much as the agent needs.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct FrameworkRef {
    pub id: String,
    pub name: String,
    /// `FrameworkInfo.user`: who tasks run as unless the command names a user.
    pub user: String,
    pub role: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct TaskSpec {
    pub task_id: String,
    pub name: String,
    pub resources: Resources,
    pub command: CommandSpec,
    /// SIGTERM -> SIGKILL grace; the agent's default when unset.
    pub kill_grace_period_ns: Option<u64>,
    /// Set for a task launched in a task group (LAUNCH_GROUP).
    pub group: Option<TaskGroupRef>,
    /// Set for a task run by a custom executor (its `command` is then unused).
    pub executor: Option<ExecutorSpec>,
    /// `TaskInfo.data`, for the executor.
    pub data: Option<Vec<u8>>,
}

/// A custom executor: a program the agent starts in its own container, which then talks to
/// the agent's executor API (`/api/v1/executor`) and runs the tasks given to it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct ExecutorSpec {
    pub executor_id: String,
    pub name: String,
    pub command: CommandSpec,
    pub resources: Resources,
    /// The framework's `ExecutorInfo.data`, handed back in SUBSCRIBED.
    pub data: Option<Vec<u8>>,
}

/// A task group run by the agent's built-in default executor: the group's tasks share the
/// executor's sandbox, and when one ends unsuccessfully the others are killed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct TaskGroupRef {
    pub executor_id: String,
    /// Every task of the group, this one included.
    pub task_ids: Vec<String>,
}

/// A command task: `sh -c value` when `shell`, else `value` exec'd with `arguments` as argv.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct CommandSpec {
    pub shell: bool,
    pub value: Option<String>,
    pub arguments: Vec<String>,
    pub environment: Vec<(String, String)>,
    pub user: Option<String>,
}

/// A task status update from an agent.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct StatusUpdate {
    pub framework_id: String,
    pub task_id: String,
    /// `mesos.v1.TaskState` number.
    pub state: i32,
    /// `mesos.v1.TaskStatus.Reason` number.
    pub reason: Option<i32>,
    /// `mesos.v1.TaskStatus.Source` number.
    pub source: i32,
    pub message: String,
    /// Unique per update; the acknowledgement names it.
    pub uuid: [u8; 16],
    /// Wall clock, nanoseconds since the Unix epoch, when the agent generated it.
    pub timestamp_ns: u64,
    pub container_id: Option<String>,
}

impl StatusUpdate {
    /// The state, if the number is a known `TaskState`.
    pub fn task_state(&self) -> Option<v1::TaskState> {
        v1::TaskState::try_from(self.state).ok()
    }
}
