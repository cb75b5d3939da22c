//! Compiles the .proto files with protox (pure Rust, no system `protoc`) and
//! writes the descriptor set next to the generated code for gRPC reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "gantry/v1/jobs.proto",
        "gantry/v1/cluster.proto",
        "gantry/v1/agent.proto",
        "gantry/v1/nodes.proto",
        "gantry/internal/v1/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let encoded = fds.encode_to_vec();
    std::fs::write(out.join("gantry_descriptor.bin"), &encoded)?;
    // Proto3 JSON mapping (enum names, camelCase) for the public API, so
    // `--json` output reads like grpcurl's.
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .build(&[".gantry.v1"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // No generated `connect` constructors: channels come from
        // `transport::Transport`, and AgentService has an RPC named Connect.
        .build_transport(false)
        // prost's codec with smaller starting buffers (see src/codec.rs).
        .codec_path("crate::codec::GantryCodec")
        .compile_fds(fds)?;
    Ok(())
}
