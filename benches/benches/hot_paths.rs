//! Micro-benchmarks of the offer path's hot spots: one allocation pass, an OFFERS event's
//! JSON encoding (what every scheduler receives), and an agent frame's encode + validate +
//! decode (what every status update costs the master).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use corral_master::core::Time;
use corral_master::core::allocator::{Allocator, AllocatorConfig};
use corral_wire::frame;
use corral_wire::mesos::v1::scheduler::{Event, event};
use corral_wire::mesos::v1::{self};
use corral_wire::proto::{AgentMessage, StatusUpdate};
use corral_wire::resources::Resources;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn allocator(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocate_all_agents");
    g.sample_size(20);
    for (agents, frameworks) in [(100usize, 10usize), (1_000, 100), (10_000, 100), (10_000, 1_000)]
    {
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{agents}x{frameworks}")),
            &(agents, frameworks),
            |b, &(na, nf)| {
                b.iter_batched(
                    || {
                        let mut a = Allocator::new(AllocatorConfig::default());
                        for f in 0..nf {
                            a.add_framework(
                                &format!("f{f:04}"),
                                &[format!("role{}", f % 10)],
                                &[],
                                true,
                            );
                        }
                        for i in 0..na {
                            a.add_agent(
                                &format!("a{i:06}"),
                                Resources::parse("cpus:16;mem:65536;ports:[31000-32000]").unwrap(),
                                &[],
                            );
                        }
                        a
                    },
                    |mut a| black_box(a.allocate(Time::from_secs(1))).len(),
                    criterion::BatchSize::LargeInput,
                )
            },
        );
    }
    g.finish();
}

fn offers_event(n: usize) -> Event {
    let offers = (0..n)
        .map(|i| v1::Offer {
            id: v1::OfferId { value: format!("5f7c1c9e-1b1e-4c7e-9d3b-2f0a6f1e8c11-O{i}") },
            framework_id: v1::FrameworkId {
                value: "5f7c1c9e-1b1e-4c7e-9d3b-2f0a6f1e8c11-0000".into(),
            },
            agent_id: v1::AgentId { value: format!("5f7c1c9e-1b1e-4c7e-9d3b-2f0a6f1e8c11-S{i}") },
            hostname: format!("host{i}"),
            resources: Resources::parse("cpus:16;mem:65536;disk:100000;ports:[31000-32000]")
                .unwrap()
                .to_mesos(Some("*")),
            allocation_info: Some(v1::resource::AllocationInfo { role: Some("*".into()) }),
            ..Default::default()
        })
        .collect();
    Event {
        r#type: Some(event::Type::Offers as i32),
        offers: Some(event::Offers { offers }),
        ..Default::default()
    }
}

fn json(c: &mut Criterion) {
    let mut g = c.benchmark_group("offers_event_to_json");
    for n in [1usize, 100] {
        let ev = offers_event(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &ev, |b, ev| {
            b.iter(|| black_box(corral_wire::mesos::json::to_string(ev)).len())
        });
    }
    g.finish();
    let body = br#"{"type":"ACCEPT","framework_id":{"value":"f-0000"},"accept":{"offer_ids":[{"value":"m-O1"}],"operations":[{"type":"LAUNCH","launch":{"task_infos":[{"name":"t","task_id":{"value":"t1"},"agent_id":{"value":"m-S0"},"resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":0.1}},{"name":"mem","type":"SCALAR","scalar":{"value":32}}],"command":{"shell":true,"value":"echo hello"}}]}}],"filters":{"refuse_seconds":5}}}"#;
    c.bench_function("accept_call_from_json", |b| {
        b.iter(|| {
            black_box(corral_wire::mesos::json::from_slice::<v1::scheduler::Call>(body).unwrap())
        })
    });
}

fn frames(c: &mut Criterion) {
    let msg = AgentMessage::StatusUpdate(StatusUpdate {
        framework_id: "5f7c1c9e-1b1e-4c7e-9d3b-2f0a6f1e8c11-0000".into(),
        task_id: "task-000123".into(),
        state: v1::TaskState::TaskRunning as i32,
        reason: None,
        source: 2,
        message: String::new(),
        uuid: [0x42; 16],
        timestamp_ns: 1_700_000_000_000_000_000,
        container_id: Some("0b5c6f8e-9a57-4b1e-8f0e-2d6c1f4a9b77".into()),
    });
    let bytes = frame::encode_agent(&msg);
    c.bench_function("status_update_encode", |b| {
        b.iter(|| black_box(frame::encode_agent(&msg)).len())
    });
    c.bench_function("status_update_validate_decode", |b| {
        b.iter(|| black_box(frame::decode_agent(&bytes[4..]).unwrap()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = allocator, json, frames
}
criterion_main!(benches);
