//! The Corral master.
//!
//! - [`core`]: the sans-I/O state machine (agents, frameworks, offers, tasks, the DRF
//!   allocator, agent liveness, status-update forwarding). Deterministic; time passed in.
//! - [`shell`]: the tokio shell: one actor owning the core, the QUIC agent endpoint (mutual
//!   TLS, rkyv frames) and the HTTP API (Mesos v1 scheduler API, `/state`, `/health`,
//!   `/version`), both on one port number.
#![forbid(unsafe_code)]

pub mod core;
pub mod shell;

pub use shell::clock::mono_ns;
pub use shell::{MasterArgs, Running, logging, run, start};
