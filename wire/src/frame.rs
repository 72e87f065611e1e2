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

/// Smallest and largest read buffer of a [`FrameReader`]: an idle connection (pings and
/// pongs) keeps the small one; a busy one grows it so that one read takes many records.
const READ_MIN: usize = 1 << 10;
const READ_MAX: usize = 64 << 10;

/// Reads records from a stream. Reads go into a buffer that holds as many records as arrived
/// (one read, and on QUIC one lock of the connection, per burst rather than two per record);
/// each payload is then copied into one reused, 16-byte-aligned buffer for validation.
/// Cancelling [`FrameReader::next`] loses nothing: what was read stays buffered.
#[derive(Debug)]
pub struct FrameReader {
    buf: AlignedVec<16>,
    max: usize,
    /// Bytes read and not yet consumed: `input[start..end]`.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes the last read brought.
    last_read: usize,
}

impl FrameReader {
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            buf: AlignedVec::new(),
            max,
            input: Vec::new(),
            start: 0,
            end: 0,
            last_read: 0,
        }
    }

    /// The length of the record at the head of the buffer, once its header is there.
    fn head_len(&self) -> Result<Option<usize>, FrameError> {
        if self.end - self.start < 4 {
            return Ok(None);
        }
        let mut header = [0u8; 4];
        header.copy_from_slice(&self.input[self.start..self.start + 4]);
        let len = u32::from_le_bytes(header) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        Ok(Some(len))
    }

    /// Bytes the read buffer holds now (what one connection costs while idle).
    pub fn buffer_capacity(&self) -> usize {
        self.input.capacity()
    }

    /// Whether a whole record is already buffered, so that the next call to
    /// [`FrameReader::next`] returns without reading (a bad header counts: it fails at once).
    pub fn has_buffered(&self) -> bool {
        match self.head_len() {
            Ok(Some(len)) => self.end - self.start >= 4 + len,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Reads the next record's payload. `Ok(None)` is a clean end of stream between records.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<&[u8]>, FrameError> {
        loop {
            let want = match self.head_len()? {
                Some(len) if self.end - self.start >= 4 + len => {
                    let at = self.start + 4;
                    self.buf.clear();
                    self.buf.extend_from_slice(&self.input[at..at + len]);
                    self.start = at + len;
                    if self.start == self.end {
                        (self.start, self.end) = (0, 0);
                        if self.input.len() > READ_MIN && self.last_read < self.input.len() / 4 {
                            // Drained after a small read: the burst (or the one huge record)
                            // is over, and a master holds one of these per agent.
                            self.input = Vec::new();
                        }
                    }
                    return Ok(Some(&self.buf[..]));
                }
                Some(len) => 4 + len,
                None => 4,
            };
            // Room for the rest of this record (up to READ_MAX at a time), at the front.
            if self.start > 0 {
                self.input.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let room = want.clamp(READ_MIN, READ_MAX).max(self.input.len().min(READ_MAX));
            if self.input.len() < room {
                self.input.resize(room, 0);
            }
            if self.end == self.input.len() {
                // A record larger than READ_MAX: grow to hold it (its length is capped).
                self.input.resize(want, 0);
            }
            let n = r.read(&mut self.input[self.end..]).await?;
            self.last_read = n;
            if n == 0 {
                return if self.end == self.start { Ok(None) } else { Err(FrameError::Truncated) };
            }
            self.end += n;
            // A read that filled the buffer: the stream is busy, read more at a time.
            if self.end == self.input.len() && self.input.len() < READ_MAX {
                let grown = (self.input.len() * 2).min(READ_MAX);
                self.input.resize(grown, 0);
            }
        }
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
