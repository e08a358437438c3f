//! The ONE table from internal errors to etcd's gRPC status: code and exact
//! message, because clients match on the text (etcd `rpctypes/error.go`).

use mainstay_auth::AuthError;
use mainstay_mvcc::MvccError;
use mainstay_raft::{MembershipError, ReplicaError};
use tonic::{Code, Status};

/// Errors raised by the API layer itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// Bad sort order or target enum.
    InvalidSortOption,
    /// Encoded request larger than `--max-request-bytes`.
    RequestTooLarge,
    /// A member id that is not in the cluster.
    MemberNotFound,
    /// A leader transfer to a non-voter or unknown member.
    BadLeaderTransferee,
    /// A leader-only operation on a follower.
    NotLeader,
    /// The apply backlog or the in-flight proposal pool is full.
    TooManyRequests,
    /// Member peer URLs that are not `http(s)://host:port`.
    InvalidMemberUrls,
}

/// Errors of etcd's server-side recipes (the Lock and Election services).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipeError {
    /// Proclaim by a caller whose leader key is gone or was re-created, or a
    /// Campaign whose own key vanished while it waited (etcd's
    /// `concurrency.ErrElectionNotLeader`).
    ElectionNotLeader,
    /// Leader of an election nobody leads (`concurrency.ErrElectionNoLeader`).
    ElectionNoLeader,
    /// Proclaim or Resign without its `leader` field (`v3election.ErrMissingLeaderKey`).
    MissingLeaderKey,
    /// A Lock waiter whose own key was deleted (its lease expired or was
    /// revoked) before its turn came (etcd 3.5's `concurrency.ErrSessionExpired`).
    SessionExpired,
}

/// Maps a recipe error. etcd serves Lock and Election through an embedded Go
/// client whose errors are plain Go errors, so every failure of these services
/// reaches the client with code Unknown and etcd's text (checked against etcd
/// 3.4.23).
pub fn recipe_status(error: RecipeError) -> Status {
    let message = match error {
        RecipeError::ElectionNotLeader => "election: not leader",
        RecipeError::ElectionNoLeader => "election: no leader",
        RecipeError::MissingLeaderKey => "\"leader\" field must be provided",
        RecipeError::SessionExpired => "mutex: session is expired",
    };
    Status::new(Code::Unknown, message)
}

/// Re-codes any status a recipe RPC ends with as etcd does (see
/// `recipe_status`): same message, code Unknown. A lease the Lock caller named
/// but that does not exist is thus Unknown `etcdserver: requested lease not
/// found`, as etcd answers it.
pub fn as_recipe_status(status: Status) -> Status {
    Status::new(Code::Unknown, status.message())
}

