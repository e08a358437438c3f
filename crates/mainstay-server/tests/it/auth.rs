//! Auth over the wire: the authorization matrix (every RPC of every service ×
//! every kind of caller, with etcd's code and message), tokens across
//! members, JWT, a client certificate's common name as the user, and auth
//! state that survives a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use mainstay_proto::authpb;
use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::etcdserverpb::auth_client::AuthClient;
use mainstay_proto::etcdserverpb::cluster_client::ClusterClient;
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::lease_client::LeaseClient;
use mainstay_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use mainstay_proto::etcdserverpb::watch_client::WatchClient;
use mainstay_proto::v3electionpb;
use mainstay_proto::v3electionpb::election_client::ElectionClient;
use mainstay_proto::v3lockpb;
use mainstay_proto::v3lockpb::lock_client::LockClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::harness::{Options, TestCluster};

/// How a call ended, as far as auth is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    /// Served, or refused for a reason that is not auth's (the check passed).
    Allowed,
    /// InvalidArgument `etcdserver: user name is empty`.
    Empty,
    /// Unauthenticated `etcdserver: invalid auth token`.
    Invalid,
    /// PermissionDenied `etcdserver: permission denied`.
    Denied,
}

fn classify(result: Result<(), Status>) -> Got {
    let Err(status) = result else {
        return Got::Allowed;
    };
    match (status.code(), status.message()) {
        (Code::InvalidArgument, "etcdserver: user name is empty") => Got::Empty,
        (Code::Unauthenticated, "etcdserver: invalid auth token") => Got::Invalid,
        (Code::PermissionDenied, "etcdserver: permission denied") => Got::Denied,
        // The Lock and Election services answer every error with code
        // Unknown and the message (etcd serves them through a Go client).
        (Code::Unknown, "etcdserver: user name is empty") => Got::Empty,
        (Code::Unknown, "etcdserver: invalid auth token") => Got::Invalid,
        (Code::Unknown, "etcdserver: permission denied") => Got::Denied,
        (code, message) => {
            assert!(
                !matches!(code, Code::PermissionDenied | Code::Unauthenticated)
                    && !message.contains("user name is empty")
                    && !message.contains("revision of auth store"),
                "an auth refusal in another form: {code:?} {message:?}"
            );
            Got::Allowed
        }
    }
}

/// A watch refused at create carries the status in words (etcd's form).
fn classify_reason(reason: &str) -> Got {
    match reason {
        "" => Got::Allowed,
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied" => Got::Denied,
        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token" => Got::Invalid,
        "rpc error: code = InvalidArgument desc = etcdserver: user name is empty" => Got::Empty,
        other => panic!("unexpected cancel reason {other:?}"),
    }
}

fn done<T>(result: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    result.map(drop)
}

fn with<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("token", token.parse().expect("token metadata"));
    }
    request
}

fn put(key: &str, prev_kv: bool, lease: i64) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        prev_kv,
        lease,
        ..Default::default()
    }
}

fn op_put(key: &str, prev_kv: bool) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(put(key, prev_kv, 0))),
    }
}

fn compare_a0() -> pb::Compare {
    pb::Compare {
        key: b"a0".to_vec(),
        target: pb::compare::CompareTarget::Version as i32,
        result: pb::compare::CompareResult::Greater as i32,
        target_union: Some(pb::compare::TargetUnion::Version(-1)),
        ..Default::default()
    }
}

/// Every request of the matrix.
#[derive(Clone, Copy, Debug)]
enum Call {
    RangeA0,
    RangeAToC,
    PutA0,
    PutA0PrevKv,
    DeleteA0,
    DeleteA0PrevKv,
    PutA2OnLeaseOfX1,
    TxnCompareA0PutA0,
    TxnNestedPutX0,
    TxnFailureBranchPutX0,
    TxnPutA0PrevKv,
    TxnReadOnlyA0,
    Compact,
    WatchA0,
    WatchFromKeyA,
    LeaseGrant,
    LeaseRevokeOfA1,
    LeaseTimeToLiveKeysOfX1,
    LeaseTimeToLiveOfX1,
    LeaseLeases,
    LeaseKeepAliveOfA1,
    MemberList,
    MemberAddTakenUrl,
    MemberRemoveUnknown,
    MemberUpdateUnknown,
    MemberPromoteUnknown,
    Status,
    AlarmGet,
    Hash,
    HashKv,
    Defragment,
    Snapshot,
    MoveLeaderUnknown,
    UserAddTaken,
    UserGetSelf,
    UserGetRoot,
    UserList,
    RoleGetRw,
    RoleList,
    RoleAddTaken,
    AuthStatus,
    UserGrantRootRoot,
    ElectionLeaderA,
    UnlockA,
}

