//! Wire types generated from `proto/`: etcd's v3 API (`etcdserverpb`, `mvccpb`,
//! `authpb`, and the server-side recipes `v3lockpb` and `v3electionpb`) and
//! Mainstay's peer protocol (`mainstay.peer`). No hand-written
//! logic lives here; conversions to domain types belong to the crates that use them.

#![allow(missing_docs, clippy::all)]

/// etcd's multi-version key-value messages.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's auth messages.
pub mod authpb {
    tonic::include_proto!("authpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's v3 services and messages.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd's server-side lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's server-side election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// Mainstay's member-to-member protocol.
pub mod peer {
    tonic::include_proto!("mainstay.peer");
}
