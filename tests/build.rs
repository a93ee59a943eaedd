//! Compiles the CRI subset in `proto/` (a client only) with the pure-Rust
//! `protox` parser, as kubernetes/build.rs does.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/cri/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
