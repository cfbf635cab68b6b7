//! The one error type of the service API and its table of stable codes.
//!
//! Every failure a caller can see is a [`ServiceError`]: a stable machine [`ErrorCode`] plus a
//! human message that never carries internal details (those go to the log). Each ingress maps
//! the code to its own wire form in exactly one function (HTTP: `ingress::http::problem`), so
//! HTTP and the TCP protocol report the same code for the same mistake.

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
    UnsupportedMediaType,
    Overloaded,
    Timeout,
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [ErrorCode; 16] = [
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
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Overloaded,
        ErrorCode::Timeout,
        ErrorCode::Internal,
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
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status for this code (the TCP protocol carries the string code only).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidJson | ErrorCode::InvalidId => 400,
            ErrorCode::NotFound | ErrorCode::UnknownGame | ErrorCode::UnknownCollection => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::BoundViolation | ErrorCode::NotANumber => 409,
            ErrorCode::VersionConflict | ErrorCode::AlreadyExists => 412,
            ErrorCode::PayloadTooLarge => 413,
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
            ErrorCode::UnsupportedMediaType => "Unsupported media type",
            ErrorCode::Overloaded => "Overloaded",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::Internal => "Internal error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure as the caller sees it. The message is safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    /// For a transaction, the index of the operation that failed.
    pub op_index: Option<usize>,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ServiceError {
            code,
            message: message.into(),
            op_index: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidJson, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// An internal failure: the detail is logged here and replaced by a generic message.
    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    /// Marks which operation of a transaction failed.
    pub fn at_op(mut self, index: usize) -> Self {
        self.op_index = Some(index);
        self
    }

    /// True when the request may have been applied (the caller must read back to know).
    pub fn outcome_unknown(&self) -> bool {
        matches!(self.code, ErrorCode::Timeout | ErrorCode::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_are_errors() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate code {code}");
            assert!(
                code.http_status() >= 400,
                "{code} maps to a non-error status"
            );
        }
    }
}
