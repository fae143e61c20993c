//! Compiles `titan/v1/*.proto` and etcd's v3 API (`etcd/...`) with protox
//! (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "titan/v1/kv.proto",
        "titan/v1/admin.proto",
        "titan/v1/raft.proto",
        "etcd/mvccpb/kv.proto",
        "etcd/etcdserverpb/rpc.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
