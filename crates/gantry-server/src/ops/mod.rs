//! Running a replica: its configuration, who may call what (roles from
//! certificates), metrics (Prometheus text and per-method gRPC figures),
//! and health (`grpc.health.v1`, `/ready`).

pub mod auth;
pub mod config;
pub mod grpc_metrics;
pub mod health;
pub mod metrics;
pub mod peers;
