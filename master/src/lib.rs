//! The Corral master.
//!
//! - [`core`]: the sans-I/O state machine (agents, frameworks, offers, tasks, the DRF
//!   allocator, agent liveness, status-update forwarding). Deterministic; time passed in.
#![forbid(unsafe_code)]

pub mod core;
