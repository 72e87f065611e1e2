//! The agent endpoint: QUIC with mutual TLS. A peer without a client certificate signed by the
//! cluster CA fails the handshake and never gets a stream. Each accepted connection carries
//! one bidirectional stream of framed rkyv messages; a record that is oversized, truncated or
//! fails validation closes that one connection with a logged reason and affects nothing else.

use std::time::Duration;

use corral_wire::frame::{self, FrameReader};
use tokio::io::AsyncWriteExt;

use super::{AgentRx, Handle, Input, Outbound, agent_queue};

/// Bytes gathered from the queue into one stream write.
const WRITE_BATCH: usize = 256 << 10;

/// Messages from one connection handed to the actor in one input, at most.
const MAX_BATCH: usize = 256;

/// Application close codes.
const CLOSE_NORMAL: u32 = 0;
const CLOSE_PROTOCOL: u32 = 1;

/// Accepts agent connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, handle: Handle, max_frame: usize) {
    while let Some(incoming) = endpoint.accept().await {
        let handle = handle.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            match incoming.await {
                Ok(conn) => connection(conn, handle, max_frame).await,
                // No client certificate, a certificate from another CA, wrong ALPN...
                Err(e) => tracing::warn!(%peer, error = %e, "agent handshake refused"),
            }
        });
    }
}

async fn connection(conn: quinn::Connection, handle: Handle, max_frame: usize) {
    let peer = conn.remote_address();
    let (mut send, mut recv) = match tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "agent connection closed before opening its stream");
            return;
        }
        Err(_) => {
            conn.close(CLOSE_PROTOCOL.into(), b"no stream opened");
            return;
        }
    };
    let id = handle.next_id();
    let (tx, AgentRx { mut rx, budget }) = agent_queue();
    if !handle.send(Input::AgentConnected { conn: id, peer, tx }).await {
        return;
    }
    let writer_conn = conn.clone();
    let writer = tokio::spawn(async move {
        // Frames queued together go out in one write (a burst of RunTasks is one syscall).
        let mut batch = Vec::new();
        while let Some(out) = rx.recv().await {
            let mut close = None;
            let mut next = Some(out);
            while let Some(out) = next.take() {
                match out {
                    Outbound::Send(frame) => batch.extend_from_slice(&frame),
                    Outbound::Close(reason) => {
                        close = Some(reason);
                        break;
                    }
                }
                if batch.len() < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                let n = batch.len();
                if let Err(e) = send.write_all(&batch).await {
                    tracing::debug!(%peer, error = %e, "agent stream write failed");
                    break;
                }
                budget.release(n);
                batch.clear();
            }
            if let Some(reason) = close {
                let _ = send.flush().await;
                let _ = send.finish();
                // Give the peer a moment to read what was queued before the close.
                let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
                writer_conn.close(CLOSE_NORMAL.into(), reason.as_bytes());
                break;
            }
        }
    });
    let mut reader = FrameReader::new(max_frame);
    loop {
        match reader.next_agent(&mut recv).await {
            Ok(Some(msg)) => {
                // Whatever else that read brought goes to the actor in the same input.
                let mut msgs = vec![msg];
                let mut bad = None;
                while msgs.len() < MAX_BATCH && reader.has_buffered() {
                    match reader.next_agent(&mut recv).await {
                        Ok(Some(m)) => msgs.push(m),
                        Ok(None) => break,
                        Err(e) => {
                            bad = Some(e);
                            break;
                        }
                    }
                }
                if !handle.send(Input::AgentMessages { conn: id, msgs }).await {
                    break;
                }
                if let Some(e) = bad {
                    tracing::warn!(%peer, conn = id, reason = %e, "dropping agent: bad record");
                    conn.close(CLOSE_PROTOCOL.into(), format!("bad record: {e}").as_bytes());
                    break;
                }
            }
            Ok(None) => {
                tracing::info!(%peer, conn = id, "agent closed its stream");
                break;
            }
            Err(frame::FrameError::Io(e)) => {
                tracing::info!(%peer, conn = id, error = %e, "agent connection lost");
                break;
            }
            Err(e) => {
                tracing::warn!(%peer, conn = id, reason = %e, "dropping agent: bad record");
                conn.close(CLOSE_PROTOCOL.into(), format!("bad record: {e}").as_bytes());
                break;
            }
        }
    }
    // Through the ordered queue: everything this agent sent is applied before its departure.
    handle.send(Input::AgentGone { conn: id }).await;
    writer.abort();
}
