//! The error [`crate::run`] returns: what stopped the agent from starting, or the master's
//! refusal. Errors of a single task never end up here: they become status updates.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use crate::cgroup::CgroupError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid --{flag}: {why}")]
    Flag { flag: &'static str, why: String },
    #[error("tls: {0}")]
    Tls(#[from] corral_wire::tls::TlsError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Isolation(#[from] crate::isolation::IsolationError),
    #[error("cannot prepare the work dir {path}: {source}")]
    WorkDir { path: PathBuf, source: std::io::Error },
    #[error("cannot listen for http on {addr}: {source}")]
    HttpBind { addr: String, source: std::io::Error },
    #[error("cannot install the {what} signal handler: {source}")]
    Signals { what: &'static str, source: std::io::Error },
    #[error("cannot find this executable (pass --launcher): {0}")]
    Launcher(std::io::Error),
    #[error(transparent)]
    Checkpoint(#[from] crate::volumes::CheckpointError),
    #[error("cannot recover (start with --recover non-strict to skip what cannot be read): {0}")]
    Recover(#[from] crate::checkpoint::CheckpointError),
    #[error("cannot start the task output thread: {0}")]
    Output(std::io::Error),
    #[error("the master refused this agent: {reason}")]
    Refused { reason: String },
}
