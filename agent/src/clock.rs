//! The shell's one clock source: the only place in the agent that reads the time.
#![forbid(unsafe_code)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::Now;

/// Both clocks, read together.
#[allow(clippy::disallowed_methods)] // the shell's single clock source; the core gets time from here
pub fn now() -> Now {
    let wall_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Now { mono: Instant::now(), wall_ns }
}
