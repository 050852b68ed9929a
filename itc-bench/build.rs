//! Compiles the raw-tonic baseline's schema with `protox` (no system `protoc`). It reuses
//! the `itc.v1` messages, so the baseline moves exactly the bytes ITC moves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=../proto");
    let fds = protox::compile(["itc/bench/v1/baseline.proto"], ["proto", "../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".itc.v1", "::itc_proto::v1")
        .compile_fds(fds)?;
    Ok(())
}
