//! Raw HTTP/1.1 over TCP for the wire tests (what `curl -v -N` shows): the status, headers and
//! body bytes exactly as sent, chunk by chunk, and RecordIO records split by hand.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response whose body is read on demand.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub reader: BufReader<TcpStream>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body(mut self) -> String {
        let mut s = String::new();
        if let Some(len) = self.header("content-length").and_then(|l| l.parse::<usize>().ok()) {
            let mut buf = vec![0; len];
            self.reader.read_exact(&mut buf).unwrap();
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    }

    /// Reads one HTTP chunk (its data).
    pub fn chunk(&mut self) -> Vec<u8> {
        let mut size = String::new();
        self.reader.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim_end(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size:?}"));
        let mut data = vec![0; n];
        self.reader.read_exact(&mut data).unwrap();
        let mut crlf = [0; 2];
        self.reader.read_exact(&mut crlf).unwrap();
        assert_eq!(&crlf, b"\r\n");
        data
    }
}

pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    request_bytes(port, method, path, headers, body.as_bytes())
}

fn read_response(mut reader: BufReader<TcpStream>) -> Response {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Response { status, headers, reader }
}

impl Response {
    /// The body's bytes (Content-Length bodies).
    pub fn body_bytes(mut self) -> Vec<u8> {
        let len = self.header("content-length").and_then(|l| l.parse::<usize>().ok()).unwrap_or(0);
        let mut buf = vec![0; len];
        self.reader.read_exact(&mut buf).unwrap();
        buf
    }

    /// Reads chunks until `n` whole RecordIO records arrived; returns them and every byte of
    /// the chunks read.
    pub fn records(&mut self, n: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut bytes = Vec::new();
        loop {
            let records = split_records(&bytes);
            if records.len() >= n {
                return (records, bytes);
            }
            bytes.extend(self.chunk());
        }
    }
}

/// The whole RecordIO records (`<decimal length>\n<payload>`) at the start of `bytes`.
pub fn split_records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let len: usize = std::str::from_utf8(&rest[..nl]).unwrap().parse().expect("decimal length");
        if rest.len() < nl + 1 + len {
            break;
        }
        records.push(rest[nl + 1..nl + 1 + len].to_vec());
        rest = &rest[nl + 1 + len..];
    }
    records
}

/// A request with a binary body.
pub fn request_bytes(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut all = req.into_bytes();
    all.extend_from_slice(body);
    // A server may answer before the whole body is in (413 for an oversized body) and close:
    // the write then fails, and the answer is what counts.
    if let Err(e) = s.write_all(&all) {
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
    }
    read_response(BufReader::new(s))
}
