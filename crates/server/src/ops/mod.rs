//! Operations: what an operator sees of a running process. Today the metrics
//! ([`metrics::Metrics`], served at `GET /metrics`); profiling, health detail and the status
//! page follow (issue 11).

pub mod caches;
pub mod capacity;
pub mod doctor;
pub mod histogram;
pub mod logs;
pub mod metrics;
pub mod pools;
mod process;
pub mod profiling;
mod runtime;
pub mod stalls;
