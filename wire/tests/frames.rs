//! Property tests of the agent <-> master framing: every message round-trips; truncated,
//! corrupted and oversized records are refused with an error, never a panic.

use corral_wire::frame::{self, FrameError, FrameReader};
use corral_wire::proto::*;
use corral_wire::resources::{Ranges, Resources, Scalar};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._/\u{e9}-]{0,24}"
}

fn resources() -> impl Strategy<Value = Resources> {
    (0.0f64..64.0, 0u32..65536, proptest::collection::vec((1u64..60000, 0u64..100), 0..4)).prop_map(
        |(cpus, mem, ports)| {
            let ranges: Vec<(u64, u64)> = ports.into_iter().map(|(b, l)| (b, b + l)).collect();
            Resources::new()
                .with_scalar("cpus", cpus)
                .with_scalar("mem", mem as f64)
                .with_ranges("ports", &ranges)
        },
    )
}

fn task_spec() -> impl Strategy<Value = TaskSpec> {
    (
        text(),
        text(),
        resources(),
        any::<bool>(),
        proptest::option::of(text()),
        proptest::collection::vec(text(), 0..4),
        proptest::collection::vec((text(), text()), 0..3),
        proptest::option::of(text()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(task_id, name, resources, shell, value, arguments, environment, user, grace)| {
                TaskSpec {
                    task_id,
                    name,
                    resources,
                    command: CommandSpec { shell, value, arguments, environment, user },
                    kill_grace_period_ns: grace,
                    group: None,
                    executor: None,
                    data: None,
                }
            },
        )
}

fn status_update() -> impl Strategy<Value = StatusUpdate> {
    (
        text(),
        text(),
        0i32..14,
        proptest::option::of(0i32..35),
        0i32..3,
        text(),
        any::<[u8; 16]>(),
        any::<u64>(),
        proptest::option::of(text()),
    )
        .prop_map(
            |(
                framework_id,
                task_id,
                state,
                reason,
                source,
                message,
                uuid,
                timestamp_ns,
                container_id,
            )| {
                StatusUpdate {
                    framework_id,
                    task_id,
                    state,
                    reason,
                    source,
                    message,
                    uuid,
                    timestamp_ns,
                    container_id,
                }
            },
        )
}

fn task_usage() -> impl Strategy<Value = TaskUsage> {
    (text(), text(), proptest::option::of(text()), any::<u64>(), 0.0f64..64.0, any::<bool>())
        .prop_map(|(framework_id, task_id, executor_id, n, cpu, ebpf)| TaskUsage {
            framework_id,
            task_id,
            executor_id,
            timestamp: 1.7e9,
            cpus_usage: cpu,
            cpus_total_time_secs: cpu * 10.0,
            mem_rss_bytes: Some(n),
            processes: (n % 100) as u32,
            ebpf: ebpf.then(|| EbpfUsage {
                context_switches: n,
                forks: n / 2,
                ..EbpfUsage::default()
            }),
            ..TaskUsage::default()
        })
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        any::<u64>().prop_map(|seq| AgentMessage::Pong { seq }),
        status_update().prop_map(AgentMessage::StatusUpdate),
        proptest::collection::vec(task_usage(), 0..4).prop_map(AgentMessage::Usage),
        (
            proptest::option::of(text()),
            text(),
            resources(),
            proptest::collection::vec((text(), task_spec(), 0i32..14), 0..3),
            proptest::collection::vec(text(), 0..3)
        )
            .prop_map(|(agent_id, hostname, resources, tasks, not_enforced)| {
                AgentMessage::Register(Registration {
                    protocol_version: PROTOCOL_VERSION,
                    agent_id,
                    hostname: hostname.clone(),
                    http_address: "127.0.0.1".into(),
                    http_port: 5051,
                    resources,
                    attributes: vec![
                        Attribute { name: "rack".into(), value: AttributeValue::Text(hostname) },
                        Attribute { name: "n".into(), value: AttributeValue::Scalar(Scalar(1500)) },
                        Attribute {
                            name: "r".into(),
                            value: AttributeValue::Ranges(Ranges::new([(1, 2)])),
                        },
                    ],
                    version: "0.1.0".into(),
                    boot_id: "b".into(),
                    tasks: tasks
                        .into_iter()
                        .map(|(framework_id, task, state)| TaskReport { framework_id, task, state })
                        .collect(),
                    isolation: IsolationReport {
                        policy: "best-effort".into(),
                        cgroup_root: "/sys/fs/cgroup".into(),
                        controllers: vec!["cpu".into()],
                        not_enforced,
                        namespaces: true,
                        network: "host".into(),
                        telemetry: "ebpf".into(),
                    },
                })
            }),
    ]
}

fn master_message() -> impl Strategy<Value = MasterMessage> {
    prop_oneof![
        any::<u64>().prop_map(|seq| MasterMessage::Ping { seq }),
        (text(), text(), any::<u64>()).prop_map(|(agent_id, master_id, ping_interval_ms)| {
            MasterMessage::Registered { agent_id, master_id, ping_interval_ms }
        }),
        text().prop_map(|reason| MasterMessage::Refused { reason }),
        (text(), text(), text(), task_spec()).prop_map(|(id, name, user, task)| {
            MasterMessage::RunTask(Box::new(RunTask {
                framework: FrameworkRef { id, name, user, role: "*".into() },
                task,
            }))
        }),
        (text(), text(), proptest::option::of(any::<u64>())).prop_map(
            |(framework_id, task_id, grace_period_ns)| {
                MasterMessage::KillTask { framework_id, task_id, grace_period_ns }
            }
        ),
        (text(), text(), any::<[u8; 16]>()).prop_map(|(framework_id, task_id, uuid)| {
            MasterMessage::StatusAck { framework_id, task_id, uuid }
        }),
        text().prop_map(|framework_id| MasterMessage::ShutdownFramework { framework_id }),
    ]
}

