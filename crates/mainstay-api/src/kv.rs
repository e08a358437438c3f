//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use mainstay_mvcc::{Command, CommandResponse, MvccError, txn_writes, validate_txn};
use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::etcdserverpb::kv_server::Kv;
use tonic::{Request, Response, Status};

use crate::Api;
use crate::convert;
use crate::status::{mvcc_status, unexpected};

/// The KV service.
#[derive(Clone)]
pub struct KvService {
    api: Api,
}

impl KvService {
    /// Wraps the shared API state.
    pub fn new(api: Api) -> Self {
        KvService { api }
    }
}

fn all_serializable(txn: &mainstay_mvcc::TxnRequest) -> bool {
    txn.success.iter().chain(&txn.failure).all(|op| match op {
        mainstay_mvcc::RequestOp::Range(r) => r.serializable,
        mainstay_mvcc::RequestOp::Txn(t) => all_serializable(t),
        _ => false,
    })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        let request = request.into_inner();
        self.api.check_size(&request)?;
        let request = convert::range_request(request)?;
        if request.key.is_empty() {
            return Err(mvcc_status(&mainstay_mvcc::MvccError::EmptyKey));
        }
        self.api.barrier(request.serializable).await?;
        self.api.check_not_corrupt()?;
        let term = self.api.replica.term();
        let response = self
            .api
            .replica
            .read(|space| {
                if !self.api.unsafe_skip_read_permission {
                    space
                        .authorize_range(&caller, &request)
                        .map_err(MvccError::Auth)?;
                }
                space.range(&request)
            })
            .map_err(|e| mvcc_status(&e))?;
        self.api.replica.metrics().mvcc.range.inc();
        Ok(Response::new(
            self.api.headers().range_response(response, term),
        ))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        let request = request.into_inner();
        self.api.check_size(&request)?;
        let request = convert::put_request(request);
        if request.key.is_empty() {
            return Err(mvcc_status(&mainstay_mvcc::MvccError::EmptyKey));
        }
        match self.api.propose(&caller, Command::Put(request)).await? {
            (CommandResponse::Put(response), term) => Ok(Response::new(
                self.api.headers().put_response(response, term),
            )),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        let request = request.into_inner();
        self.api.check_size(&request)?;
        let request = convert::delete_request(request);
        if request.key.is_empty() {
            return Err(mvcc_status(&mainstay_mvcc::MvccError::EmptyKey));
        }
        match self
            .api
            .propose(&caller, Command::DeleteRange(request))
            .await?
        {
            (CommandResponse::DeleteRange(response), term) => Ok(Response::new(
                self.api.headers().delete_response(response, term),
            )),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        let request = request.into_inner();
        self.api.check_size(&request)?;
        let request = convert::txn_request(request)?;
        validate_txn(&request, self.api.limits.txn_ops_max).map_err(|e| mvcc_status(&e))?;
        if !txn_writes(&request) {
            // Read-only: served like a range, no log entry (as etcd does).
            self.api.barrier(all_serializable(&request)).await?;
            self.api.check_not_corrupt()?;
            let term = self.api.replica.term();
            let response = self
                .api
                .replica
                .read(|space| {
                    space
                        .authorize_txn(&caller, &request)
                        .map_err(MvccError::Auth)?;
                    space.read_only_txn(&request)
                })
                .map_err(|e| mvcc_status(&e))?;
            let mvcc = &self.api.replica.metrics().mvcc;
            let (ranges, _, _) = response.op_counts();
            mvcc.range.inc_by(ranges);
            if ranges > 1 {
                mvcc.txn.inc();
            }
            return Ok(Response::new(
                self.api.headers().txn_response(response, term),
            ));
        }
        match self.api.propose(&caller, Command::Txn(request)).await? {
            (CommandResponse::Txn(response), term) => Ok(Response::new(
                self.api.headers().txn_response(response, term),
            )),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        let request = request.into_inner();
        let command = Command::Compact(mainstay_mvcc::CompactionRequest {
            revision: request.revision,
            physical: request.physical,
        });
        match self.api.propose(&caller, command).await? {
            (CommandResponse::Compact(response), term) => {
                Ok(Response::new(pb::CompactionResponse {
                    header: self.api.headers().header(response.revision, term),
                }))
            }
            (other, _) => Err(unexpected(&other)),
        }
    }
}
