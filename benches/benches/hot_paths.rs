//! Micro-benchmarks of the offer path's hot spots: one allocation pass, an OFFERS event's
//! JSON encoding (what every scheduler receives), an agent frame's encode + validate +
//! decode, and one status update through the master core and back (update in, UPDATE event
//! out, ACKNOWLEDGE in, StatusAck out).

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

/// The status-update path inside the master core, at 1,000 running tasks: a TASK_RUNNING
/// update from the agent (a fresh uuid each time), the UPDATE event it becomes, the
/// framework's ACKNOWLEDGE, and the StatusAck the agent gets. No I/O: `corral bench updates`
/// measures the same path over QUIC.
fn status_path(c: &mut Criterion) {
    use corral_master::core::{Command, MasterConfig};
    use corral_tools::sim::{Behaviour, Sim};
    use corral_wire::mesos::v1::scheduler::{Call, call};
    use corral_wire::proto::MasterMessage;

    let tasks = 1_000u64;
    let mut sim = Sim::new(MasterConfig::default());
    sim.add_agents(1, &Resources::parse("cpus:1000;mem:1000000").unwrap());
    sim.add_framework(
        "bench",
        "*",
        Behaviour::Launch {
            task: Resources::parse("cpus:0.5;mem:1").unwrap(),
            duration: Duration::from_secs(1_000_000),
            jitter: Duration::ZERO,
            per_offer: None,
            limit: Some(tasks),
        },
    );
    sim.run(Duration::from_secs(5), |s| s.counts(0).running >= tasks);
    assert_eq!(sim.counts(0).running, tasks, "{:?}", sim.failure);
    let now = sim.now();
    let master = &mut sim.master;
    while master.poll_command().is_some() {}
    let agent_id = master.agents().keys().next().unwrap().clone();
    let framework_id = master.frameworks().keys().next().unwrap().clone();
    let stream = master.frameworks()[&framework_id].stream.as_ref().unwrap().uuid.clone();
    let mut n = 0u64;
    c.bench_function("status_update_through_master_core", |b| {
        b.iter(|| {
            n += 1;
            let task_id = format!("f0-t{}", 1 + n % tasks);
            let mut uuid = [0u8; 16];
            uuid[..8].copy_from_slice(&n.to_le_bytes());
            master.agent_message(
                now,
                1,
                AgentMessage::StatusUpdate(StatusUpdate {
                    framework_id: framework_id.clone(),
                    task_id: task_id.clone(),
                    state: v1::TaskState::TaskRunning as i32,
                    reason: None,
                    source: 2,
                    message: String::new(),
                    uuid,
                    timestamp_ns: now.0,
                    container_id: None,
                }),
            );
            let mut event = None;
            while let Some(cmd) = master.poll_command() {
                if let Command::SendEvent { event: e, .. } = cmd {
                    event = Some(e);
                }
            }
            let status = event.and_then(|e| e.update).unwrap().status;
            let ack = Call {
                framework_id: Some(v1::FrameworkId { value: framework_id.clone() }),
                r#type: Some(call::Type::Acknowledge as i32),
                acknowledge: Some(call::Acknowledge {
                    agent_id: v1::AgentId { value: agent_id.clone() },
                    task_id: status.task_id,
                    uuid: status.uuid.unwrap(),
                }),
                ..Default::default()
            };
            master.call(now, Some(&stream), ack).unwrap();
            let mut acked = false;
            while let Some(cmd) = master.poll_command() {
                if let Command::SendAgent { msg: MasterMessage::StatusAck { .. }, .. } = cmd {
                    acked = true;
                }
            }
            assert!(acked);
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = allocator, json, frames, status_path
}
criterion_main!(benches);