const LEASE_X1: i64 = 100;
const LEASE_A1: i64 = 101;

/// Columns: off, no token, expired token, no role, read-only [a,b),
/// write-only [a,b), read-write [x,y), read-write [a,b), root.
/// A allowed, E user name is empty, X invalid token, D permission denied.
const MATRIX: &[(Call, &str)] = &[
    (Call::RangeA0, "AEXDADDAA"),
    (Call::RangeAToC, "AEXDDDDDA"),
    (Call::PutA0, "AEXDDADAA"),
    (Call::PutA0PrevKv, "AEXDDDDAA"),
    (Call::DeleteA0, "AEXDDADAA"),
    (Call::DeleteA0PrevKv, "AEXDDDDAA"),
    (Call::PutA2OnLeaseOfX1, "AEXDDDDDA"),
    (Call::TxnCompareA0PutA0, "AEXDDDDAA"),
    (Call::TxnNestedPutX0, "AEXDDDADA"),
    (Call::TxnFailureBranchPutX0, "AEXDDDDDA"),
    (Call::TxnPutA0PrevKv, "AEXDDDDAA"),
    (Call::TxnReadOnlyA0, "AEXDADDAA"),
    (Call::Compact, "AEXDDDDDA"),
    (Call::WatchA0, "AEXDADDAA"),
    (Call::WatchFromKeyA, "AEXDDDDDA"),
    (Call::LeaseGrant, "AEXAAAAAA"),
    (Call::LeaseRevokeOfA1, "AEXDDADAA"),
    (Call::LeaseTimeToLiveKeysOfX1, "AEXDDDADA"),
    (Call::LeaseTimeToLiveOfX1, "AEXAAAAAA"),
    (Call::LeaseLeases, "AEXDDDDDA"),
    (Call::LeaseKeepAliveOfA1, "AEXDDADAA"),
    (Call::MemberList, "AEXAAAAAA"),
    (Call::MemberAddTakenUrl, "AEXDDDDDA"),
    (Call::MemberRemoveUnknown, "AEXDDDDDA"),
    (Call::MemberUpdateUnknown, "AEXDDDDDA"),
    (Call::MemberPromoteUnknown, "AEXDDDDDA"),
    (Call::Status, "AEXAAAAAA"),
    (Call::AlarmGet, "AEXAAAAAA"),
    (Call::Hash, "AEXDDDDDA"),
    (Call::HashKv, "AEXDDDDDA"),
    (Call::Defragment, "AEXDDDDDA"),
    (Call::Snapshot, "AEXDDDDDA"),
    (Call::MoveLeaderUnknown, "AEXDDDDDA"),
    (Call::UserAddTaken, "AEXDDDDDA"),
    (Call::UserGetSelf, "AEXAAAAAA"),
    (Call::UserGetRoot, "AEXDDDDDA"),
    (Call::UserList, "AEXDDDDDA"),
    (Call::RoleGetRw, "AEXDDDDAA"),
    (Call::RoleList, "AEXDDDDDA"),
    (Call::RoleAddTaken, "AEXDDDDDA"),
    (Call::AuthStatus, "AEXDDDDDA"),
    (Call::UserGrantRootRoot, "AEXDDDDDA"),
    (Call::ElectionLeaderA, "AEXDADDAA"),
    (Call::UnlockA, "AEXDDADAA"),
];

/// The users behind the columns after the first three, and their roles.
const USERS: &[(&str, &str)] = &[
    ("norole", ""),
    ("ro", "ro"),
    ("wo", "wo"),
    ("other", "other"),
    ("rw", "rw"),
    ("root", "root"),
];

struct Target {
    channel: Channel,
    peer_url: String,
}

