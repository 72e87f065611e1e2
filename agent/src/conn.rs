//! The connection to the master: QUIC with mutual TLS, one bidirectional stream of framed
//! messages, and reconnection with backoff forever.
//!
//! The connection task knows nothing of the protocol's meaning. It reports [`ConnEvent::Up`]
//! (with a fresh sender for outgoing messages, so nothing queued for an old connection can
//! reach a new one), every [`MasterMessage`] in order, and [`ConnEvent::Down`] after the last
//! message of a connection. A connection error, an invalid frame or a closed stream ends the
//! connection; the next attempt follows a backoff of 100 ms doubling to the configured
//! maximum, reset once a connection has delivered a message.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corral_wire::frame::{DEFAULT_MAX_FRAME, FrameReader, encode_agent};
use corral_wire::proto::{AgentMessage, MasterMessage};
use tokio::sync::{mpsc, watch};

use crate::args::MasterAddr;

const BACKOFF_MIN: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub enum ConnEvent {
    /// A stream to the master is open; send on `out` (it dies with the connection).
    /// `local_ip` is this host's address towards the master, when known.
    Up {
        out: mpsc::UnboundedSender<AgentMessage>,
        local_ip: Option<IpAddr>,
    },
    Message(MasterMessage),
    /// The connection is gone (its reason is logged here).
    Down,
}

#[derive(Debug, Clone)]
pub struct ConnConfig {
    pub master: MasterAddr,
    /// The name the master's certificate must carry.
    pub server_name: String,
    pub client: quinn::ClientConfig,
    pub backoff_max: Duration,
}

/// Connects, serves and reconnects until `stop` turns true.
pub async fn run(
    cfg: ConnConfig,
    events: mpsc::UnboundedSender<ConnEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        let delivered = Arc::new(AtomicBool::new(false));
        let end = session(&cfg, &events, &delivered, &mut stop).await;
        match end {
            Ok(reason) | Err(reason) if *stop.borrow() => {
                tracing::debug!("connection ended while stopping: {reason}");
                return;
            }
            Ok(reason) => {
                tracing::warn!(master = %cfg.master.host, "connection to the master lost: {reason}");
                if events.send(ConnEvent::Down).is_err() {
                    return;
                }
            }
            Err(reason) => {
                tracing::warn!(master = %cfg.master.host, "cannot reach the master: {reason}")
            }
        }
        if delivered.load(Ordering::Relaxed) {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(cfg.backoff_max.max(BACKOFF_MIN));
    }
}

/// One connection: `Err` if it never came up (no `Up` was sent), `Ok(reason)` when an
/// established one ended. Dropping the future closes the connection.
async fn session(
    cfg: &ConnConfig,
    events: &mpsc::UnboundedSender<ConnEvent>,
    delivered: &Arc<AtomicBool>,
    stop: &mut watch::Receiver<bool>,
) -> Result<String, String> {
    let connecting = async {
        let addr = resolve(&cfg.master).await?;
        let endpoint = quinn::Endpoint::client(unspecified_like(addr))
            .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        let conn = endpoint
            .connect_with(cfg.client.clone(), addr, &cfg.server_name)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let (send, recv) =
            conn.open_bi().await.map_err(|e| format!("cannot open a stream to {addr}: {e}"))?;
        Ok::<_, String>((addr, endpoint, conn, send, recv))
    };
    let (addr, endpoint, conn, mut send, mut recv) = tokio::select! {
        c = connecting => c?,
        // Still connecting: dropping the attempt is all there is to do.
        _ = stop.changed() => return Err("agent stopping".to_string()),
    };
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    tracing::info!(%addr, "connected to the master");
    events
        .send(ConnEvent::Up { out: out_tx, local_ip: local_ip_towards(addr) })
        .map_err(|_| "agent stopped".to_string())?;

    // The reader runs on its own so that no read is ever cancelled halfway through a frame.
    let reader_events = events.clone();
    let reader_delivered = delivered.clone();
    let mut reader = tokio::spawn(async move {
        let mut frames = FrameReader::new(DEFAULT_MAX_FRAME);
        // Once registered, the master pings every `ping_interval_ms`: a master that stays
        // silent for several intervals is gone or stuck even if QUIC keeps the connection up,
        // so the connection is dropped and the agent re-registers (possibly elsewhere).
        let mut silence_limit: Option<Duration> = None;
        loop {
            let next = match silence_limit {
                None => frames.next_master(&mut recv).await,
                Some(limit) => {
                    match tokio::time::timeout(limit, frames.next_master(&mut recv)).await {
                        Ok(r) => r,
                        Err(_) => return format!("no message from the master in {limit:?}"),
                    }
                }
            };
            match next {
                Ok(Some(msg)) => {
                    if let MasterMessage::Registered { ping_interval_ms, .. } = &msg {
                        silence_limit = Some(silence_limit_for(*ping_interval_ms));
                    }
                    reader_delivered.store(true, Ordering::Relaxed);
                    if reader_events.send(ConnEvent::Message(msg)).is_err() {
                        return "agent stopped".to_string();
                    }
                }
                Ok(None) => return "the master closed the stream".to_string(),
                Err(e) => return format!("bad frame from the master: {e}"),
            }
        }
    });
    let reason = loop {
        tokio::select! {
            r = &mut reader => break r.unwrap_or_else(|e| format!("reader failed: {e}")),
            m = out_rx.recv() => match m {
                Some(m) => {
                    if let Err(e) = send.write_all(&encode_agent(&m)).await {
                        reader.abort();
                        break format!("cannot send to the master: {e}");
                    }
                }
                None => {
                    reader.abort();
                    break "agent stopped".to_string();
                }
            },
            _ = stop.changed() => {
                // Say goodbye properly, so the master need not wait for an idle timeout.
                reader.abort();
                conn.close(0u32.into(), b"agent stopping");
                let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
                return Ok("agent stopping".to_string());
            }
        }
    };
    conn.close(0u32.into(), b"bye");
    Ok(reason)
}

/// The wildcard address (port 0) of `peer`'s family.
fn unspecified_like(peer: SocketAddr) -> SocketAddr {
    if peer.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

async fn resolve(master: &MasterAddr) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host((master.host.as_str(), master.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", master.host))?;
    addrs.next().ok_or_else(|| format!("{} resolves to no address", master.host))
}

/// The local address the kernel would use to reach `peer` (no packet is sent).
pub fn local_ip_towards(peer: SocketAddr) -> Option<IpAddr> {
    let sock = std::net::UdpSocket::bind(unspecified_like(peer)).ok()?;
    sock.connect(peer).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ip_towards_loopback_is_loopback() {
        let ip = local_ip_towards("127.0.0.1:5050".parse().unwrap());
        assert_eq!(ip, Some(IpAddr::from([127, 0, 0, 1])));
    }
}

/// How long the agent waits for any message from a master that pings every
/// `ping_interval_ms`: six intervals (one more than the master's default number of missed
/// pings before it gives up on an agent), at least 5 s.
fn silence_limit_for(ping_interval_ms: u64) -> Duration {
    Duration::from_millis(ping_interval_ms.saturating_mul(6)).max(Duration::from_secs(5))
}

#[cfg(test)]
mod silence_tests {
    use super::*;

    #[test]
    fn silence_limit_is_six_pings_but_at_least_five_seconds() {
        assert_eq!(silence_limit_for(15_000), Duration::from_secs(90));
        assert_eq!(silence_limit_for(100), Duration::from_secs(5));
        assert_eq!(silence_limit_for(u64::MAX), Duration::from_millis(u64::MAX));
    }
}
