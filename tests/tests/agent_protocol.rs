//! The agent endpoint under hostile peers: a peer without a client certificate (or with one
//! from another CA) is refused at the handshake; a peer that sends a malformed record is
//! dropped while the master keeps serving the real agent.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::time::Duration;

use corral_tests::{Cluster, ClusterOptions, require_agent_host};
use corral_wire::frame;
use corral_wire::proto::{AgentMessage, MasterMessage, PROTOCOL_VERSION, Registration};
use corral_wire::tls::{self, TlsFiles};
use tokio::io::AsyncWriteExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn endpoint(config: quinn::ClientConfig) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(config);
    ep
}

/// Tries to register as an agent; returns what the master answered, or the error.
async fn try_register(
    ep: &quinn::Endpoint,
    master: std::net::SocketAddr,
) -> Result<MasterMessage, String> {
    let conn = ep
        .connect(master, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let reg = AgentMessage::Register(Registration {
        protocol_version: PROTOCOL_VERSION,
        hostname: "intruder".into(),
        http_address: "127.0.0.1".into(),
        http_port: 1,
        resources: corral_wire::resources::Resources::parse("cpus:64;mem:65536").unwrap(),
        ..Default::default()
    });
    send.write_all(&frame::encode_agent(&reg)).await.map_err(|e| e.to_string())?;
    let mut reader = frame::FrameReader::new(frame::DEFAULT_MAX_FRAME);
    match tokio::time::timeout(Duration::from_secs(5), reader.next_master(&mut recv)).await {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err("stream closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 5 s".into()),
    }
}

fn connected_agents(cluster: &Cluster) -> usize {
    cluster.state()["slaves"].as_array().unwrap().len()
}

#[test]
fn peers_without_a_valid_client_certificate_are_refused() {
    if !require_agent_host("peers_without_a_valid_client_certificate_are_refused") {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default());
    let master = cluster.master_quic_addr();
    let rt = runtime();
    // 1. No client certificate at all.
    let no_cert = tls::client_config_without_cert(&cluster.tls_dir.join("ca.pem")).unwrap();
    let r = rt.block_on(async { try_register(&endpoint(no_cert), master).await });
    assert!(r.is_err(), "registration without a client certificate must fail: {r:?}");
    // 2. A certificate signed by another CA.
    let other = tempfile::tempdir().unwrap();
    tls::write_cluster(other.path(), &["localhost".into()]).unwrap();
    let files = TlsFiles {
        ca: cluster.tls_dir.join("ca.pem"),
        cert: other.path().join("agent.pem"),
        key: other.path().join("agent-key.pem"),
    };
    let foreign = tls::client_config(&files).unwrap();
    let r = rt.block_on(async { try_register(&endpoint(foreign), master).await });
    assert!(r.is_err(), "registration with a foreign certificate must fail: {r:?}");
    // 3. The real material works (so the failures above are about the certificate).
    let good = tls::client_config(&TlsFiles::in_dir(&cluster.tls_dir, "agent")).unwrap();
    let r = rt.block_on(async { try_register(&endpoint(good), master).await });
    assert!(matches!(r, Ok(MasterMessage::Registered { .. })), "{r:?}");
    // Only the real agent and the good fake registered; the refused ones never reached it.
    assert_eq!(connected_agents(&cluster), 2);
    let log = cluster.master.log_text();
    assert!(log.contains("agent handshake refused") || log.contains("handshake"), "{log}");
}

#[test]
fn a_malformed_record_drops_that_peer_only() {
    if !require_agent_host("a_malformed_record_drops_that_peer_only") {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default());
    let master = cluster.master_quic_addr();
    let rt = runtime();
    let files = TlsFiles::in_dir(&cluster.tls_dir, "agent");
    for (what, bytes) in [
        ("garbage payload", {
            let mut b = 64u32.to_le_bytes().to_vec();
            b.extend((0..64u8).map(|i| i.wrapping_mul(37)));
            b
        }),
        ("oversized length", u32::MAX.to_le_bytes().to_vec()),
        ("empty record", 0u32.to_le_bytes().to_vec()),
    ] {
        let config = tls::client_config(&files).unwrap();
        let closed = rt.block_on(async {
            let ep = endpoint(config);
            let conn = ep.connect(master, "localhost").unwrap().await.unwrap();
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_all(&bytes).await.unwrap();
            send.flush().await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), conn.closed()).await
        });
        let reason = closed.unwrap_or_else(|_| panic!("{what}: the master did not drop the peer"));
        assert!(
            matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if String::from_utf8_lossy(&c.reason).contains("bad record")),
            "{what}: {reason:?}"
        );
    }
    // The master still serves the real agent: it is registered and runs a task.
    assert_eq!(connected_agents(&cluster), 1);
    let out = std::process::Command::new(corral_tests::corral_bin())
        .args(["run", "--master", cluster.master_addr().host_port(), "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let log = cluster.master.log_text();
    assert!(log.contains("dropping agent: bad record"), "the reason is logged:\n{log}");
}

#[test]
fn a_registered_agent_sending_garbage_is_dropped_and_marked_disconnected() {
    if !require_agent_host("a_registered_agent_sending_garbage_is_dropped_and_marked_disconnected")
    {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default());
    let master = cluster.master_quic_addr();
    let rt = runtime();
    let config = tls::client_config(&TlsFiles::in_dir(&cluster.tls_dir, "agent")).unwrap();
    rt.block_on(async {
        let ep = endpoint(config);
        let conn = ep.connect(master, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let reg = AgentMessage::Register(Registration {
            protocol_version: PROTOCOL_VERSION,
            hostname: "fake".into(),
            http_address: "127.0.0.1".into(),
            http_port: 2,
            resources: corral_wire::resources::Resources::parse("cpus:1;mem:128").unwrap(),
            ..Default::default()
        });
        send.write_all(&frame::encode_agent(&reg)).await.unwrap();
        let mut reader = frame::FrameReader::new(frame::DEFAULT_MAX_FRAME);
        let answer = reader.next_master(&mut recv).await.unwrap().unwrap();
        assert!(matches!(answer, MasterMessage::Registered { .. }));
        // A valid frame header announcing 100 bytes, then only 10: a truncated record
        // followed by the end of the stream.
        let mut bad = 100u32.to_le_bytes().to_vec();
        bad.extend([0xAB; 10]);
        send.write_all(&bad).await.unwrap();
        send.finish().unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    });
    // The fake is no longer active; the real agent is.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let st = cluster.state();
        let slaves = st["slaves"].as_array().unwrap().clone();
        let fake = slaves.iter().find(|s| s["hostname"] == "fake");
        if fake.is_some_and(|f| f["active"] == false) {
            assert!(slaves.iter().any(|s| s["hostname"] != "fake" && s["active"] == true));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "fake agent still active: {slaves:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
