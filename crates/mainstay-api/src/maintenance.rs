//! `etcdserverpb.Maintenance`: Status, Defragment, Hash, HashKV, Alarm,
//! Snapshot, MoveLeader. Downgrade answers Unimplemented.

use std::pin::Pin;

use futures::Stream;
use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::etcdserverpb::maintenance_server::Maintenance;
use tonic::{Request, Response, Status};

use mainstay_mvcc::{AlarmAction, AlarmKind, AlarmMember, AlarmRequest, Command, CommandResponse};

use crate::Api;
use crate::status::{ApiError, api_status, mvcc_status};

/// An alarm on the wire.
fn alarm_member(alarm: &AlarmMember) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: alarm.member,
        alarm: match alarm.kind {
            AlarmKind::NoSpace => pb::AlarmType::Nospace,
            AlarmKind::Corrupt => pb::AlarmType::Corrupt,
        } as i32,
    }
}

/// The etcd version we report: clients (Kubernetes) gate features on ≥ 3.5.13.
pub const ETCD_VERSION: &str = "3.6.0";

/// The Maintenance service.
#[derive(Clone)]
pub struct MaintenanceService {
    api: Api,
}

impl MaintenanceService {
    /// Wraps the shared API state.
    pub fn new(api: Api) -> Self {
        MaintenanceService { api }
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        self.api.current_header()
    }
}

use crate::status::not_yet;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        let request = request.into_inner();
        let action = pb::alarm_request::AlarmAction::try_from(request.action)
            .map_err(|_| Status::invalid_argument("etcdserver: unknown alarm action"))?;
        if action == pb::alarm_request::AlarmAction::Get {
            self.api.permit_user(&caller)?;
            let alarms = self.api.replica.read(|space| space.alarms().clone());
            return Ok(Response::new(pb::AlarmResponse {
                header: self.header(),
                alarms: alarms.iter().map(alarm_member).collect(),
            }));
        }
        self.api.permit_admin(&caller)?;
        let kind = match pb::AlarmType::try_from(request.alarm) {
            Ok(pb::AlarmType::Nospace) => AlarmKind::NoSpace,
            Ok(pb::AlarmType::Corrupt) => AlarmKind::Corrupt,
            // NONE names no alarm: nothing to raise or clear (etcd answers
            // with no alarms too).
            Ok(pb::AlarmType::None) => {
                return Ok(Response::new(pb::AlarmResponse {
                    header: self.header(),
                    alarms: Vec::new(),
                }));
            }
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm type")),
        };
        let action = match action {
            pb::alarm_request::AlarmAction::Activate => AlarmAction::Activate,
            _ => AlarmAction::Deactivate,
        };
        let command = Command::Alarm(AlarmRequest {
            action,
            alarm: AlarmMember {
                member: request.member_id,
                kind,
            },
        });
        match self.api.propose(&caller, command).await? {
            (CommandResponse::Alarm(response), term) => {
                let revision = self.api.replica.read(|space| space.revision());
                Ok(Response::new(pb::AlarmResponse {
                    header: self.api.headers().header(revision, term),
                    alarms: response.alarms.iter().map(alarm_member).collect(),
                }))
            }
            (other, _) => Err(crate::status::unexpected(&other)),
        }
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_user(&caller)?;
        let status = self.api.replica.status();
        let mut errors = Vec::new();
        if status.leader.is_none() {
            errors.push("etcdserver: no leader".to_string());
        }
        // etcd lists each raised alarm as Go prints an AlarmMember.
        let alarms = self.api.replica.read(|space| space.alarms().clone());
        errors.extend(
            alarms
                .iter()
                .map(|alarm| format!("memberID:{} alarm:{} ", alarm.member, alarm.kind.name())),
        );
        let db_size = i64::try_from(status.db_bytes).unwrap_or(i64::MAX);
        Ok(Response::new(pb::StatusResponse {
            header: self.header(),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: status.leader.unwrap_or(0),
            raft_index: status.committed_index,
            raft_term: status.term,
            raft_applied_index: status.applied_index,
            errors,
            db_size_in_use: i64::try_from(status.db_in_use_bytes).unwrap_or(i64::MAX),
            is_learner: status.is_learner,
            storage_version: ETCD_VERSION.to_string(),
            db_size_quota: i64::try_from(self.api.limits.quota_backend_bytes).unwrap_or(i64::MAX),
            downgrade_info: Some(pb::DowngradeInfo {
                enabled: false,
                target_version: String::new(),
            }),
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_admin(&caller)?;
        // The state machine logs a failure (and stops the member on a fatal one).
        let (before, after) = self
            .api
            .replica
            .defragment()
            .await
            .map_err(|error| Status::internal(format!("defragment: {error}")))?;
        tracing::info!(before, after, "defragmented the state file");
        Ok(Response::new(pb::DefragmentResponse {
            header: self.header(),
        }))
    }

    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_admin(&caller)?;
        let started = std::time::Instant::now();
        let hash = self
            .api
            .replica
            .read(|space| space.hash(0))
            .map_err(|e| mvcc_status(&e))?;
        self.api
            .replica
            .metrics()
            .mvcc
            .hash_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(Response::new(pb::HashResponse {
            header: self.header(),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_admin(&caller)?;
        let revision = request.into_inner().revision;
        let replica = &self.api.replica;
        let at = replica
            .read(|space| space.resolve_read_revision(revision))
            .map_err(|e| mvcc_status(&e))?;
        // Hashed a part at a time: apply goes on meanwhile.
        let (hash, compacted) = replica.own_hash(at).await.map_err(|e| mvcc_status(&e))?;
        Ok(Response::new(pb::HashKvResponse {
            header: self.header(),
            hash,
            compact_revision: compacted,
            hash_revision: at,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_admin(&caller)?;
        let replica = &self.api.replica;
        let read = replica.state_reader().await.map_err(|error| {
            tracing::warn!(%error, "snapshot: reading the state");
            Status::internal(format!("snapshot: {error}"))
        })?;
        let cluster = crate::etcd_snapshot::ClusterFacts {
            members: replica.members(),
        };
        let header = self.header().unwrap_or_default();
        let (out, messages) = tokio::sync::mpsc::channel(crate::etcd_snapshot::CHUNKS_AHEAD);
        // Reading redb and hashing block: off the async workers.
        tokio::task::spawn_blocking(move || {
            crate::etcd_snapshot::stream(read, cluster, header, out);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(messages),
        )))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_admin(&caller)?;
        let target = request.into_inner().target_id;
        let status = self.api.replica.status();
        if !status.is_leader {
            return Err(api_status(ApiError::NotLeader));
        }
        let voter = self
            .api
            .replica
            .members()
            .into_iter()
            .any(|(id, _, learner)| id == target && !learner);
        if !voter {
            return Err(api_status(ApiError::BadLeaderTransferee));
        }
        if target == status.member_id {
            // Already there: etcd answers at once, as a success.
            return Ok(Response::new(pb::MoveLeaderResponse {
                header: self.header(),
            }));
        }
        self.api
            .replica
            .transfer_leader(target)
            .await
            .map_err(|e| crate::status::replica_status(&e))?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: self.header(),
        }))
    }

    async fn downgrade(
        &self,
        request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_admin(&caller)?;
        Err(not_yet("downgrade"))
    }
}
