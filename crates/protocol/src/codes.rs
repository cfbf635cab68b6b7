//! The one table of stable error codes, shared by every protocol: HTTP problem documents carry
//! them in `code`, TCP error frames in their `code` field. The string form is public API.

use std::fmt;

/// Stable error codes shared by every protocol. The string form is part of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    InvalidJson,
    InvalidId,
    NotFound,
    UnknownGame,
    UnknownCollection,
    MethodNotAllowed,
    VersionConflict,
    AlreadyExists,
    BoundViolation,
    NotANumber,
    PayloadTooLarge,
    /// A multi-document answer would exceed the response size limit.
    ResponseTooLarge,
    UnsupportedMediaType,
    Overloaded,
    Timeout,
    Internal,
    /// TCP: a frame that breaks the framing rules (bad magic, reserved bits, malformed body).
    ProtocolError,
    /// TCP: a protocol version this server does not speak.
    UnsupportedVersion,
    /// TCP: an opcode this server does not know, or one not valid in this direction or state.
    UnknownOpcode,
    /// TCP: a frame longer than the announced limit.
    FrameTooLarge,
    /// Missing or rejected credentials.
    Unauthorized,
    /// Valid credentials that do not allow this request (another game, a write with a
    /// read-only key).
    Forbidden,
    /// Over the caller's (or its address's) request rate; retry after a second.
    RateLimited,
}

impl ErrorCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidJson,
        ErrorCode::InvalidId,
        ErrorCode::NotFound,
        ErrorCode::UnknownGame,
        ErrorCode::UnknownCollection,
        ErrorCode::MethodNotAllowed,
        ErrorCode::VersionConflict,
        ErrorCode::AlreadyExists,
        ErrorCode::BoundViolation,
        ErrorCode::NotANumber,
        ErrorCode::PayloadTooLarge,
        ErrorCode::ResponseTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Overloaded,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::ProtocolError,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownOpcode,
        ErrorCode::FrameTooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
    ];

    /// The stable string sent to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownGame => "unknown_game",
            ErrorCode::UnknownCollection => "unknown_collection",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::BoundViolation => "bound_violation",
            ErrorCode::NotANumber => "not_a_number",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ResponseTooLarge => "response_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::ProtocolError => "protocol_error",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownOpcode => "unknown_opcode",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
        }
    }

    /// The HTTP status for this code (the TCP protocol carries the string code only).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::InvalidJson
            | ErrorCode::InvalidId
            | ErrorCode::ProtocolError
            | ErrorCode::UnsupportedVersion
            | ErrorCode::UnknownOpcode => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::RateLimited => 429,
            ErrorCode::FrameTooLarge => 413,
            ErrorCode::NotFound | ErrorCode::UnknownGame | ErrorCode::UnknownCollection => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::BoundViolation | ErrorCode::NotANumber => 409,
            ErrorCode::VersionConflict | ErrorCode::AlreadyExists => 412,
            ErrorCode::PayloadTooLarge | ErrorCode::ResponseTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Internal => 500,
            ErrorCode::Overloaded => 503,
            ErrorCode::Timeout => 504,
        }
    }

    /// A short title for problem documents.
    pub fn title(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::InvalidJson => "Invalid JSON",
            ErrorCode::InvalidId => "Invalid identifier",
            ErrorCode::NotFound => "Not found",
            ErrorCode::UnknownGame => "Unknown game",
            ErrorCode::UnknownCollection => "Unknown collection",
            ErrorCode::MethodNotAllowed => "Method not allowed",
            ErrorCode::VersionConflict => "Version conflict",
            ErrorCode::AlreadyExists => "Already exists",
            ErrorCode::BoundViolation => "Bound violation",
            ErrorCode::NotANumber => "Not a number",
            ErrorCode::PayloadTooLarge => "Payload too large",
            ErrorCode::ResponseTooLarge => "Response too large",
            ErrorCode::UnsupportedMediaType => "Unsupported media type",
            ErrorCode::Overloaded => "Overloaded",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::Internal => "Internal error",
            ErrorCode::ProtocolError => "Protocol error",
            ErrorCode::UnsupportedVersion => "Unsupported protocol version",
            ErrorCode::UnknownOpcode => "Unknown opcode",
            ErrorCode::FrameTooLarge => "Frame too large",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::RateLimited => "Too many requests",
        }
    }

    /// The code for its string form, if it is one of ours.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_parse_back_and_map_to_error_statuses() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate code {code}");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!(
                code.http_status() >= 400,
                "{code} maps to a non-error status"
            );
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
