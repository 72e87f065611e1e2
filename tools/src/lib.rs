//! Library side of the `corral` binary: a Rust client of the master's HTTP API ([`client`]),
//! shared by the CLI commands, the integration tests and the bench driver.
#![forbid(unsafe_code)]

pub mod client;
pub mod sim;
pub mod sim_quic;