/// Maps a keyspace error.
pub fn mvcc_status(error: &MvccError) -> Status {
    let (code, message) = match error {
        MvccError::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
        MvccError::KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
        MvccError::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
        MvccError::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
        MvccError::TooManyOps => (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
        MvccError::DuplicateKey => (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        MvccError::Compacted => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        MvccError::FutureRevision => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        MvccError::LeaseNotFound => (Code::NotFound, "etcdserver: requested lease not found"),
        MvccError::LeaseExists => (Code::FailedPrecondition, "etcdserver: lease already exists"),
        MvccError::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
        MvccError::NoSpace => (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        MvccError::Corrupt => (Code::DataLoss, "etcdserver: corrupt cluster"),
        MvccError::Auth(error) => return auth_status(*error),
        // Not etcd's: this member's disk failed it (the member stops).
        MvccError::ValueUnreadable(reason) => {
            return Status::new(
                Code::Internal,
                format!("mainstay: cannot read a value from the state store: {reason}"),
            );
        }
    };
    Status::new(code, message)
}

/// Maps an auth error (etcd's codes and exact messages).
pub fn auth_status(error: AuthError) -> Status {
    use AuthError::*;
    let (code, message) = match error {
        RootUserNotExist => (
            Code::FailedPrecondition,
            "etcdserver: root user does not exist",
        ),
        RootRoleNotExist => (
            Code::FailedPrecondition,
            "etcdserver: root user does not have root role",
        ),
        UserAlreadyExist => (
            Code::FailedPrecondition,
            "etcdserver: user name already exists",
        ),
        UserEmpty => (Code::InvalidArgument, "etcdserver: user name is empty"),
        UserNotFound => (Code::FailedPrecondition, "etcdserver: user name not found"),
        RoleAlreadyExist => (
            Code::FailedPrecondition,
            "etcdserver: role name already exists",
        ),
        RoleNotFound => (Code::FailedPrecondition, "etcdserver: role name not found"),
        RoleEmpty => (Code::InvalidArgument, "etcdserver: role name is empty"),
        AuthFailed => (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password",
        ),
        PermissionDenied => (Code::PermissionDenied, "etcdserver: permission denied"),
        RoleNotGranted => (
            Code::FailedPrecondition,
            "etcdserver: role is not granted to the user",
        ),
        PermissionNotGranted => (
            Code::FailedPrecondition,
            "etcdserver: permission is not granted to the role",
        ),
        PermissionNotGiven => (Code::InvalidArgument, "etcdserver: permission not given"),
        AuthNotEnabled => (
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled",
        ),
        OldRevision => (
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old",
        ),
        InvalidAuthToken => (Code::Unauthenticated, "etcdserver: invalid auth token"),
        InvalidAuthMgmt => (Code::InvalidArgument, "etcdserver: invalid auth management"),
    };
    Status::new(code, message)
}

/// A command answered with another kind of response than it asked for (a bug;
/// logged, and the client gets an internal error).
pub(crate) fn unexpected(response: &mainstay_mvcc::CommandResponse) -> Status {
    tracing::error!(?response, "command answered with the wrong response kind");
    Status::internal("etcdserver: unexpected response")
}

/// Maps a replication error.
pub fn replica_status(error: &ReplicaError) -> Status {
    let message = match error {
        ReplicaError::NoLeader => "etcdserver: no leader",
        ReplicaError::LeaderChanged => "etcdserver: leader changed",
        ReplicaError::Timeout => "etcdserver: request timed out",
        ReplicaError::Stopped => "etcdserver: server stopped",
    };
    Status::new(Code::Unavailable, message)
}

/// Maps a membership change error.
pub fn membership_status(error: &MembershipError) -> Status {
    let (code, message) = match error {
        MembershipError::NotFound => return api_status(ApiError::MemberNotFound),
        MembershipError::PeerUrlsExist => (
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        ),
        MembershipError::NotLearner => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        ),
        MembershipError::LearnerNotReady => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        MembershipError::TooManyLearners => (
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster",
        ),
        MembershipError::NotEnoughStarted => (
            Code::FailedPrecondition,
            "etcdserver: re-configuration failed due to not enough started members",
        ),
        MembershipError::Replica(error) => return replica_status(error),
    };
    Status::new(code, message)
}

/// Maps an API-layer error.
pub fn api_status(error: ApiError) -> Status {
    let (code, message) = match error {
        ApiError::InvalidSortOption => (Code::InvalidArgument, "etcdserver: invalid sort option"),
        ApiError::RequestTooLarge => (Code::InvalidArgument, "etcdserver: request is too large"),
        ApiError::MemberNotFound => (Code::NotFound, "etcdserver: member not found"),
        ApiError::BadLeaderTransferee => (
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        ),
        ApiError::NotLeader => (Code::FailedPrecondition, "etcdserver: not leader"),
        ApiError::TooManyRequests => (Code::ResourceExhausted, "etcdserver: too many requests"),
        ApiError::InvalidMemberUrls => (
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ),
    };
    Status::new(code, message)
}

/// An RPC this version does not implement yet: Unimplemented, nothing changed.
pub fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "etcdserver: {what} is not supported by this mainstay version"
    ))
}
