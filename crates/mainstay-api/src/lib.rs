//! etcd v3 gRPC services over a `Replica`.
//!
//! The only crate (besides clients) that knows etcd's wire types and error
//! strings: requests are converted to domain types on entry (`convert`), and
//! every internal error leaves through one table (`status`).

mod admission;
mod auth;
mod cluster;
mod convert;
mod election;
pub mod etcd_snapshot;
mod identity;
mod jwt;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod quota;
mod recipe;
mod size_limit;
mod status;
mod watch;
mod watch_hub;
mod watch_index;

use mainstay_raft::Replica;

pub use admission::{APPLY_BACKLOG_MAX, Admission, PROPOSALS_IN_FLIGHT_MAX};
pub use auth::AuthService;
pub use cluster::ClusterService;
pub use election::ElectionService;
pub use identity::{AuthOptions, ClientIdentity, HASHING_MAX, SharedAuth, TokenKind};
pub use jwt::{JwtKeys, JwtOptions};
pub use kv::KvService;
pub use lease::LeaseService;
pub use lock::LockService;
pub use maintenance::{ETCD_VERSION, MaintenanceService};
pub use size_limit::{MessageSizeLimit, message_too_large};
pub use status::{
    ApiError, RecipeError, api_status, as_recipe_status, auth_status, membership_status,
    mvcc_status, recipe_status, replica_status,
};
pub use watch::{WATCHERS_PER_STREAM_MAX, WatchService, stream_lags_total};

/// Request limits (etcd's defaults: 1.5 MiB, 128 ops, 2 GiB).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest encoded request accepted (`--max-request-bytes`).
    pub request_bytes_max: usize,
    /// Most operations per txn level (`--max-txn-ops`).
    pub txn_ops_max: usize,
    /// Backend quota (`--quota-backend-bytes`), reported by Status.
    pub quota_backend_bytes: u64,
    /// Shortest lease TTL in seconds; shorter grants are raised to it.
    pub lease_ttl_min: i64,
}

/// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to a second.
pub fn lease_ttl_min(election_timeout_ms: u64) -> i64 {
    i64::try_from((3 * election_timeout_ms).div_ceil(2000)).unwrap_or(i64::MAX)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_bytes_max: 1_572_864,
            txn_ops_max: 128,
            quota_backend_bytes: 2 << 30,
            lease_ttl_min: lease_ttl_min(1000),
        }
    }
}

/// What every service needs: the replica, the ids and the limits.
#[derive(Clone)]
pub struct Api {
    /// This member's replica.
    pub replica: Replica,
    /// The cluster id reported in headers.
    pub cluster_id: u64,
    /// Request limits.
    pub limits: Limits,
    /// Write admission (apply backlog, proposals in flight).
    pub admission: Admission,
    /// Auth settings and login state.
    pub auth: SharedAuth,
    /// SIMULATOR SELF-TEST ONLY: serve "linearizable" reads without the read
    /// barrier, a deliberate safety bug the simulator must catch. Never set in
    /// production (`Env::production` leaves it off and no flag reaches it).
    pub unsafe_skip_read_barrier: bool,
    /// SIMULATOR SELF-TEST ONLY: a watch with a start revision starts one
    /// revision later (an off-by-one on resume), a deliberate bug the
    /// simulator's watch checks must catch. Never set in production.
    pub unsafe_watch_start_off_by_one: bool,
    /// SIMULATOR SELF-TEST ONLY: Lock and Campaign answer as soon as the
    /// caller's key is queued, without waiting for its turn (two holders or
    /// leaders at once), a deliberate bug the simulator's lock and election
    /// checks must catch. Never set in production.
    pub unsafe_lock_skip_wait: bool,
    /// SIMULATOR SELF-TEST ONLY: ranges skip the caller's read permission, a
    /// deliberate leak the simulator's auth checks must catch. Never set in
    /// production.
    pub unsafe_skip_read_permission: bool,
}

impl Api {
    /// A header at the current revision and term (for RPCs that do not touch keys).
    fn current_header(&self) -> Option<mainstay_proto::etcdserverpb::ResponseHeader> {
        let revision = self.replica.read(|space| space.revision());
        self.headers().header(revision, self.replica.term())
    }

    /// Refuses a request larger than `--max-request-bytes`, as etcd does.
    fn check_size(&self, request: &impl prost::Message) -> Result<(), tonic::Status> {
        if request.encoded_len() > self.limits.request_bytes_max {
            return Err(api_status(ApiError::RequestTooLarge));
        }
        Ok(())
    }

    /// Waits until this member has applied everything committed when the read
    /// began (linearizable), unless the read is serializable.
    async fn barrier(&self, serializable: bool) -> Result<(), tonic::Status> {
        if serializable || self.unsafe_skip_read_barrier {
            return Ok(());
        }
        self.replica
            .read_barrier()
            .await
            .map_err(|e| replica_status(&e))
    }

