//! Framing: the 16-byte header and the two-step decoder.
//!
//! ```text
//! offset size field
//!  0     2    magic       0x44 0x4D ("DM")
//!  2     1    version     1
//!  3     1    opcode      see `Opcode`
//!  4     2    flags       0 (reserved for future use; receivers ignore unknown bits)
//!  6     2    reserved    must be 0
//!  8     4    request_id  chosen by the requester; echoed by the response
//! 12     4    body_len    bytes of body that follow the header
//! ```
//! All integers are big-endian. Decoding happens in two steps: [`check`] looks at the header
//! only (validating magic, version, opcode and length against the caller's limit) and says
//! whether the whole frame is buffered; only then does the caller split the frame off and parse
//! its body. Nothing is allocated for a partial frame, and a length over the limit is refused
//! before any of the body is read.

use crate::codes::ErrorCode;

/// Size of the fixed header.
pub const HEADER_LEN: usize = 16;
/// The magic bytes that start every frame.
pub const MAGIC: [u8; 2] = *b"DM";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;

/// Every opcode. Requests have the high bit clear, responses set; PING and PONG go both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    Hello = 0x01,
    Ping = 0x02,
    Pong = 0x03,
    Get = 0x10,
    BatchGet = 0x11,
    Put = 0x12,
    Patch = 0x13,
    Delete = 0x14,
    List = 0x15,
    Incr = 0x16,
    Txn = 0x17,
    Mint = 0x18,
    HelloOk = 0x81,
    GoAway = 0x82,
    Doc = 0x90,
    Docs = 0x91,
    Done = 0x92,
    TxnResult = 0x93,
    Token = 0x94,
    Error = 0xFF,
}

impl Opcode {
    pub const ALL: [Opcode; 20] = [
        Opcode::Hello,
        Opcode::Ping,
        Opcode::Pong,
        Opcode::Get,
        Opcode::BatchGet,
        Opcode::Put,
        Opcode::Patch,
        Opcode::Delete,
        Opcode::List,
        Opcode::Incr,
        Opcode::Txn,
        Opcode::Mint,
        Opcode::HelloOk,
        Opcode::GoAway,
        Opcode::Doc,
        Opcode::Docs,
        Opcode::Done,
        Opcode::TxnResult,
        Opcode::Token,
        Opcode::Error,
    ];

    pub fn from_u8(byte: u8) -> Option<Opcode> {
        Self::ALL.into_iter().find(|op| *op as u8 == byte)
    }

    /// The requests, `0x10`–`0x18`: what carries a request id of the request-id sequence.
    pub fn is_request(self) -> bool {
        (0x10..=0x18).contains(&(self as u8))
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub opcode: Opcode,
    pub flags: u16,
    pub request_id: u32,
    pub body_len: u32,
}

impl Header {
    /// Total length of the frame (header plus body).
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }

    /// Writes the 16 header bytes.
    pub fn encode(&self, out: &mut impl bytes::BufMut) {
        out.put_slice(&MAGIC);
        out.put_u8(VERSION);
        out.put_u8(self.opcode as u8);
        out.put_u16(self.flags);
        out.put_u16(0);
        out.put_u32(self.request_id);
        out.put_u32(self.body_len);
    }
}

/// Why a byte stream is not a valid frame. Each maps to a stable [`ErrorCode`]; after any of
/// them the connection cannot be resynchronised and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic bytes {0:02x?}")]
    BadMagic([u8; 2]),
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    #[error("reserved header bits are set")]
    Reserved,
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("malformed {opcode:?} body: {reason}")]
    Malformed {
        opcode: Opcode,
        reason: &'static str,
    },
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::BadMagic(_) | FrameError::Reserved | FrameError::Malformed { .. } => {
                ErrorCode::ProtocolError
            }
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            FrameError::UnknownOpcode(_) => ErrorCode::UnknownOpcode,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        }
    }
}

/// The request id of the frame at the start of `buf`, for the answer to a frame that breaks
/// the rules: known once the 16 header bytes have arrived with the right magic (even when
/// another header field is bad), else `None` — such errors are answered with id 0.
pub fn request_id_of(buf: &[u8]) -> Option<u32> {
    let header = buf.get(..HEADER_LEN)?;
    (header[..2] == MAGIC)
        .then(|| u32::from_be_bytes([header[8], header[9], header[10], header[11]]))
}

/// Step one of decoding: validates the header at the start of `buf` (if all 16 bytes are
/// there) and returns it once the whole frame is buffered. `Ok(None)` means "read more".
/// Errors are reported as soon as the header shows them, before the body arrives.
pub fn check(buf: &[u8], max_body: u32) -> Result<Option<Header>, FrameError> {
    // Reject a wrong magic as soon as its bytes arrive, so garbage fails fast.
    if let Some(&first) = buf.first()
        && first != MAGIC[0]
    {
        return Err(FrameError::BadMagic([
            first,
            buf.get(1).copied().unwrap_or(0),
        ]));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let magic = [buf[0], buf[1]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if buf[2] != VERSION {
        return Err(FrameError::UnsupportedVersion(buf[2]));
    }
    let opcode = Opcode::from_u8(buf[3]).ok_or(FrameError::UnknownOpcode(buf[3]))?;
    if buf[6] != 0 || buf[7] != 0 {
        return Err(FrameError::Reserved);
    }
    let flags = u16::from_be_bytes([buf[4], buf[5]]);
    let request_id = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let body_len = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
    if body_len > max_body {
        return Err(FrameError::TooLarge {
            len: body_len,
            max: max_body,
        });
    }
    let header = Header {
        opcode,
        flags,
        request_id,
        body_len,
    };
    Ok((buf.len() >= header.frame_len()).then_some(header))
}
