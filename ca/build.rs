//! Generates the Istio CA API messages, server and client from `proto/ca.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/ca.proto"], &["proto"])?;
    Ok(())
}
