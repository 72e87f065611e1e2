//! The allocator in Mesos' benchmark shapes (`HierarchicalAllocator_BENCHMARK_Test`):
//!
//! - `decline_offers/AGENTSxFRAMEWORKS/round0`: agents of 24 cpus, 4 GB and 1,000 ports, 16 cpus
//!   of each already used by the frameworks round-robin, one role; one allocation cycle offering
//!   every agent's free part (DeclineOffers' first round; /21 is 10k × 1k).
//! - `decline_offers/AGENTSxFRAMEWORKS/round1`: after every round-0 offer was declined with an
//!   endless filter, the next cycle (each agent goes to the next framework in DRF order; the
//!   filtered ones are skipped).
//! - `quota/3000x3000`: LargeAndSmallQuota's shape: 3,000 agents of 2 cpus / 2 GB, 3,000 roles
//!   with one framework each; half the roles guaranteed a whole agent, half half an agent. One
//!   cycle from empty.
//! - `offer_path_record`: one sample into an offer-path histogram (the always-on
//!   instrumentation; target ≤ 10 ns).
//!
//! Set `CORRAL_BENCH_LARGE=1` for the 50,000-agent points (minutes of setup each).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use corral_master::core::Time;
use corral_master::core::allocator::{Allocator, AllocatorConfig, Quota};
use corral_master::core::offer_path::Latency;
use corral_wire::resources::Resources;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};

fn role() -> Vec<String> {
    vec!["*".to_string()]
}

/// DeclineOffers' cluster: `na` agents (24 cpus, 4 GB, ports 31000-32000) with 16 cpus of each
/// used by framework `i % nf`.
fn decline_cluster(na: usize, nf: usize) -> Allocator {
    let mut a = Allocator::new(AllocatorConfig::default());
    for f in 0..nf {
        a.add_framework(&format!("f{f:05}"), &role(), &[], true);
    }
    let total = Resources::parse("cpus:24;mem:4096;ports:[31000-32000]").unwrap();
    let used = Resources::parse("cpus:16").unwrap();
    for i in 0..na {
        a.add_agent(
            &format!("a{i:06}"),
            total.clone(),
            &[(format!("f{:05}", i % nf), "*".to_string(), used.clone())],
        );
    }
    a
}

fn decline_offers(c: &mut Criterion) {
    let mut g = c.benchmark_group("decline_offers");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    let large = std::env::var_os("CORRAL_BENCH_LARGE").is_some();
    let mut agents = vec![1_000usize, 10_000];
    if large {
        agents.push(50_000);
    }
    for na in agents {
        for nf in [1usize, 100, 1_000] {
            let id = format!("{na}x{nf}");
            g.bench_with_input(BenchmarkId::new(&id, "round0"), &(na, nf), |b, &(na, nf)| {
                b.iter_batched(
                    || decline_cluster(na, nf),
                    |mut a| {
                        let offers = a.allocate(Time::from_secs(1));
                        assert_eq!(offers.len(), na, "one offer per agent");
                        (a, offers)
                    },
                    BatchSize::PerIteration,
                )
            });
            g.bench_with_input(BenchmarkId::new(&id, "round1"), &(na, nf), |b, &(na, nf)| {
                b.iter_batched(
                    || {
                        let mut a = decline_cluster(na, nf);
                        let now = Time::from_secs(1);
                        for o in a.allocate(now) {
                            a.recover(
                                now,
                                &o.framework,
                                &o.agent,
                                &o.role,
                                &o.resources,
                                Some(Duration::from_secs(1 << 30)),
                            );
                        }
                        a
                    },
                    |mut a| {
                        let offers = a.allocate(Time::from_secs(2));
                        if nf > 1 {
                            assert_eq!(offers.len(), na, "each agent goes to the next framework");
                        }
                        (a, offers)
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    g.finish();
}

fn quota(c: &mut Criterion) {
    let mut g = c.benchmark_group("quota");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    let (na, nr) = (3_000usize, 3_000usize);
    g.bench_function(BenchmarkId::from_parameter(format!("{na}x{nr}")), |b| {
        b.iter_batched(
            || {
                let mut a = Allocator::new(AllocatorConfig::default());
                let large = Resources::parse("cpus:2;mem:2048").unwrap();
                let small = Resources::parse("cpus:1;mem:1024").unwrap();
                for r in 0..nr {
                    let role = format!("role{r:05}");
                    let g = if r % 2 == 0 { large.clone() } else { small.clone() };
                    a.set_quota(&role, Quota { guarantees: g, limits: Resources::new() });
                    a.add_framework(&format!("f{r:05}"), &[role], &[], true);
                }
                let agent = Resources::parse("cpus:2;mem:2048").unwrap();
                for i in 0..na {
                    a.add_agent(&format!("a{i:06}"), agent.clone(), &[]);
                }
                a
            },
            |mut a| {
                let offers = a.allocate(Time::from_secs(1));
                assert!(offers.len() >= nr, "every role is served: {}", offers.len());
                (a, offers)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn offer_path_record(c: &mut Criterion) {
    let mut l = Latency::default();
    let mut v = 12_345u64;
    c.bench_function("offer_path_record", |b| {
        b.iter(|| {
            // A cheap changing value, so the histogram sees spread samples.
            v = v.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            l.record_ns(black_box(v >> 40));
        })
    });
    black_box(l.count());
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = decline_offers, quota, offer_path_record
}
criterion_main!(benches);
