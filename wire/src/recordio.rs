//! RecordIO, the framing of the v1 APIs' event streams: each record is its payload's byte
//! length in ASCII decimal, a `\n`, then the payload, with nothing after it.

use bytes::{BufMut, Bytes, BytesMut};

/// Frames one payload as a RecordIO record.
pub fn encode(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 12);
    b.put_slice(payload.len().to_string().as_bytes());
    b.put_u8(b'\n');
    b.put_slice(payload);
    b.freeze()
}

/// Why a RecordIO stream was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordIoError {
    #[error("record length header is not a decimal number")]
    BadHeader,
    #[error("record of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
}

/// Incremental decoder: feed bytes as they arrive (any chunking), take whole records out.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max: usize,
}

impl Decoder {
    pub fn new(max_record: usize) -> Decoder {
        Decoder { buf: BytesMut::new(), max: max_record }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete record, if one has arrived.
    pub fn next_record(&mut self) -> Result<Option<Bytes>, RecordIoError> {
        let Some(nl) = self.buf.iter().take(21).position(|&b| b == b'\n') else {
            if self.buf.len() > 20 {
                return Err(RecordIoError::BadHeader);
            }
            return Ok(None);
        };
        let header = &self.buf[..nl];
        if header.is_empty() || !header.iter().all(u8::is_ascii_digit) {
            return Err(RecordIoError::BadHeader);
        }
        let len: usize = std::str::from_utf8(header)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(RecordIoError::BadHeader)?;
        if len > self.max {
            return Err(RecordIoError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < nl + 1 + len {
            return Ok(None);
        }
        let _ = self.buf.split_to(nl + 1);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_no_separator_and_survive_any_chunking() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&encode(br#"{"type":"SUBSCRIBED"}"#));
        wire.extend_from_slice(&encode(br#"{"type":"HEARTBEAT"}"#));
        assert_eq!(wire, b"21\n{\"type\":\"SUBSCRIBED\"}20\n{\"type\":\"HEARTBEAT\"}");
        for chunk in 1..wire.len() {
            let mut d = Decoder::new(1024);
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                d.push(c);
                while let Some(r) = d.next_record().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got.len(), 2);
            assert_eq!(&got[1][..], br#"{"type":"HEARTBEAT"}"#);
        }
    }

    #[test]
    fn bad_headers_and_oversized_records_are_refused() {
        let mut d = Decoder::new(10);
        d.push(b"x\n");
        assert_eq!(d.next_record(), Err(RecordIoError::BadHeader));
        let mut d = Decoder::new(10);
        d.push(b"11\n");
        assert_eq!(d.next_record(), Err(RecordIoError::TooLarge { len: 11, max: 10 }));
        let mut d = Decoder::new(10);
        d.push(&[b'1'; 30]);
        assert_eq!(d.next_record(), Err(RecordIoError::BadHeader));
    }
}
