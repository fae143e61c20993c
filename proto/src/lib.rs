//! Titan's wire contract: the `titan.v1` protobuf package (KV, Admin and Raft
//! services) and etcd's v3 client API (`etcdserverpb`, `mvccpb`), compiled
//! with protox + tonic-prost-build at build time.

// Generated code: its documentation is the .proto comments, and its
// service dispatch functions are as long as the services are wide, so the
// workspace's `missing_docs` and `too_many_lines` lints do not apply to it.

/// Package `titan.v1`.
#[allow(missing_docs, clippy::too_many_lines)]
pub mod v1 {
    tonic::include_proto!("titan.v1");
}

/// etcd's MVCC types (package `mvccpb`): `KeyValue`, `Event`.
#[allow(missing_docs, clippy::too_many_lines)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's v3 client API (package `etcdserverpb`): KV, Watch, Lease, Cluster,
/// Maintenance.
#[allow(missing_docs, clippy::too_many_lines)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
