//! A registration storm: 1,000 agents handshaking (mutual TLS over QUIC) with the master at the
//! same moment, as after a master failover or when a whole cluster boots. Each QUIC Initial is
//! a padded 1,200-byte datagram; the master's agent socket takes the burst (its receive buffer
//! is sized for it) so that no handshake is lost to overflow and retried after seconds of
//! backoff, past the 10 s idle timeout. Needs no root.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::Duration;

use corral_tools::sim_quic::QuicCluster;
use corral_wire::resources::Resources;

#[test]
fn a_thousand_agents_handshaking_at_once_all_register() {
    let n = 1_000;
    let mut c = QuicCluster::start_with(2, 2, usize::MAX).unwrap();
    c.add_agents(n, &Resources::parse("cpus:4;mem:4096").unwrap()).unwrap();
    let started = std::time::Instant::now();
    c.run(Duration::from_secs(60), |c| c.registered() == n as u64, |_| {});
    let registered = c.registered();
    let failure = c.failure();
    let took = started.elapsed();
    c.stop();
    assert_eq!(failure, None);
    assert_eq!(registered, n as u64, "registered after {took:?}");
    eprintln!("{n} agents registered in {took:?}");
}
