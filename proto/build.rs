//! Compiles `strata/v1/*.proto` with `protox` (pure Rust, so no `protoc`
//! binary is needed on the build machine) and generates tonic code from the
//! resulting descriptor set, which is also kept for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["strata/v1/store.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("strata_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".strata.v1.Chunk.data")
        .compile_fds(fds)?;
    Ok(())
}
