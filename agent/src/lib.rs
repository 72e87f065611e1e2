//! The Corral agent: runs on every machine, registers with the master over QUIC, runs command
//! tasks each in its own cgroup v2 directory, and reports their status reliably.
//!
//! How data flows:
//!
//! - [`core`] is the whole of the agent's decision making, sans-I/O: the task table, the
//!   per-task status-update queues with retry and backoff, acknowledgement matching and the
//!   kill grace timers. Events go in with the time (`handle(now, event)`), commands come out
//!   (`poll_command()`), and `next_timeout()` says when to call back. It reads no clock,
//!   touches no file and owns no socket, so it is unit-tested with a fake clock.
//! - The shell ([`run`], in `shell`) owns everything else and only translates: the QUIC
//!   connection to the master (`conn`), the per-container monitors that prepare a sandbox,
//!   create the cgroup and spawn the per-task init (`launch`), signals, and the HTTP API
//!   (`http`), which reads the core's task table.
//! - The per-task init (`shim`) is the process between the agent and a task: pid 1 of the
//!   container's namespaces, it sets up the container's mounts and hostname, starts the task,
//!   reaps orphans, forwards kill signals, and reports the task's exit both over a pipe and in
//!   a file, so it outlives an agent that dies. The launcher (`launcher`, `corral __launcher`)
//!   is a small process the agent starts once; it forks every init straight into the
//!   container's cgroup and namespaces, as a child of the agent. Without it the agent starts
//!   an init itself (`corral __task-init`) without forking its own memory.
//! - `telemetry` samples every container's usage each second, from the eBPF programs of
//!   `corral-agent-ebpf` where they load and from cgroup files otherwise, and serves it as
//!   `/metrics`, `/monitor/statistics` and usage reports to the master.
//! - `isolation` decides what is enforced (controllers enabled down the agent's subtree, the
//!   strict or best-effort policy, per-task limits, OOM detection); `cgroup` is the small
//!   cgroup v2 module (rooted at a configurable cgroup2 mount), `host` detects what the machine
//!   offers, `paths` owns the on-disk layout, and `sys` holds the crate's only `unsafe` code
//!   (the clone calls, the hooks between fork and exec, the container's mounts).
#![deny(unsafe_code)]

mod args;
pub mod cgroup;
pub mod checkpoint;
mod clock;
mod conn;
pub mod core;
mod error;
mod host;
mod http;
pub mod isolation;
mod launch;
mod launcher;
pub mod output;
mod paths;
mod shell;
mod shim;
#[allow(unsafe_code)]
mod sys;
mod telemetry;
mod volumes;

pub use args::AgentArgs;
pub use error::AgentError;
pub use launcher::{LAUNCHER_ARG, launcher_main};
pub use shell::{run, run_until};
pub use shim::{STDERR_HELD_FD, STDOUT_HELD_FD, task_init_main};

/// `argv[1]` of the per-task init: the `corral` binary calls [`task_init_main`] when it sees
/// it, before it starts any runtime.
pub const TASK_INIT_ARG: &str = "__task-init";
