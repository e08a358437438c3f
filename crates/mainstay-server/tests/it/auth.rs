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
        value: b"v".to_vec().into(),
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
        member.args.auth_token_ttl = Some(3);
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
    tokio::time::sleep(Duration::from_secs(4)).await;
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

/// Adds root and rw (read-write on [a, b)) and turns auth on, as nobody.
async fn enable_with_rw(channel: &Channel) {
    use authpb::permission::Type;
    let mut auth = AuthClient::new(channel.clone());
    for (user, role) in [("root", "root"), ("rw", "rw")] {
        auth.user_add(pb::AuthUserAddRequest {
            name: user.into(),
            password: format!("{user}-pw"),
            ..Default::default()
        })
        .await
        .expect("user add");
        if role != "root" {
            auth.role_add(pb::AuthRoleAddRequest { name: role.into() })
                .await
                .expect("role add");
            auth.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
                name: role.into(),
                perm: Some(permission(Type::Readwrite, "a", "b")),
            })
            .await
            .expect("grant");
        }
        auth.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .expect("grant role");
    }
    auth.auth_enable(pb::AuthEnableRequest {})
        .await
        .expect("enable");
}

trait Served {
    fn answered_or(self, code: Code) -> bool;
}

impl<T> Served for Result<T, Status> {
    fn answered_or(self, code: Code) -> bool {
        match self {
            Ok(_) => true,
            Err(status) => status.code() == code,
        }
    }
}

