//! Titan's wire contract: the `titan.v1` protobuf package (KV, Admin and Raft
//! services) and etcd's v3 client API (`etcdserverpb`, `mvccpb`), compiled
//! with protox + tonic-prost-build at build time.

/// Package `titan.v1`.
pub mod v1 {
    tonic::include_proto!("titan.v1");
}

/// etcd's MVCC types (package `mvccpb`): `KeyValue`, `Event`.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's v3 client API (package `etcdserverpb`): KV, Watch, Lease, Cluster,
/// Maintenance.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
