//! Support of tests/e2e_faults.rs: a private PostgreSQL cluster, a
//! switchable TCP relay in front of the KMS, an OpenBao dev server, the
//! mixed workload, /proc figures, raw-socket clients and the faults.

pub mod bao;
pub mod cluster;
pub mod fixture;
pub mod probe;
pub mod relay;
pub mod report;
pub mod scenarios;
pub mod scenarios2;
pub mod workload;
