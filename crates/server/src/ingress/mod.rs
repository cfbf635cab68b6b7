//! Front ends: decode requests, call the service API, encode responses. No business rules.

pub mod http;
pub mod tcp;
