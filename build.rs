//! Compiles `proto/itc/v1/*.proto` with `protox` (no system `protoc`) and generates the
//! prost messages and tonic stubs with `tonic-prost-build`. The encoded descriptor set is
//! written to `OUT_DIR/itc_descriptor.bin` for server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Neither protox nor tonic-prost-build prints this: without it schema edits are
    // ignored by incremental builds.
    println!("cargo:rerun-if-changed=proto");

    let mut files: Vec<PathBuf> = std::fs::read_dir("proto/itc/v1")?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();

    let fds = protox::compile(&files, ["proto"])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // compile_fds does not write `file_descriptor_set_path`: encode it ourselves.
    std::fs::write(out_dir.join("itc_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // The protocol crate carries no transport: clients and servers bring their own.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
