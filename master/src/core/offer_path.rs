//! Offer-path instrumentation: always-on latency histograms of the four stages a performance
//! engineer profiles, per framework and role, plus the allocation run itself.
//!
//! - `offered`: resources became available (freed, added, or a framework became eligible for
//!   them) → an offer of them was emitted;
//! - `accepted` / `declined`: offer emitted → the framework accepted or declined it;
//! - `running`: accept → the task's first TASK_RUNNING;
//! - allocation run: how long one allocation pass took (CPU, wall-clock around the pass).
//!
//! Histograms are hdrhistogram with microsecond units from 1 µs to one hour at two significant
//! digits (≤ 1% relative error); recording is a bounds check and an array increment. They are
//! created on a role's first sample, so frameworks that never get offers cost nothing. Time is
//! passed in as everywhere in the core; the allocation run's duration comes from the shell's
//! stopwatch ([`super::MasterConfig::stopwatch`]).
#![forbid(unsafe_code)]

use std::time::Duration;

use hdrhistogram::Histogram;

use super::time::Time;

/// Highest value tracked: one hour in µs (longer samples are clamped).
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram (µs resolution).
#[derive(Debug, Clone)]
pub struct Latency {
    /// u32 counts: four billion samples per ±1% bucket is plenty, and half the memory.
    hist: Histogram<u32>,
    sum_us: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, MAX_US, 2)
                .expect("constant bounds are valid for hdrhistogram"),
            sum_us: 0,
        }
    }
}

impl Latency {
    /// Records one sample of `ns` nanoseconds.
    #[inline]
    pub fn record_ns(&mut self, ns: u64) {
        let us = (ns / 1000).clamp(1, MAX_US);
        self.hist.saturating_record(us);
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Records `to - from` (nothing when `to` is earlier).
    #[inline]
    pub fn record_between(&mut self, from: Time, to: Time) {
        if to.0 >= from.0 {
            self.record_ns(to.0 - from.0);
        }
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Sum of all samples.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_us)
    }

    /// The value at quantile `q` (0..=1); zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.hist.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.hist.value_at_quantile(q))
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.hist.max())
    }

    /// How many samples are at most `bound` (for Prometheus' cumulative buckets).
    pub fn count_at_most(&self, bound: Duration) -> u64 {
        let us = (bound.as_micros() as u64).min(MAX_US);
        self.hist.count_between(0, us)
    }

    /// Each distinct recorded value (µs, the top of its ±1% bucket) with its count.
    pub fn recorded(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.hist.iter_recorded().map(|v| (v.value_iterated_to(), u64::from(v.count_at_value())))
    }

    /// Adds another histogram's samples to this one.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds and precision on both sides: `add` cannot fail.
        let _ = self.hist.add(&other.hist);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// Removes the samples of `earlier`, a copy of this histogram taken before: what remains
    /// is what was recorded since (its quantiles and maximum included).
    pub fn subtract(&mut self, earlier: &Latency) {
        // Same bounds; `earlier`'s counts are a subset of ours, so it cannot underflow.
        let _ = self.hist.subtract(&earlier.hist);
        self.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
    }
}

/// The offer path of one (framework, role).
#[derive(Debug, Clone, Default)]
pub struct Stages {
    pub offered: Latency,
    pub accepted: Latency,
    pub declined: Latency,
    pub running: Latency,
}

impl Stages {
    /// Each stage with its name, as exported.
    pub fn named(&self) -> [(&'static str, &Latency); 4] {
        [
            ("offered", &self.offered),
            ("accepted", &self.accepted),
            ("declined", &self.declined),
            ("running", &self.running),
        ]
    }

    pub fn merge(&mut self, o: &Stages) {
        self.offered.merge(&o.offered);
        self.accepted.merge(&o.accepted);
        self.declined.merge(&o.declined);
        self.running.merge(&o.running);
    }

    /// Removes the samples of `earlier` (see [`Latency::subtract`]).
    pub fn subtract(&mut self, earlier: &Stages) {
        self.offered.subtract(&earlier.offered);
        self.accepted.subtract(&earlier.accepted);
        self.declined.subtract(&earlier.declined);
        self.running.subtract(&earlier.running);
    }
}

/// What each stage measures, for help texts.
pub fn stage_help(stage: &str) -> &'static str {
    match stage {
        "offered" => {
            "Resources available (freed, added, or newly eligible) until an offer of them was sent"
        }
        "accepted" => "Offer sent until the framework accepted it",
        "declined" => "Offer sent until the framework declined it",
        "running" => "ACCEPT until the task's first TASK_RUNNING",
        _ => "",
    }
}

/// A stopwatch that always reads zero (cores under test, simulations).
pub fn no_stopwatch() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_sums_and_buckets() {
        let mut l = Latency::default();
        assert_eq!(l.quantile(0.99), Duration::ZERO);
        for ms in 1..=100u64 {
            l.record_ns(ms * 1_000_000);
        }
        assert_eq!(l.count(), 100);
        assert_eq!(l.sum(), Duration::from_millis(5050));
        let p50 = l.quantile(0.5).as_secs_f64();
        assert!((0.0495..=0.0505).contains(&p50), "{p50}");
        let p99 = l.quantile(0.99).as_secs_f64();
        assert!((0.098..=0.1).contains(&p99), "{p99}");
        assert_eq!(l.count_at_most(Duration::from_millis(10)), 10);
        assert!(l.max() >= Duration::from_millis(99));
        // Below 1 µs counts as 1 µs; beyond an hour is clamped, never lost.
        l.record_ns(10);
        l.record_ns(u64::MAX);
        assert_eq!(l.count(), 102);
        let mut other = Latency::default();
        other.record_between(Time(1_000), Time(2_001_000));
        other.record_between(Time(5), Time(1));
        l.merge(&other);
        assert_eq!(l.count(), 103);
    }

    #[test]
    fn subtracting_an_earlier_copy_leaves_what_came_since() {
        let mut l = Latency::default();
        for _ in 0..1000 {
            l.record_ns(50_000_000);
        }
        let earlier = l.clone();
        for _ in 0..10 {
            l.record_ns(1_000);
        }
        l.subtract(&earlier);
        assert_eq!(l.count(), 10);
        assert_eq!(l.quantile(0.99), Duration::from_micros(1));
        assert_eq!(l.sum(), Duration::from_micros(10));
    }
}
