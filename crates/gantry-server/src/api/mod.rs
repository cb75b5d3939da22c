//! The public gRPC services, one file each (jobs, watch and logs, nodes,
//! cluster, snapshots), and what they share: request deadlines, admission
//! and rate limits, forwarding to the leader, conversions between API
//! messages and core types, and the one mapping of errors to statuses.

pub mod admission;
pub mod cluster;
pub mod convert;
pub mod deadline;
pub mod error;
pub mod forward;
pub mod jobs;
pub mod nodes;
pub mod ratelimit;
pub mod snapshot;
pub mod watch;
