//! byokpg: a transparent encrypting PostgreSQL proxy with customer-managed keys.
//!
//! Layout: `protocol` is a pure codec (no I/O); `session` drives one client;
//! `backend` opens the region connection; `rewrite` decides what a statement
//! touches; `config`, `admin`, `metrics` and `cli` wire it together.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod backend;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod guards;
pub mod keys;
pub mod kms;
pub mod metrics;
pub mod pgmeta;
pub mod protocol;
pub mod rewrite;
pub mod server;
pub mod session;
pub mod setup;
pub mod tls;
