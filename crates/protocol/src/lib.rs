//! The datamiddleware TCP protocol: the wire format shared by the server, the Rust client, the
//! fuzzers and the load generator. It has no I/O and no runtime dependency.
//!
//! # Layout
//! - [`frame`]: the 16-byte header, opcodes, and the first decoding step ([`check`]).
//! - [`message`]: every message body and its encoding, and the second decoding step.
//! - [`codes`]: the stable error codes shared with the HTTP API.
//!
//! The specification for implementers in other languages is `docs/protocol.md`.

pub mod codes;
pub mod frame;
pub mod message;

use bytes::BytesMut;

pub use codes::ErrorCode;
pub use frame::{FrameError, HEADER_LEN, Header, MAGIC, Opcode, VERSION, check, request_id_of};
pub use message::{Credential, DocRef, Hello, HelloOk, Message, OwnerChange, Precondition, Tier};

/// Largest frame body accepted before the handshake completes.
pub const PRE_HANDSHAKE_MAX_BODY: u32 = 4 * 1024;

/// Takes one whole frame off the front of `buf` and decodes it, or returns `Ok(None)` when the
/// frame is not complete yet (nothing is consumed or allocated then).
pub fn decode(buf: &mut BytesMut, max_body: u32) -> Result<Option<(Header, Message)>, FrameError> {
    let Some(header) = check(buf, max_body)? else {
        return Ok(None);
    };
    decode_checked(buf, &header).map(|message| Some((header, message)))
}

/// Step two alone: takes the whole frame `header` describes (as [`check`] returned it) off the
/// front of `buf` and decodes its body. For a caller that needs the header before decoding.
pub fn decode_checked(buf: &mut BytesMut, header: &Header) -> Result<Message, FrameError> {
    let mut frame = buf.split_to(header.frame_len());
    let body = frame.split_off(HEADER_LEN).freeze();
    Message::decode(header, body)
}

#[cfg(test)]
mod tests;