async fn run(call: Call, target: &Target, token: Option<&str>, user: &str) -> Got {
    let channel = target.channel.clone();
    let mut kv = KvClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel.clone());
    let mut cluster = ClusterClient::new(channel.clone());
    let mut maintenance = MaintenanceClient::new(channel.clone());
    let mut auth = AuthClient::new(channel.clone());
    let t = token;
    let txn = |compare: Vec<pb::Compare>, success, failure| pb::TxnRequest {
        compare,
        success,
        failure,
    };
    let result: Result<(), Status> = match call {
        Call::RangeA0 => done(
            kv.range(with(
                pb::RangeRequest {
                    key: b"a0".to_vec(),
                    ..Default::default()
                },
                t,
            ))
            .await,
        ),
        Call::RangeAToC => done(
            kv.range(with(
                pb::RangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"c".to_vec(),
                    ..Default::default()
                },
                t,
            ))
            .await,
        ),
        Call::PutA0 => done(kv.put(with(put("a0", false, 0), t)).await),
        Call::PutA0PrevKv => done(kv.put(with(put("a0", true, 0), t)).await),
        Call::DeleteA0 | Call::DeleteA0PrevKv => done(
            kv.delete_range(with(
                pb::DeleteRangeRequest {
                    key: b"a0".to_vec(),
                    prev_kv: matches!(call, Call::DeleteA0PrevKv),
                    ..Default::default()
                },
                t,
            ))
            .await,
        ),
        Call::PutA2OnLeaseOfX1 => done(kv.put(with(put("a2", false, LEASE_X1), t)).await),
        Call::TxnCompareA0PutA0 => done(
            kv.txn(with(
                txn(vec![compare_a0()], vec![op_put("a0", false)], vec![]),
                t,
            ))
            .await,
        ),
        Call::TxnNestedPutX0 => {
            let nested = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestTxn(txn(
                    vec![],
                    vec![op_put("x0", false)],
                    vec![],
                ))),
            };
            done(kv.txn(with(txn(vec![], vec![nested], vec![]), t)).await)
        }
        Call::TxnFailureBranchPutX0 => done(
            kv.txn(with(
                txn(
                    vec![compare_a0()],
                    vec![op_put("a0", false)],
                    vec![op_put("x0", false)],
                ),
                t,
            ))
            .await,
        ),
        Call::TxnPutA0PrevKv => done(
            kv.txn(with(txn(vec![], vec![op_put("a0", true)], vec![]), t))
                .await,
        ),
        Call::TxnReadOnlyA0 => {
            let range = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: b"a0".to_vec(),
                    ..Default::default()
                })),
            };
            done(kv.txn(with(txn(vec![], vec![range], vec![]), t)).await)
        }
        Call::Compact => done(
            kv.compact(with(
                pb::CompactionRequest {
                    revision: 1,
                    physical: false,
                },
                t,
            ))
            .await,
        ),
        Call::WatchA0 | Call::WatchFromKeyA => {
            let (key, range_end) = match call {
                Call::WatchA0 => (b"a0".to_vec(), Vec::new()),
                _ => (b"a".to_vec(), vec![0]),
            };
            let create = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key,
                        range_end,
                        ..Default::default()
                    },
                )),
            };
            let (sender, receiver) = tokio::sync::mpsc::channel(1);
            sender.send(create).await.expect("queue create");
            let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
            let mut watch = WatchClient::new(channel.clone());
            let mut responses = match watch.watch(with(stream, t)).await {
                Ok(responses) => responses.into_inner(),
                Err(status) => return classify(Err(status)),
            };
            let first = responses
                .message()
                .await
                .expect("watch answer")
                .expect("watch response");
            drop(sender);
            assert!(first.created, "a create is answered with created");
            return classify_reason(&first.cancel_reason);
        }
        Call::LeaseGrant => done(
            lease
                .lease_grant(with(pb::LeaseGrantRequest { ttl: 60, id: 0 }, t))
                .await,
        ),
        Call::LeaseRevokeOfA1 => done(
            lease
                .lease_revoke(with(pb::LeaseRevokeRequest { id: LEASE_A1 }, t))
                .await,
        ),
        Call::LeaseTimeToLiveKeysOfX1 | Call::LeaseTimeToLiveOfX1 => done(
            lease
                .lease_time_to_live(with(
                    pb::LeaseTimeToLiveRequest {
                        id: LEASE_X1,
                        keys: matches!(call, Call::LeaseTimeToLiveKeysOfX1),
                    },
                    t,
                ))
                .await,
        ),
        Call::LeaseLeases => done(lease.lease_leases(with(pb::LeaseLeasesRequest {}, t)).await),
        Call::LeaseKeepAliveOfA1 => {
            let requests = futures::stream::iter(vec![pb::LeaseKeepAliveRequest { id: LEASE_A1 }]);
            match lease.lease_keep_alive(with(requests, t)).await {
                Ok(responses) => {
                    let mut responses = responses.into_inner();
                    match responses.message().await {
                        Ok(_) => Ok(()),
                        Err(status) => Err(status),
                    }
                }
                Err(status) => Err(status),
            }
        }
        Call::MemberList => done(
            cluster
                .member_list(with(pb::MemberListRequest::default(), t))
                .await,
        ),
        Call::MemberAddTakenUrl => done(
            cluster
                .member_add(with(
                    pb::MemberAddRequest {
                        peer_ur_ls: vec![target.peer_url.clone()],
                        is_learner: true,
                    },
                    t,
                ))
                .await,
        ),
        Call::MemberRemoveUnknown => done(
            cluster
                .member_remove(with(pb::MemberRemoveRequest { id: 7 }, t))
                .await,
        ),
        Call::MemberUpdateUnknown => done(
            cluster
                .member_update(with(
                    pb::MemberUpdateRequest {
                        id: 7,
                        peer_ur_ls: vec!["http://127.0.0.1:1".into()],
                    },
                    t,
                ))
                .await,
        ),
        Call::MemberPromoteUnknown => done(
            cluster
                .member_promote(with(pb::MemberPromoteRequest { id: 7 }, t))
                .await,
        ),
        Call::Status => done(maintenance.status(with(pb::StatusRequest {}, t)).await),
        Call::AlarmGet => done(
            maintenance
                .alarm(with(
                    pb::AlarmRequest {
                        action: pb::alarm_request::AlarmAction::Get as i32,
                        ..Default::default()
                    },
                    t,
                ))
                .await,
        ),
        Call::Hash => done(maintenance.hash(with(pb::HashRequest {}, t)).await),
        Call::HashKv => done(
            maintenance
                .hash_kv(with(pb::HashKvRequest { revision: 0 }, t))
                .await,
        ),
        Call::Defragment => done(
            maintenance
                .defragment(with(pb::DefragmentRequest {}, t))
                .await,
        ),
        Call::Snapshot => done(maintenance.snapshot(with(pb::SnapshotRequest {}, t)).await),
        Call::MoveLeaderUnknown => done(
            maintenance
                .move_leader(with(pb::MoveLeaderRequest { target_id: 7 }, t))
                .await,
        ),
        Call::UserAddTaken => done(
            auth.user_add(with(
                pb::AuthUserAddRequest {
                    name: "root".into(),
                    password: "x".into(),
                    ..Default::default()
                },
                t,
            ))
            .await,
        ),
        Call::UserGetSelf => done(
            auth.user_get(with(pb::AuthUserGetRequest { name: user.into() }, t))
                .await,
        ),
        Call::UserGetRoot => done(
            auth.user_get(with(
                pb::AuthUserGetRequest {
                    name: "root".into(),
                },
                t,
            ))
            .await,
        ),
        Call::UserList => done(auth.user_list(with(pb::AuthUserListRequest {}, t)).await),
        Call::RoleGetRw => done(
            auth.role_get(with(pb::AuthRoleGetRequest { role: "rw".into() }, t))
                .await,
        ),
        Call::RoleList => done(auth.role_list(with(pb::AuthRoleListRequest {}, t)).await),
        Call::RoleAddTaken => done(
            auth.role_add(with(pb::AuthRoleAddRequest { name: "rw".into() }, t))
                .await,
        ),
        Call::AuthStatus => done(auth.auth_status(with(pb::AuthStatusRequest {}, t)).await),
        Call::UserGrantRootRoot => done(
            auth.user_grant_role(with(
                pb::AuthUserGrantRoleRequest {
                    user: "root".into(),
                    role: "root".into(),
                },
                t,
            ))
            .await,
        ),
        Call::ElectionLeaderA => done(
            ElectionClient::new(channel.clone())
                .leader(with(
                    v3electionpb::LeaderRequest {
                        name: b"a-election".to_vec(),
                    },
                    t,
                ))
                .await,
        ),
        Call::UnlockA => done(
            LockClient::new(channel.clone())
                .unlock(with(
                    v3lockpb::UnlockRequest {
                        key: b"a-lock/1".to_vec(),
                    },
                    t,
                ))
                .await,
        ),
    };
    classify(result)
}