fn read_all_agent(bytes: &[u8], max: usize) -> Result<Vec<AgentMessage>, FrameError> {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        let mut r = bytes;
        let mut reader = FrameReader::new(max);
        let mut out = Vec::new();
        while let Some(m) = reader.next_agent(&mut r).await? {
            out.push(m);
        }
        Ok(out)
    })
}

/// A stream that hands out at most `step` bytes per read, as a network does.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl tokio::io::AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        std::task::Poll::Ready(Ok(()))
    }
}

/// A burst grows the read buffer; once it drains after a small read, the memory goes back
/// (a master holds one reader per agent connection), and reading goes on as before.
#[test]
fn the_read_buffer_shrinks_after_a_burst() {
    let ping = |seq| frame::encode_agent(&AgentMessage::Pong { seq });
    let burst: Vec<u8> = (0..5_000).flat_map(ping).collect();
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        let mut reader = FrameReader::new(frame::DEFAULT_MAX_FRAME);
        let mut r = Trickle { data: &burst, step: usize::MAX };
        let mut grown = 0;
        for seq in 0..5_000 {
            let m = reader.next_agent(&mut r).await.unwrap().unwrap();
            assert_eq!(m, AgentMessage::Pong { seq });
            grown = grown.max(reader.buffer_capacity());
        }
        assert!(grown >= 32 << 10, "a burst reads in large chunks: {grown}");
        let one = ping(7);
        let mut r = Trickle { data: &one, step: usize::MAX };
        assert_eq!(reader.next_agent(&mut r).await.unwrap(), Some(AgentMessage::Pong { seq: 7 }));
        assert!(reader.buffer_capacity() <= 1 << 10, "{}", reader.buffer_capacity());
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Records split across reads anywhere, or many per read, come out whole and in order;
    /// `has_buffered` says when the next one needs no read.
    #[test]
    fn records_survive_any_read_chunking(
        msgs in proptest::collection::vec(agent_message(), 1..40),
        step in 1usize..5000,
    ) {
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(frame::encode_agent(m));
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let got = rt.block_on(async {
            let mut r = Trickle { data: &bytes, step };
            let mut reader = FrameReader::new(frame::DEFAULT_MAX_FRAME);
            let mut out = Vec::new();
            while let Some(m) = reader.next_agent(&mut r).await.unwrap() {
                out.push(m);
                if reader.has_buffered() {
                    // The next record is whole in the buffer: an empty stream must do.
                    let mut empty: &[u8] = &[];
                    out.push(reader.next_agent(&mut empty).await.unwrap().unwrap());
                }
            }
            out
        });
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn agent_messages_round_trip(msgs in proptest::collection::vec(agent_message(), 1..5)) {
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(frame::encode_agent(m));
        }
        prop_assert_eq!(read_all_agent(&bytes, frame::DEFAULT_MAX_FRAME).unwrap(), msgs);
    }

    #[test]
    fn master_messages_round_trip(m in master_message()) {
        let bytes = frame::encode_master(&m);
        prop_assert_eq!(frame::decode_master(&bytes[4..]).unwrap(), m);
    }

    #[test]
    fn truncated_records_are_refused(m in agent_message(), cut in any::<prop::sample::Index>()) {
        let bytes = frame::encode_agent(&m);
        let cut = 1 + cut.index(bytes.len() - 1);
        let err = read_all_agent(&bytes[..cut], frame::DEFAULT_MAX_FRAME).unwrap_err();
        prop_assert!(matches!(err, FrameError::Truncated), "{err}");
    }

    #[test]
    fn corrupted_records_never_panic(m in agent_message(), flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8)) {
        let mut bytes = frame::encode_agent(&m);
        for (at, x) in flips {
            let i = 4 + at.index(bytes.len() - 4);
            bytes[i] ^= x;
        }
        // Either rejected, or (when the flip landed in string bytes or padding) a message that
        // still validates: never a panic, never an out-of-bounds read.
        let _ = read_all_agent(&bytes, frame::DEFAULT_MAX_FRAME);
        let _ = frame::decode_agent(&bytes[4..]);
    }

    #[test]
    fn garbage_is_refused(garbage in proptest::collection::vec(any::<u8>(), 1..512)) {
        let _ = frame::decode_agent(&garbage);
        let _ = frame::decode_master(&garbage);
    }
}

#[test]
fn oversized_record_is_refused_before_allocation() {
    let mut bytes = (u32::MAX).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 16]);
    let err = read_all_agent(&bytes, frame::DEFAULT_MAX_FRAME).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize), "{err}");
}

#[test]
fn empty_record_is_refused() {
    let err = read_all_agent(&[0, 0, 0, 0], 1024).unwrap_err();
    assert!(matches!(err, FrameError::Empty));
}

#[test]
fn a_flipped_discriminant_is_refused() {
    let bytes = frame::encode_agent(&AgentMessage::Pong { seq: 7 });
    // rkyv puts the root at the end of the buffer: the enum tag is there. Try every byte of
    // the payload set to 0xff and require that at least one is caught by validation.
    let rejected = (4..bytes.len())
        .filter(|&i| {
            let mut b = bytes.clone();
            b[i] = 0xff;
            frame::decode_agent(&b[4..]).is_err()
        })
        .count();
    assert!(rejected > 0);
}
