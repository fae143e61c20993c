//! Titan's wire contract: the `titan.v1` protobuf package (KV, Admin and Raft
//! services) compiled with protox + tonic-prost-build at build time.

/// Package `titan.v1`.
pub mod v1 {
    tonic::include_proto!("titan.v1");
}
