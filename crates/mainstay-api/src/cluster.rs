//! `etcdserverpb.Cluster`: MemberList. Runtime membership changes arrive with
//! their own issue; until then those RPCs answer Unimplemented, changing nothing.

use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::Api;
use crate::status::replica_status;

/// The Cluster service.
#[derive(Clone)]
pub struct ClusterService {
    api: Api,
}

impl ClusterService {
    /// Wraps the shared API state.
    pub fn new(api: Api) -> Self {
        ClusterService { api }
    }

    fn members(&self) -> Vec<pb::Member> {
        self.api
            .replica
            .members()
            .into_iter()
            .map(|(id, node, is_learner)| pb::Member {
                id,
                name: node.name,
                peer_ur_ls: node.peer_urls,
                client_ur_ls: node.client_urls,
                is_learner,
            })
            .collect()
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        self.api.current_header()
    }
}

use crate::status::not_yet;

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(not_yet("member add"))
    }

    async fn member_remove(
        &self,
        _: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(not_yet("member remove"))
    }

    async fn member_update(
        &self,
        _: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(not_yet("member update"))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.api
                .replica
                .read_barrier()
                .await
                .map_err(|e| replica_status(&e))?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(not_yet("member promote"))
    }
}