async fn channel(cluster: &TestCluster, i: usize) -> Channel {
    let url = format!("http://127.0.0.1:{}", cluster.members[i].client_port);
    tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

async fn login(channel: &Channel, user: &str) -> String {
    AuthClient::new(channel.clone())
        .authenticate(pb::AuthenticateRequest {
            name: user.into(),
            password: format!("{user}-pw"),
        })
        .await
        .unwrap_or_else(|e| panic!("login {user}: {e}"))
        .into_inner()
        .token
}

fn permission(kind: authpb::permission::Type, key: &str, end: &str) -> authpb::Permission {
    authpb::Permission {
        perm_type: kind as i32,
        key: key.into(),
        range_end: end.into(),
    }
}

/// Users, roles and permissions of the matrix (auth still off).
async fn create_users(channel: &Channel) {
    use authpb::permission::Type;
    let mut auth = AuthClient::new(channel.clone());
    let roles = [
        ("ro", Type::Read, "a", "b"),
        ("wo", Type::Write, "a", "b"),
        ("other", Type::Readwrite, "x", "y"),
        ("rw", Type::Readwrite, "a", "b"),
    ];
    for (role, kind, key, end) in roles {
        auth.role_add(pb::AuthRoleAddRequest { name: role.into() })
            .await
            .expect("role add");
        auth.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(permission(kind, key, end)),
        })
        .await
        .expect("grant permission");
    }
    for (user, role) in USERS {
        auth.user_add(pb::AuthUserAddRequest {
            name: (*user).into(),
            password: format!("{user}-pw"),
            ..Default::default()
        })
        .await
        .expect("user add");
        if !role.is_empty() {
            auth.user_grant_role(pb::AuthUserGrantRoleRequest {
                user: (*user).into(),
                role: (*role).into(),
            })
            .await
            .expect("grant role");
        }
    }
}

