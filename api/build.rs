//! Generates the tonic/prost code from `proto/` with protox, a pure-Rust
//! protobuf compiler, so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/weft/v1/identity.proto",
        "proto/weft/v1/discovery.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