async fn put_as(channel: &Channel, key: &str, token: Option<&str>) -> Result<(), Status> {
    done(
        KvClient::new(channel.clone())
            .put(with(put(key, false, 0), token))
            .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_work_on_every_member_and_go_stale_on_auth_changes() {
    // Method: three members signing ES256 tokens with one key (the public half
    // given as a certificate, as etcd's e2e does with RS256); a token from one
    // member is used at the others, then an auth change makes it stale, then
    // a forged one is refused.
    let mut cluster = TestCluster::prepare(3, Options::default()).await;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["jwt".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let dir = cluster.root.join("jwt");
    std::fs::create_dir_all(&dir).expect("dir");
    let private = crate::tls::write(&dir, "jwt.key", &key.serialize_pem());
    let public = crate::tls::write(&dir, "jwt.crt", &cert.pem());
    for member in &mut cluster.members {
        member.args.auth_token = Some(format!(
            "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=60s",
            public.display(),
            private.display()
        ));
        member.args.bcrypt_cost = Some(4);
    }
    for i in 0..3 {
        cluster.start_member(i).await;
    }
    cluster.wait_for_leader().await;
    let channels = [
        channel(&cluster, 0).await,
        channel(&cluster, 1).await,
        channel(&cluster, 2).await,
    ];
    enable_with_rw(&channels[0]).await;
    let token = login(&channels[0], "rw").await;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    for channel in &channels {
        put_as(channel, "a0", Some(&token))
            .await
            .expect("a JWT from one member works at every member");
        let denied = put_as(channel, "x0", Some(&token)).await.expect_err("x0");
        assert_eq!(denied.code(), Code::PermissionDenied);
    }
    // Any auth change: a JWT carries its revision, and is now stale.
    let root = login(&channels[1], "root").await;
    AuthClient::new(channels[1].clone())
        .role_add(with(
            pb::AuthRoleAddRequest { name: "new".into() },
            Some(&root),
        ))
        .await
        .expect("role add");
    let stale = put_as(&channels[2], "a0", Some(&token))
        .await
        .expect_err("stale");
    assert_eq!(
        (stale.code(), stale.message()),
        (
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old"
        )
    );
    let fresh = login(&channels[2], "rw").await;
    put_as(&channels[0], "a0", Some(&fresh))
        .await
        .expect("a new login works");
    let mut forged = fresh.clone();
    forged.pop();
    forged.push(if fresh.ends_with('A') { 'B' } else { 'A' });
    let refused = put_as(&channels[0], "a0", Some(&forged))
        .await
        .expect_err("forged");
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificates_common_name_is_the_user() {
    // Method: one member with --client-cert-auth; clients present certificates
    // named rw, root and a user that does not exist; a token overrides the name.
    use crate::tls::{Usage, ca, leaf, write};
    let authority = ca("test CA");
    let server = leaf(&authority, "member", 1, Usage::Server, false);
    let mut cluster = TestCluster::prepare(1, Options::default()).await;
    let files = cluster.root.join("pki");
    std::fs::create_dir_all(&files).expect("pki dir");
    let port = cluster.members[0].client_port;
    {
        let args = &mut cluster.members[0].args;
        args.listen_client_urls = Some(format!("https://127.0.0.1:{port}"));
        args.advertise_client_urls = Some(format!("https://127.0.0.1:{port}"));
        args.cert_file = Some(write(&files, "server.pem", &server.cert));
        args.key_file = Some(write(&files, "server-key.pem", &server.key));
        args.trusted_ca_file = Some(write(&files, "ca.pem", &authority.pem));
        args.client_cert_auth = Some(true);
        args.bcrypt_cost = Some(4);
    }
    cluster.start_member(0).await;
    let connect = async |cn: &str, serial: u64| {
        let identity = leaf(&authority, cn, serial, Usage::Client, false);
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&authority.pem))
            .domain_name("localhost")
            .identity(tonic::transport::Identity::from_pem(
                &identity.cert,
                &identity.key,
            ));
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect_timeout(Duration::from_secs(5));
        for _ in 0..100 {
            // Served: an answer, or a refusal by auth (a stranger's).
            if let Ok(channel) = endpoint.connect().await
                && MaintenanceClient::new(channel.clone())
                    .status(pb::StatusRequest {})
                    .await
                    .answered_or(Code::PermissionDenied)
            {
                return channel;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("member never served {cn}");
    };
    let root_cert = connect("root", 10).await;
    enable_with_rw(&root_cert).await;
    let rw_cert = connect("rw", 11).await;
    put_as(&rw_cert, "a0", None)
        .await
        .expect("rw's certificate may write a0");
    let denied = put_as(&rw_cert, "x0", None).await.expect_err("x0");
    assert_eq!(denied.code(), Code::PermissionDenied);
    put_as(&root_cert, "x0", None)
        .await
        .expect("root's certificate may write anything");
    AuthClient::new(root_cert.clone())
        .user_list(pb::AuthUserListRequest {})
        .await
        .expect("root's certificate administers");
    let stranger = connect("mallory", 12).await;
    let denied = put_as(&stranger, "a0", None)
        .await
        .expect_err("unknown user");
    assert_eq!(denied.code(), Code::PermissionDenied);
    // A token wins over the certificate's name (etcd).
    let token = login(&rw_cert, "root").await;
    put_as(&rw_cert, "x1", Some(&token))
        .await
        .expect("root's token on rw's connection");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_survives_restarts_and_reaches_a_member_by_snapshot() {
    // Method: a member is down while auth is set up and the log moves past
    // what the others keep; it comes back by snapshot and enforces the same
    // permissions on its own (serializable reads). Then every member restarts
    // and auth is still on, with the same users.
    let mut cluster = TestCluster::start(
        3,
        Options {
            snapshot_count: 20,
            snapshot_catchup_entries: 5,
            ..Options::default()
        },
    )
    .await;
    let leader = cluster.wait_for_leader().await;
    let down = (leader + 1) % 3;
    let up = (leader + 2) % 3;
    cluster.stop_member(down).await.expect("stop");
    let channel_up = channel(&cluster, leader).await;
    enable_with_rw(&channel_up).await;
    let root = login(&channel_up, "root").await;
    for i in 0..60 {
        put_as(&channel_up, &format!("x{i}"), Some(&root))
            .await
            .expect("put as root");
    }
    cluster.start_member(down).await;
    let channel_down = channel(&cluster, down).await;
    let serializable = |key: &str| pb::RangeRequest {
        key: key.into(),
        serializable: true,
        ..Default::default()
    };
    // Wait until it has the last write (through the snapshot and the log).
    // Its tokens are its own logins since it came back: root logs in there.
    let mut caught_up = false;
    for _ in 0..100 {
        let Ok(root) = AuthClient::new(channel_down.clone())
            .authenticate(pb::AuthenticateRequest {
                name: "root".into(),
                password: "root-pw".into(),
            })
            .await
            .map(|r| r.into_inner().token)
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let got = KvClient::new(channel_down.clone())
            .range(with(serializable("x59"), Some(&root)))
            .await;
        if got.is_ok_and(|r| r.into_inner().count == 1) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(caught_up, "the member came back");
    let rw = login(&channel_down, "rw").await;
    let mut kv = KvClient::new(channel_down.clone());
    let denied = kv
        .range(with(serializable("x1"), Some(&rw)))
        .await
        .expect_err("rw may not read x1 on the member that came back");
    assert_eq!(denied.code(), Code::PermissionDenied);
    kv.range(with(serializable("a0"), Some(&rw)))
        .await
        .expect("rw may read a0 there");
    let _ = up;
    for i in 0..3 {
        cluster.stop_member(i).await.expect("stop");
    }
    for i in 0..3 {
        cluster.start_member(i).await;
    }
    // (Status needs a user now: wait for a leader by logging in.)
    let channel_again = channel(&cluster, down).await;
    let mut logged_in = None;
    for _ in 0..100 {
        if let Ok(r) = AuthClient::new(channel_again.clone())
            .authenticate(pb::AuthenticateRequest {
                name: "rw".into(),
                password: "rw-pw".into(),
            })
            .await
        {
            logged_in = Some(r.into_inner().token);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged_in.is_some(), "the restarted cluster serves logins");
    let refused = KvClient::new(channel_again.clone())
        .range(serializable("a0"))
        .await
        .expect_err("auth is still on");
    assert_eq!(refused.message(), "etcdserver: user name is empty");
    let stale = put_as(&channel_again, "a0", Some(&rw))
        .await
        .expect_err("old token");
    assert_eq!(
        (stale.code(), stale.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token"),
        "a restart forgets simple tokens"
    );
    let rw = login(&channel_again, "rw").await;
    put_as(&channel_again, "a0", Some(&rw))
        .await
        .expect("the same user logs in again");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_slow_down_later_attempts() {
    // Method: wrong passwords for one user until logins are refused for a
    // while, even the right one; after the wait, the right one works.
    let mut cluster = TestCluster::prepare(1, Options::default()).await;
    cluster.members[0].args.bcrypt_cost = Some(4);
    cluster.start_member(0).await;
    cluster.wait_for_leader().await;
    let channel = channel(&cluster, 0).await;
    enable_with_rw(&channel).await;
    let mut auth = AuthClient::new(channel.clone());
    let attempt = |password: &str| pb::AuthenticateRequest {
        name: "rw".into(),
        password: password.into(),
    };
    let mut refusals = Vec::new();
    for _ in 0..8 {
        let status = auth
            .authenticate(attempt("wrong"))
            .await
            .expect_err("wrong");
        refusals.push((status.code(), status.message().to_string()));
    }
    let failed = (
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password".to_string(),
    );
    let throttled = (
        Code::ResourceExhausted,
        "etcdserver: too many requests".to_string(),
    );
    assert!(refusals[..5].iter().all(|r| *r == failed), "{refusals:?}");
    assert!(refusals.contains(&throttled), "{refusals:?}");
    let right = auth
        .authenticate(attempt("rw-pw"))
        .await
        .expect_err("throttled");
    assert_eq!(right.code(), Code::ResourceExhausted);
    tokio::time::sleep(Duration::from_secs(1)).await;
    auth.authenticate(attempt("rw-pw"))
        .await
        .expect("the right password after the wait");
    cluster.shutdown().await;
}
