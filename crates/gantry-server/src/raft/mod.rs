//! Raft between replicas: openraft's network over the internal gRPC
//! service (which also carries forwarded writes, read index, session
//! reports and local status), pooled peer channels, peer reachability, and
//! the brief hold of commit-only appends.

pub mod commit_hold;
pub mod internal;
pub mod network;
pub mod peers;
pub mod reachability;
