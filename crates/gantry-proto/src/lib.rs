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

pub mod codec;
pub mod transport;
