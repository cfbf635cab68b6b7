//! The wire side of each target: how an operation is written and how a response is recognised,
//! for our HTTP API, any plain HTTP URL, our TCP protocol and Redis (RESP). Lean on purpose:
//! the generator shares the machine's cores with the server it measures.

use bytes::BytesMut;
use datamiddleware_protocol::{
    DocRef, HEADER_LEN, Message, OwnerChange, Precondition, Tier, check,
};

/// One operation on key number `key` (or several, for a batch).
#[derive(Debug, Clone)]
pub enum Op {
    Get(u64),
    Put(u64),
    Incr(u64),
    Batch(Vec<u64>),
}

/// A parsed response.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes of the buffer this response used.
    pub consumed: usize,
    /// The request id it answers (protocols that may answer out of order).
    pub id: Option<u32>,
    /// `None` on success, else the error kind (an error code, `http_503`, …).
    pub error: Option<String>,
    /// The server said the answer came from its in-process cache.
    pub cache_hit: bool,
}

/// Encodes operations and parses responses for one connection.
pub trait Codec: Send {
    fn encode(&mut self, op: &Op, id: u32, out: &mut Vec<u8>);
    /// Parses the response at the start of `buf`; `Ok(None)` if it is not complete yet.
    fn parse(&mut self, buf: &[u8]) -> Result<Option<Parsed>, String>;
    /// Whether responses come back in request order.
    fn in_order(&self) -> bool {
        true
    }
}

/// The value written by puts: `{"n":0,"pad":"xxx…"}` of about `size` bytes, so that `incr`
/// has a number to add to.
pub fn value_json(size: usize) -> String {
    format!(
        r#"{{"n":0,"pad":"{}"}}"#,
        "x".repeat(size.saturating_sub(16))
    )
}

pub fn key_name(key: u64) -> String {
    format!("k{key}")
}

/// Our HTTP API (`/api/v1/{game}/{collection}/…`).
pub struct HttpApi {
    pub game: String,
    pub collection: String,
    pub value: String,
    /// Header lines sent with every request (the API key), each ending in CRLF.
    pub extra_headers: String,
}

impl Codec for HttpApi {
    fn encode(&mut self, op: &Op, _id: u32, out: &mut Vec<u8>) {
        let base = format!("/api/v1/{}/{}", self.game, self.collection);
        match op {
            Op::Get(key) => http_request(
                out,
                "GET",
                &format!("{base}/k{key}"),
                &self.extra_headers,
                None,
            ),
            Op::Put(key) => {
                let body = format!(r#"{{"value":{}}}"#, self.value);
                http_request(
                    out,
                    "PUT",
                    &format!("{base}/k{key}"),
                    &self.extra_headers,
                    Some(&body),
                );
            }
            Op::Incr(key) => http_request(
                out,
                "POST",
                &format!("{base}/k{key}/_incr"),
                &self.extra_headers,
                Some(r#"{"path":"/n","by":1}"#),
            ),
            Op::Batch(keys) => {
                let ids: Vec<String> = keys.iter().map(|k| format!("\"k{k}\"")).collect();
                let body = format!(r#"{{"ids":[{}]}}"#, ids.join(","));
                http_request(
                    out,
                    "POST",
                    &format!("{base}/_batch_get"),
                    &self.extra_headers,
                    Some(&body),
                );
            }
        }
    }

    fn parse(&mut self, buf: &[u8]) -> Result<Option<Parsed>, String> {
        parse_http(buf)
    }
}

/// Any HTTP URL: every operation is a GET of the same path (for nginx, bare servers, …).
pub struct PlainHttp {
    pub path: String,
}

impl Codec for PlainHttp {
    fn encode(&mut self, _op: &Op, _id: u32, out: &mut Vec<u8>) {
        http_request(out, "GET", &self.path, "", None);
    }

    fn parse(&mut self, buf: &[u8]) -> Result<Option<Parsed>, String> {
        parse_http(buf)
    }
}

fn http_request(out: &mut Vec<u8>, method: &str, path: &str, headers: &str, body: Option<&str>) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: bench\r\n");
    out.extend_from_slice(headers.as_bytes());
    if let Some(body) = body {
        out.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(body.as_bytes());
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

fn parse_http(buf: &[u8]) -> Result<Option<Parsed>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad HTTP response: {e}")),
    };
    let mut body_len = 0usize;
    let mut cache_hit = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            body_len = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("bad content-length")?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not supported by the bench client".into());
        } else if header.name.eq_ignore_ascii_case("x-cache") {
            cache_hit = header.value == b"L1";
        }
    }
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    let status = response.code.unwrap_or(0);
    Ok(Some(Parsed {
        consumed: head_len + body_len,
        id: None,
        error: (!(200..300).contains(&status)).then(|| format!("http_{status}")),
        cache_hit,
    }))
}

/// Our TCP protocol. The handshake is done by the driver before the first request.
pub struct TcpProtocol {
    pub game: String,
    pub collection: String,
    pub value: bytes::Bytes,
    pub scratch: BytesMut,
}

impl TcpProtocol {
    fn doc(&self, key: u64) -> DocRef {
        DocRef {
            game: self.game.clone(),
            collection: self.collection.clone(),
            id: key_name(key),
        }
    }
}

