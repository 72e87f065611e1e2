//! The master's `/metrics`: Prometheus text (OpenMetrics) of its counters, cluster gauges and
//! the offer-path histograms, per framework and role, with the allocation run's.
//!
//! The actor takes a [`Snapshot`] (cumulative bucket counts computed from the hdrhistograms'
//! recorded values, so the cost grows with distinct values seen, not with the histogram's
//! size); encoding happens outside the actor.
#![forbid(unsafe_code)]

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::core::offer_path::{Latency, stage_help};
use crate::core::{AgentState, Master};

/// Bucket bounds (seconds) of every latency histogram.
const BOUNDS: [f64; 20] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// One histogram ready to encode: per-bucket (not cumulative) counts, the last for +Inf.
#[derive(Debug, Clone)]
struct Hist {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Hist {
    fn of(l: &Latency) -> Hist {
        let mut counts = [0u64; BOUNDS.len() + 1];
        let mut total = 0;
        for (value_us, n) in l.recorded() {
            let secs = value_us as f64 / 1e6;
            let i = BOUNDS.partition_point(|b| *b < secs);
            counts[i] += n;
            total += n;
        }
        let mut buckets: Vec<(f64, u64)> = BOUNDS.iter().copied().zip(counts).collect();
        buckets.push((f64::INFINITY, counts[BOUNDS.len()]));
        Hist { sum: l.sum().as_secs_f64(), count: total, buckets }
    }
}

/// What `/metrics` shows, taken inside the actor.
#[derive(Debug, Clone)]
pub struct Snapshot {
    counters: Vec<(&'static str, &'static str, u64)>,
    gauges: Vec<(&'static str, &'static str, f64)>,
    allocation_run: Hist,
    /// (framework, role, stage, histogram).
    offer_path: Vec<(String, String, &'static str, Hist)>,
}

impl Snapshot {
    pub fn take(m: &Master) -> Snapshot {
        let c = &m.metrics;
        let counters = vec![
            ("corral_master_offers_sent", "Offers sent to frameworks", c.offers_sent),
            ("corral_master_offers_declined", "Offers declined", c.offers_declined),
            ("corral_master_offers_accepted", "Offers accepted", c.offers_accepted),
            ("corral_master_offers_rescinded", "Offers rescinded", c.offers_rescinded),
            ("corral_master_tasks_launched", "Tasks launched", c.tasks_launched),
            (
                "corral_master_status_updates",
                "Valid status updates received",
                c.valid_status_updates,
            ),
            ("corral_master_allocation_runs", "Allocation passes", c.allocation_runs),
            ("corral_master_agent_registrations", "Agent registrations", c.agent_registrations),
            (
                "corral_master_agent_reregistrations",
                "Agent re-registrations",
                c.agent_reregistrations,
            ),
        ];
        let agents = m.agents();
        let connected = agents.values().filter(|a| a.state == AgentState::Connected).count();
        let tasks: usize = m.frameworks().values().map(|f| f.tasks.len()).sum();
        let gauges = vec![
            ("corral_master_agents_connected", "Agents connected", connected as f64),
            ("corral_master_agents", "Agents known (any state)", agents.len() as f64),
            (
                "corral_master_frameworks",
                "Frameworks (subscribed or recovered)",
                m.frameworks().len() as f64,
            ),
            ("corral_master_tasks", "Live tasks", tasks as f64),
            (
                "corral_master_outstanding_offers",
                "Offers sent and not yet answered",
                m.offers().len() as f64,
            ),
        ];
        let mut offer_path = Vec::new();
        // Completed frameworks too (at most --max-completed-frameworks of them).
        for f in m.frameworks().values().chain(m.completed_frameworks().iter()) {
            for (role, stages) in &f.offer_path {
                for (stage, l) in stages.named() {
                    if l.count() > 0 {
                        offer_path.push((f.id.clone(), role.clone(), stage, Hist::of(l)));
                    }
                }
            }
        }
        Snapshot { counters, gauges, allocation_run: Hist::of(&m.allocation_run), offer_path }
    }

    /// The text body.
    pub fn encode(self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!("encoding /metrics: {e}");
        }
        out
    }
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, help, v) in &self.counters {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(*v).encode(m)?;
        }
        for (name, help, v) in &self.gauges {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(*v).encode(m)?;
        }
        let h = &self.allocation_run;
        let mut m = encoder.encode_descriptor(
            "corral_master_allocation_run_seconds",
            "How long one allocation pass took",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        for stage in ["offered", "accepted", "declined", "running"] {
            let name = format!("corral_offer_{stage}_latency_seconds");
            let mut fam =
                encoder.encode_descriptor(&name, stage_help(stage), None, MetricType::Histogram)?;
            for (fw, role, s, h) in &self.offer_path {
                if *s != stage {
                    continue;
                }
                let labels = [("framework_id", fw.as_str()), ("role", role.as_str())];
                fam.encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_sample_once() {
        let mut l = Latency::default();
        for us in [40u64, 90, 3_000, 3_000, 700_000, 400_000_000] {
            l.record_ns(us * 1000);
        }
        let h = Hist::of(&l);
        assert_eq!(h.count, 6);
        assert_eq!(h.buckets.iter().map(|b| b.1).sum::<u64>(), 6);
        assert_eq!(h.buckets[0], (0.00005, 1), "40 µs");
        assert_eq!(h.buckets[1], (0.0001, 1), "90 µs");
        assert_eq!(h.buckets.last().map(|b| b.1), Some(1), "400 s goes to +Inf");
    }
}
