//! datamiddleware: JSON documents for game and web back ends, served from an in-process cache
//! in front of SQL stores (SQLite, PostgreSQL, MySQL/MariaDB) that remain the source of truth.
//!
//! # Layout
//! Requests flow down this list; each layer calls only the next one.
//! - [`ingress`]: front ends. [`ingress::http`] decodes HTTP requests, calls the service and
//!   encodes responses and problem documents; [`ingress::tcp`] does the same for the binary
//!   protocol (handshake, per-document order, window, heartbeats).
//! - [`auth`]: who is calling (the TCP handshake; HTTP refuses everyone while it is enabled).
//! - [`service`]: the one API both front ends call: get, batch get, list, and write
//!   transactions (put, patch, delete, incr, check), run to their end in their own task.
//!   Rules live here ([`service::ops`]), and so does the bound on large answers.
//! - [`cache`]: read-through tiers; [`cache::l1`] is the in-process, bytes-bounded,
//!   version-guarded cache with single-flight misses and negative entries.
//! - [`store`]: the SQL database through sqlx, one implementation for three dialects,
//!   migrations, and key-ordered write transactions.
//! - [`model`]: names, ids, stored rows and the encoded document form.
//! - [`error`]: the one error type and its stable codes.
//! - [`config`]: serde configuration, loading (file, `DMW_` env, CLI) and validation.
//! - [`ops`]: what operators see: the metrics registry and its handles.
//! - [`app`]: wiring for the binary and for tests.

pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod ingress;
pub mod model;
pub mod ops;
pub mod service;
pub mod store;