/// Leases 100 (holding x1 alone) and 101 (holding a1) exist again, as root.
async fn reset_leases(channel: &Channel, root: Option<&str>) {
    let mut lease = LeaseClient::new(channel.clone());
    let mut kv = KvClient::new(channel.clone());
    // A row may have attached a2 to lease 100.
    let a2 = pb::DeleteRangeRequest {
        key: b"a2".to_vec(),
        ..Default::default()
    };
    kv.delete_range(with(a2, root)).await.expect("delete a2");
    for (id, key) in [(LEASE_X1, "x1"), (LEASE_A1, "a1")] {
        // "lease already exists" is fine.
        let _ = lease
            .lease_grant(with(pb::LeaseGrantRequest { ttl: 600, id }, root))
            .await;
        kv.put(with(put(key, false, id), root))
            .await
            .expect("put on lease");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix() {
    // Method: a 3-member cluster with short-lived simple tokens; users log in
    // at one member and call another (a follower forwards writes). Each row
    // runs with auth off, then with auth on for each caller: no token, an
    // expired token, a user without roles, read-only, write-only and
    // read-write users on [a, b), a read-write user on [x, y), and root.
    let mut cluster = TestCluster::prepare(3, Options::default()).await;
    for member in &mut cluster.members {
        member.args.auth_token_ttl = Some(2);
        member.args.bcrypt_cost = Some(4);
    }
    for i in 0..3 {
        cluster.start_member(i).await;
    }
    let leader = cluster.wait_for_leader().await;
    let (login_at, call_at) = ((leader + 1) % 3, (leader + 2) % 3);
    let login_channel = channel(&cluster, login_at).await;
    let target = Target {
        channel: channel(&cluster, call_at).await,
        peer_url: format!("http://127.0.0.1:{}", cluster.members[call_at].peer_port),
    };
    create_users(&login_channel).await;
    cluster.put(leader, "a0", "v").await;
    cluster.put(leader, "x1", "v").await;

    let columns = 9;
    let mut got: BTreeMap<usize, Vec<Got>> = BTreeMap::new();
    let mut run_column =
        async |column: usize, token: Option<&str>, user: &str, root: Option<&str>| {
            for (row, (call, _)) in MATRIX.iter().enumerate() {
                reset_leases(&target.channel, root).await;
                let answer = run(*call, &target, token, user).await;
                got.entry(row).or_default().push(answer);
            }
            let _ = column;
        };
    // Auth off: everything passes, a token or not.
    run_column(0, None, "rw", None).await;

    let mut auth = AuthClient::new(login_channel.clone());
    auth.auth_enable(pb::AuthEnableRequest {})
        .await
        .expect("enable");
    let root = login(&login_channel, "root").await;
    run_column(1, None, "", Some(&root)).await;
    let expired = login(&login_channel, "rw").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let root = login(&login_channel, "root").await;
    run_column(2, Some(&expired), "rw", Some(&root)).await;
    for (column, (user, _)) in USERS.iter().enumerate() {
        let root = login(&login_channel, "root").await;
        let token = login(&login_channel, user).await;
        run_column(3 + column, Some(&token), user, Some(&root)).await;
    }

    let letter = |got: &Got| match got {
        Got::Allowed => 'A',
        Got::Empty => 'E',
        Got::Invalid => 'X',
        Got::Denied => 'D',
    };
    let mut wrong = Vec::new();
    for (row, (call, expected)) in MATRIX.iter().enumerate() {
        let answers: String = got[&row].iter().map(letter).collect();
        assert_eq!(answers.len(), columns);
        if answers != *expected {
            wrong.push(format!("{call:?}: expected {expected}, got {answers}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cells wrong:\n{}",
        wrong.len(),
        MATRIX.len() * columns,
        wrong.join("\n")
    );
    cluster.shutdown().await;
}
