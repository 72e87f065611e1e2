//! Corral's protocols, and nothing else: every byte that crosses a process boundary is
//! defined and validated here.
//!
//! - [`proto`]: the agent <-> master protocol, rkyv messages exchanged on one QUIC stream per
//!   agent connection, framed by [`frame`] (a little-endian `u32` length, capped before any
//!   allocation, then an rkyv archive validated with bytecheck before use).
//! - [`mesos`]: the Apache Mesos v1 HTTP API types (prost, generated from `proto/`) and
//!   [`mesos::json`], the Mesos JSON mapping (snake_case, explicit defaults, base64 bytes,
//!   enums by name) that existing Mesos clients speak.
//! - [`recordio`]: RecordIO framing of streamed events.
//! - [`resources`]: the resource model (fixed-point scalars, port ranges, sets) shared by the
//!   master's allocator and the agent, with conversions to and from Mesos `Resource`s.
#![forbid(unsafe_code)]

pub mod frame;
pub mod mesos;
pub mod proto;
pub mod recordio;
pub mod resources;
pub mod tls;

/// The version string Corral reports where Mesos clients look for one. Clients parse it as
/// purely numeric `X.Y.Z` and gate features on it, so it names the Mesos release whose API
/// Corral is compatible with.
pub const MESOS_COMPAT_VERSION: &str = "1.11.0";
