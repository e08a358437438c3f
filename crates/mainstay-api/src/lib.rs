//! etcd v3 gRPC services over a `Replica`.
//!
//! The only crate (besides clients) that knows etcd's wire types and error
//! strings: requests are converted to domain types on entry (`convert`), and
//! every internal error leaves through one table (`status`).

mod admission;
mod cluster;
mod convert;
mod kv;
mod maintenance;
mod status;

use mainstay_raft::Replica;

pub use admission::{APPLY_BACKLOG_MAX, Admission, PROPOSALS_IN_FLIGHT_MAX};
pub use cluster::ClusterService;
pub use kv::KvService;
pub use maintenance::{ETCD_VERSION, MaintenanceService};
pub use status::{ApiError, api_status, membership_status, mvcc_status, replica_status};

/// Request limits (etcd's defaults: 1.5 MiB, 128 ops, 2 GiB).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest encoded request accepted (`--max-request-bytes`).
    pub request_bytes_max: usize,
    /// Most operations per txn level (`--max-txn-ops`).
    pub txn_ops_max: usize,
    /// Backend quota (`--quota-backend-bytes`), reported by Status.
    pub quota_backend_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_bytes_max: 1_572_864,
            txn_ops_max: 128,
            quota_backend_bytes: 2 << 30,
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
    /// SIMULATOR SELF-TEST ONLY: serve "linearizable" reads without the read
    /// barrier, a deliberate safety bug the simulator must catch. Never set in
    /// production (`Env::production` leaves it off and no flag reaches it).
    pub unsafe_skip_read_barrier: bool,
}

impl Api {
    /// A header at the current revision and term (for RPCs that do not touch keys).
    fn current_header(&self) -> Option<mainstay_proto::etcdserverpb::ResponseHeader> {
        let revision = self.replica.read(|space| space.revision());
        self.headers().header(revision, self.replica.term())
    }

    fn headers(&self) -> convert::HeaderFactory {
        convert::HeaderFactory {
            cluster_id: self.cluster_id,
            member_id: self.replica.member_id(),
        }
    }
}
