//! The one error type of the service API. Every failure a caller can see is a
//! [`ServiceError`]: a stable [`ErrorCode`] (the table lives in the protocol crate, shared by
//! HTTP and TCP) plus a human message that never carries internal details (those are logged).
//! Each ingress maps it to its wire form in exactly one function.

use std::fmt;

pub use datamiddleware_protocol::ErrorCode;

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
