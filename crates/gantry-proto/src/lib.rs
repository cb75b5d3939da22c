//! Gantry's gRPC API: the public `gantry.v1` services and the replica-to-replica
//! `gantry.internal.v1` service, generated at build time.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("gantry.v1");
    include!(concat!(env!("OUT_DIR"), "/gantry.v1.serde.rs"));
}

pub mod internal {
    pub mod v1 {
        tonic::include_proto!("gantry.internal.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Gantry proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gantry_descriptor");

/// Response metadata a follower adds to a write it forwarded: the leader's
/// address as the replicas know it (`host:port`). The Gantry client sends its
/// next calls there when that address is in its list, saving the follower
/// hop; any other client may ignore it.
pub const LEADER_HINT: &str = "x-gantry-leader";

pub mod codec;
pub mod transport;
