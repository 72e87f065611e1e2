//! Length-prefixed records on a byte stream: a little-endian `u32` payload length, then the
//! payload (an rkyv archive). The length is checked against a cap before any buffer grows, the
//! payload is read into a 16-byte-aligned buffer, and the archive is validated (bytecheck)
//! before anything reads it. Any failure is a [`FrameError`] that names what was wrong; the
//! caller drops that one peer.

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::proto::{AgentMessage, MasterMessage};

/// Default cap on one record's payload. Registrations of agents with many tasks are the
/// largest messages; 16 MiB is far above any legitimate one.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("record of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty record")]
    Empty,
    #[error("stream ended inside a record")]
    Truncated,
    #[error("invalid record: {0}")]
    Invalid(String),
}

/// Serializes a message as one framed record.
pub fn encode_agent(msg: &AgentMessage) -> Vec<u8> {
    frame(rkyv::to_bytes::<BoxedError>(msg).expect("in-memory serialization cannot fail"))
}

/// Serializes a message as one framed record.
pub fn encode_master(msg: &MasterMessage) -> Vec<u8> {
    frame(rkyv::to_bytes::<BoxedError>(msg).expect("in-memory serialization cannot fail"))
}

fn frame(payload: AlignedVec) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Validates and deserializes one payload.
pub fn decode_agent(payload: &[u8]) -> Result<AgentMessage, FrameError> {
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<AgentMessage, BoxedError>(&aligned)
        .map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Validates and deserializes one payload.
pub fn decode_master(payload: &[u8]) -> Result<MasterMessage, FrameError> {
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<MasterMessage, BoxedError>(&aligned)
        .map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Reads records from a stream into one reused, aligned buffer.
#[derive(Debug)]
pub struct FrameReader {
    buf: AlignedVec<16>,
    max: usize,
}

impl FrameReader {
    pub fn new(max: usize) -> FrameReader {
        FrameReader { buf: AlignedVec::new(), max }
    }

    /// Reads the next record's payload. `Ok(None)` is a clean end of stream between records.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<&[u8]>, FrameError> {
        let mut header = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let n = r.read(&mut header[got..]).await?;
            if n == 0 {
                return if got == 0 { Ok(None) } else { Err(FrameError::Truncated) };
            }
            got += n;
        }
        let len = u32::from_le_bytes(header) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        self.buf.clear();
        self.buf.resize(len, 0);
        r.read_exact(&mut self.buf[..]).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
        Ok(Some(&self.buf[..]))
    }

    /// Reads and decodes the next agent message.
    pub async fn next_agent<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<AgentMessage>, FrameError> {
        match self.next(r).await? {
            None => Ok(None),
            Some(_) => rkyv::from_bytes::<AgentMessage, BoxedError>(&self.buf)
                .map(Some)
                .map_err(|e| FrameError::Invalid(e.to_string())),
        }
    }

    /// Reads and decodes the next master message.
    pub async fn next_master<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<MasterMessage>, FrameError> {
        match self.next(r).await? {
            None => Ok(None),
            Some(_) => rkyv::from_bytes::<MasterMessage, BoxedError>(&self.buf)
                .map(Some)
                .map_err(|e| FrameError::Invalid(e.to_string())),
        }
    }
}