impl Codec for TcpProtocol {
    fn encode(&mut self, op: &Op, id: u32, out: &mut Vec<u8>) {
        let message = match op {
            Op::Get(key) => Message::Get(self.doc(*key)),
            Op::Put(key) => Message::Put {
                doc: self.doc(*key),
                pre: Precondition::None,
                owner: OwnerChange::Keep,
                value: self.value.clone(),
            },
            Op::Incr(key) => Message::Incr {
                doc: self.doc(*key),
                pre: Precondition::None,
                incr: bytes::Bytes::from_static(br#"{"path":"/n","by":1}"#),
            },
            Op::Batch(keys) => Message::BatchGet {
                game: self.game.clone(),
                collection: self.collection.clone(),
                ids: keys.iter().map(|k| key_name(*k)).collect(),
            },
        };
        self.scratch.clear();
        message.encode(id, &mut self.scratch);
        out.extend_from_slice(&self.scratch);
    }

    fn parse(&mut self, buf: &[u8]) -> Result<Option<Parsed>, String> {
        // Copy only this frame's body out of the shared read buffer.
        let header = match check(buf, u32::MAX) {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let body = bytes::Bytes::copy_from_slice(&buf[HEADER_LEN..header.frame_len()]);
        match Message::decode(&header, body).map(|message| Some((header, message))) {
            Ok(Some((header, message))) => {
                let (error, cache_hit) = match message {
                    Message::Error { code, .. } => (Some(code), false),
                    Message::Doc { tier, .. } | Message::Docs { tier, .. } => {
                        (None, tier == Tier::L1)
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::GoAway { .. } => {
                        (Some("unexpected_frame".into()), false)
                    }
                    _ => (None, false),
                };
                Ok(Some(Parsed {
                    consumed: header.frame_len(),
                    id: (header.request_id != 0).then_some(header.request_id),
                    error,
                    cache_hit,
                }))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn in_order(&self) -> bool {
        false
    }
}

/// Redis (RESP2): GET, SET, INCR and MGET on keys `k<n>`.
pub struct Redis {
    pub value: String,
}

impl Codec for Redis {
    fn encode(&mut self, op: &Op, _id: u32, out: &mut Vec<u8>) {
        match op {
            Op::Get(key) => resp(out, &["GET", &key_name(*key)]),
            Op::Put(key) => resp(out, &["SET", &key_name(*key), &self.value]),
            Op::Incr(key) => resp(out, &["INCR", &format!("n{key}")]),
            Op::Batch(keys) => {
                let names: Vec<String> = keys.iter().map(|k| key_name(*k)).collect();
                let mut args = vec!["MGET"];
                args.extend(names.iter().map(String::as_str));
                resp(out, &args);
            }
        }
    }

    fn parse(&mut self, buf: &[u8]) -> Result<Option<Parsed>, String> {
        Ok(resp_value_len(buf)?.map(|(consumed, error)| Parsed {
            consumed,
            id: None,
            error: error.then(|| "redis_error".to_string()),
            cache_hit: true,
        }))
    }
}

fn resp(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Length of the RESP value at the start of `buf` and whether it is an error reply.
fn resp_value_len(buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[1..line_end];
    let after_line = line_end + 2;
    let number = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "bad RESP length".to_string())
    };
    match buf.first() {
        Some(b'+') | Some(b':') => Ok(Some((after_line, false))),
        Some(b'-') => Ok(Some((after_line, true))),
        Some(b'$') => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((after_line, false)));
            }
            let end = after_line + len as usize + 2;
            Ok((buf.len() >= end).then_some((end, false)))
        }
        Some(b'*') => {
            let count = number()?;
            let mut at = after_line;
            for _ in 0..count.max(0) {
                match resp_value_len(&buf[at..])? {
                    Some((len, _)) => at += len,
                    None => return Ok(None),
                }
            }
            Ok(Some((at, false)))
        }
        _ => Err("bad RESP reply".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses_are_framed_by_content_length() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-cache: L1\r\n\r\n{}HTTP/1.1 404";
        let parsed = parse_http(response).unwrap().unwrap();
        assert_eq!(
            (parsed.consumed, parsed.error, parsed.cache_hit),
            (53, None, true)
        );
        assert_eq!(parse_http(&response[..52]).unwrap(), None);
        let error = parse_http(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(error.error.as_deref(), Some("http_503"));
    }

    #[test]
    fn resp_replies() {
        assert_eq!(resp_value_len(b"$3\r\nabc\r\n").unwrap(), Some((9, false)));
        assert_eq!(resp_value_len(b"$3\r\nab").unwrap(), None);
        assert_eq!(resp_value_len(b"$-1\r\n").unwrap(), Some((5, false)));
        assert_eq!(resp_value_len(b"-ERR x\r\n").unwrap(), Some((8, true)));
        assert_eq!(
            resp_value_len(b"*2\r\n$1\r\na\r\n$-1\r\n+").unwrap(),
            Some((16, false))
        );
        assert_eq!(resp_value_len(b":12\r\n").unwrap(), Some((5, false)));
        let mut out = Vec::new();
        resp(&mut out, &["GET", "k1"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n");
    }

    #[test]
    fn tcp_frames_round_trip_through_the_codec() {
        let mut codec = TcpProtocol {
            game: "g".into(),
            collection: "c".into(),
            value: bytes::Bytes::from_static(b"{}"),
            scratch: BytesMut::new(),
        };
        let mut out = Vec::new();
        codec.encode(&Op::Get(5), 9, &mut out);
        let mut buf = BytesMut::from(&out[..]);
        let (header, message) = datamiddleware_protocol::decode(&mut buf, u32::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(header.request_id, 9);
        assert!(matches!(message, Message::Get(ref d) if d.id == "k5"));
        let mut reply = BytesMut::new();
        Message::Doc {
            tier: Tier::L1,
            created: false,
            version: 1,
            doc: bytes::Bytes::from_static(b"{}"),
        }
        .encode(9, &mut reply);
        let parsed = codec.parse(&reply).unwrap().unwrap();
        assert_eq!(
            (parsed.consumed, parsed.id, parsed.cache_hit),
            (reply.len(), Some(9), true)
        );
    }
}
