//! The shell's one clock source: monotonic, anchored to the wall clock at start, so the core
//! gets timestamps that read as wall time and timeouts that never jump.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::Time;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_wall_ns: u64,
}

impl Clock {
    #[allow(clippy::disallowed_methods)] // The shell's clock: the one place time is read.
    pub fn new() -> Clock {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock { start: Instant::now(), start_wall_ns: wall.as_nanos() as u64 }
    }

    pub fn now(&self) -> Time {
        Time(self.start_wall_ns + self.start.elapsed().as_nanos() as u64)
    }

    /// The tokio instant at which the core's `t` falls.
    pub fn instant_at(&self, t: Time) -> tokio::time::Instant {
        let offset = std::time::Duration::from_nanos(t.0.saturating_sub(self.start_wall_ns));
        tokio::time::Instant::from_std(self.start + offset)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Monotonic nanoseconds since the first call: the core's stopwatch for timing its own work
/// (`MasterConfig::stopwatch`), never for decisions.
#[allow(clippy::disallowed_methods)] // instrumentation: the core's decisions never see it
pub fn mono_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
