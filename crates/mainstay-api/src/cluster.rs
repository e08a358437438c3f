//! `etcdserverpb.Cluster`: MemberList, and runtime membership changes (add,
//! remove, update peer URLs, promote a learner) through the leader.

use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::Api;
use mainstay_raft::MemberChange;

use crate::status::{ApiError, api_status, membership_status, replica_status};

/// Whether every URL is `http(s)://host:port` and there is at least one.
fn valid_peer_urls(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|url| {
            url.parse::<http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some_and(|h| !h.is_empty())
                    && uri.port_u16().is_some()
                    && matches!(uri.path(), "" | "/")
            })
        })
}

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

    /// Applies a change through the leader; returns the member list after it.
    async fn change(&self, change: MemberChange) -> Result<Vec<pb::Member>, Status> {
        self.api
            .replica
            .change_members(change)
            .await
            .map_err(|e| membership_status(&e))?;
        Ok(self.members())
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        self.api.current_header()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_admin(&caller)?;
        let request = request.into_inner();
        if !valid_peer_urls(&request.peer_ur_ls) {
            return Err(api_status(ApiError::InvalidMemberUrls));
        }
        let outcome = self
            .api
            .replica
            .change_members(MemberChange::Add {
                peer_urls: request.peer_ur_ls.clone(),
                learner: request.is_learner,
            })
            .await
            .map_err(|e| membership_status(&e))?;
        let members = self.members();
        let member = outcome
            .added
            .and_then(|id| members.iter().find(|m| m.id == id).cloned());
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_admin(&caller)?;
        let id = request.into_inner().id;
        let members = self.change(MemberChange::Remove(id)).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_admin(&caller)?;
        let request = request.into_inner();
        if !valid_peer_urls(&request.peer_ur_ls) {
            return Err(api_status(ApiError::InvalidMemberUrls));
        }
        let members = self
            .change(MemberChange::Update(request.id, request.peer_ur_ls))
            .await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_user(&caller)?;
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
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.permit_admin(&caller)?;
        let id = request.into_inner().id;
        let members = self.change(MemberChange::Promote(id)).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(),
            members,
        }))
    }
}
