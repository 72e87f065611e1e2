//! Time as the cores see it: a point passed in by the shell, never read from a clock here.

use std::ops::{Add, Sub};
use std::time::Duration;

/// Nanoseconds since the Unix epoch, from the shell's clock (monotonic and anchored to the
/// wall clock at start, so timestamps read as wall time and timeouts never jump).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    pub fn from_secs(s: u64) -> Time {
        Time(s * 1_000_000_000)
    }

    /// Seconds as a double, as Mesos writes timestamps.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    pub fn saturating_sub(self, other: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(other.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}
