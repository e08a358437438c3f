//! Compiles the .proto files under the workspace's `proto/` with protox, so no
//! `protoc` is needed. All files go through one invocation: each package becomes
//! one `<package>.rs`, and a second invocation would overwrite it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "mvccpb/kv.proto",
        "authpb/auth.proto",
        "etcdserverpb/rpc.proto",
        "v3lockpb/v3lock.proto",
        "v3electionpb/v3election.proto",
        "mainstay/peer.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    // JSON for the HTTP gateway (etcd's grpc-gateway: proto3's JSON mapping
    // with the .proto field names, 64-bit integers as strings, bytes as
    // base64, enums by name, unknown fields ignored). Not for peer messages.
    #[cfg(feature = "json")]
    pbjson_build::Builder::new()
        .register_descriptors(&prost::Message::encode_to_vec(&descriptors))?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    tonic_prost_build::configure()
        // Forwarded commands stay shared bytes from the follower's encoder to
        // the leader's log (mainstay-raft's `Proposal`).
        .bytes(".mainstay.peer.ForwardWritesRequest.commands")
        // Values stay shared bytes from the request to the command, and from
        // the keyspace to a response or a watch event (mainstay-mvcc's
        // `KeyValue::value`).
        .bytes(".etcdserverpb.PutRequest.value")
        .bytes(".mvccpb.KeyValue.value")
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