    /// Proposes a client's write through admission and Raft, as `caller`:
    /// refused here at once if the caller may not run it, and checked again
    /// by every member when it applies (`KeySpace::authorize`). Its answer
    /// and term.
    async fn propose(
        &self,
        caller: &mainstay_auth::Caller,
        command: mainstay_mvcc::Command,
    ) -> Result<(mainstay_mvcc::CommandResponse, u64), tonic::Status> {
        let (response, term, _) = self.propose_indexed(caller, command).await?;
        Ok((response, term))
    }

    /// As `propose`, with the entry's log index too.
    async fn propose_indexed(
        &self,
        caller: &mainstay_auth::Caller,
        command: mainstay_mvcc::Command,
    ) -> Result<(mainstay_mvcc::CommandResponse, u64, u64), tonic::Status> {
        self.check_quota(&command).await?;
        // With auth off (as this member last applied) there is nothing to
        // check here; every member checks again at apply.
        if self.replica.auth_enabled()
            && self
                .permit(|space| space.authorize(caller, &command))
                .is_err()
        {
            // This member may lag behind a grant that has completed: refuse
            // only what the state as of now (after a read barrier) refuses.
            self.barrier(false).await?;
            self.permit(|space| space.authorize(caller, &command))?;
        }
        let command = mainstay_mvcc::Command::Authorized {
            caller: caller.clone(),
            command: Box::new(command),
        };
        self.propose_bare(command).await
    }

    /// Proposes a command without a caller (keep-alives, checked by whoever
    /// calls this); its answer, term and log index.
    /// etcd's quota check: a write that would grow the store past the quota
    /// is refused, and raises NOSPACE for this member (once).
    async fn check_quota(&self, command: &mainstay_mvcc::Command) -> Result<(), tonic::Status> {
        let cost = quota::command_cost(command);
        if !quota::over_quota(
            self.replica.quota_bytes(),
            cost,
            self.limits.quota_backend_bytes,
        ) {
            return Ok(());
        }
        let alarm = mainstay_mvcc::AlarmMember {
            member: self.replica.member_id(),
            kind: mainstay_mvcc::AlarmKind::NoSpace,
        };
        if !self.replica.read(|space| space.alarms().contains(&alarm)) {
            tracing::warn!(
                quota = self.limits.quota_backend_bytes,
                db_bytes = self.replica.db_bytes(),
                "message exceeded backend quota; raising alarm"
            );
            let raise = mainstay_mvcc::Command::Alarm(mainstay_mvcc::AlarmRequest {
                action: mainstay_mvcc::AlarmAction::Activate,
                alarm,
            });
            if let Err(status) = self.propose_bare(raise).await {
                tracing::warn!(%status, "raising NOSPACE failed; the next write tries again");
            }
        }
        Err(mvcc_status(&mainstay_mvcc::MvccError::NoSpace))
    }

    /// Refuses reads while a CORRUPT alarm is raised (etcd's corrupt applier).
    fn check_not_corrupt(&self) -> Result<(), tonic::Status> {
        let corrupt = self.replica.read(|space| {
            space
                .alarms()
                .iter()
                .any(|alarm| alarm.kind == mainstay_mvcc::AlarmKind::Corrupt)
        });
        if corrupt {
            return Err(mvcc_status(&mainstay_mvcc::MvccError::Corrupt));
        }
        Ok(())
    }

    async fn propose_bare(
        &self,
        command: mainstay_mvcc::Command,
    ) -> Result<(mainstay_mvcc::CommandResponse, u64, u64), tonic::Status> {
        let (outcome, term, index) = self.propose_typed(command).await?;
        let response = outcome.map_err(|e| mvcc_status(&e))?;
        Ok((response, term, index))
    }

    /// Proposes a command; the command's own answer (typed, to decide on),
    /// term and log index, or why it was not applied.
    async fn propose_typed(
        &self,
        command: mainstay_mvcc::Command,
    ) -> Result<
        (
            Result<mainstay_mvcc::CommandResponse, mainstay_mvcc::MvccError>,
            u64,
            u64,
        ),
        tonic::Status,
    > {
        let (committed, applied) = self.replica.commit_and_apply_indexes();
        let _permit = self
            .admission
            .admit(committed, applied)
            .map_err(api_status)?;
        let outcome = self.replica.write(command).await.map_err(|e| {
            self.replica.metrics().server.proposals_failed.inc();
            replica_status(&e)
        })?;
        Ok((outcome.outcome, outcome.raft_term, outcome.log_index))
    }

    fn headers(&self) -> convert::HeaderFactory {
        convert::HeaderFactory {
            cluster_id: self.cluster_id,
            member_id: self.replica.member_id(),
        }
    }
}
