//! Compiles the vendored etcd v3 KV subset (`proto/etcd/kv.proto`) with protox
//! (pure Rust, no system `protoc`). `titan-bench --target etcd` uses it to load
//! an etcd cluster for comparison. Titan's own protos come from `titan-proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd/kv.proto");
    let fds = protox::compile(["etcd/kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
