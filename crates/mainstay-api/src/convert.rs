//! etcd wire messages ↔ domain types. Enum values are checked here, so the
//! domain never sees an out-of-range number.

use mainstay_mvcc as d;
use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::mvccpb;
use tonic::Status;

use crate::status::{ApiError, api_status};

/// Domain → wire key-value.
pub fn key_value(kv: d::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// Wire → domain range request.
pub fn range_request(request: pb::RangeRequest) -> Result<d::RangeRequest, Status> {
    let sort_order = match pb::range_request::SortOrder::try_from(request.sort_order) {
        Ok(pb::range_request::SortOrder::None) => d::SortOrder::None,
        Ok(pb::range_request::SortOrder::Ascend) => d::SortOrder::Ascend,
        Ok(pb::range_request::SortOrder::Descend) => d::SortOrder::Descend,
        Err(_) => return Err(api_status(ApiError::InvalidSortOption)),
    };
    let sort_target = match pb::range_request::SortTarget::try_from(request.sort_target) {
        Ok(pb::range_request::SortTarget::Key) => d::SortTarget::Key,
        Ok(pb::range_request::SortTarget::Version) => d::SortTarget::Version,
        Ok(pb::range_request::SortTarget::Create) => d::SortTarget::Create,
        Ok(pb::range_request::SortTarget::Mod) => d::SortTarget::Mod,
        Ok(pb::range_request::SortTarget::Value) => d::SortTarget::Value,
        Err(_) => return Err(api_status(ApiError::InvalidSortOption)),
    };
    Ok(d::RangeRequest {
        key: request.key,
        range_end: request.range_end,
        limit: request.limit,
        revision: request.revision,
        sort_order,
        sort_target,
        serializable: request.serializable,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_mod_revision: request.min_mod_revision,
        max_mod_revision: request.max_mod_revision,
        min_create_revision: request.min_create_revision,
        max_create_revision: request.max_create_revision,
    })
}

/// Wire → domain put.
pub fn put_request(request: pb::PutRequest) -> d::PutRequest {
    d::PutRequest {
        key: request.key,
        value: request.value,
        lease: request.lease,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    }
}

/// Wire → domain delete.
pub fn delete_request(request: pb::DeleteRangeRequest) -> d::DeleteRangeRequest {
    d::DeleteRangeRequest {
        key: request.key,
        range_end: request.range_end,
        prev_kv: request.prev_kv,
    }
}

fn compare(compare: pb::Compare) -> Result<d::Compare, Status> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(compare.result) {
        Ok(R::Equal) => d::CompareResult::Equal,
        Ok(R::Greater) => d::CompareResult::Greater,
        Ok(R::Less) => d::CompareResult::Less,
        Ok(R::NotEqual) => d::CompareResult::NotEqual,
        Err(_) => {
            return Err(Status::invalid_argument(
                "etcdserver: invalid compare result",
            ));
        }
    };
    // The operand comes from whichever union arm is set; a mismatched arm reads as zero.
    let number =
        |arm: &Option<U>, want: fn(&U) -> Option<i64>| arm.as_ref().and_then(want).unwrap_or(0);
    let union = compare.target_union;
    let target = match T::try_from(compare.target) {
        Ok(T::Version) => d::CompareTarget::Version(number(&union, |u| match u {
            U::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(T::Create) => d::CompareTarget::Create(number(&union, |u| match u {
            U::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(T::Mod) => d::CompareTarget::Mod(number(&union, |u| match u {
            U::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(T::Lease) => d::CompareTarget::Lease(number(&union, |u| match u {
            U::Lease(v) => Some(*v),
            _ => None,
        })),
        Ok(T::Value) => d::CompareTarget::Value(match union {
            Some(U::Value(v)) => v,
            _ => Vec::new(),
        }),
        Err(_) => {
            return Err(Status::invalid_argument(
                "etcdserver: invalid compare target",
            ));
        }
    };
    Ok(d::Compare {
        result,
        target,
        key: compare.key,
        range_end: compare.range_end,
    })
}

fn request_op(op: pb::RequestOp) -> Result<d::RequestOp, Status> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => Ok(d::RequestOp::Range(range_request(r)?)),
        Some(Request::RequestPut(p)) => Ok(d::RequestOp::Put(put_request(p))),
        Some(Request::RequestDeleteRange(r)) => Ok(d::RequestOp::DeleteRange(delete_request(r))),
        Some(Request::RequestTxn(t)) => Ok(d::RequestOp::Txn(txn_request(t)?)),
        // etcd rejects an empty op the same way as an empty key.
        None => Err(Status::invalid_argument("etcdserver: key is not provided")),
    }
}

/// Wire → domain transaction.
pub fn txn_request(request: pb::TxnRequest) -> Result<d::TxnRequest, Status> {
    Ok(d::TxnRequest {
        compare: request
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: request
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: request
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

/// Builds response headers for one member.
#[derive(Clone, Copy, Debug)]
pub struct HeaderFactory {
    /// Cluster id.
    pub cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
}

impl HeaderFactory {
    /// A header at `revision` and `raft_term`.
    pub fn header(&self, revision: i64, raft_term: u64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term,
        })
    }

    /// Domain → wire range response.
    pub fn range_response(&self, response: d::RangeResponse, raft_term: u64) -> pb::RangeResponse {
        pb::RangeResponse {
            header: self.header(response.revision, raft_term),
            kvs: response.kvs.into_iter().map(key_value).collect(),
            more: response.more,
            count: response.count,
        }
    }

    /// Domain → wire put response.
    pub fn put_response(&self, response: d::PutResponse, raft_term: u64) -> pb::PutResponse {
        pb::PutResponse {
            header: self.header(response.revision, raft_term),
            prev_kv: response.prev_kv.map(key_value),
        }
    }

    /// Domain → wire delete response.
    pub fn delete_response(
        &self,
        response: d::DeleteRangeResponse,
        raft_term: u64,
    ) -> pb::DeleteRangeResponse {
        pb::DeleteRangeResponse {
            header: self.header(response.revision, raft_term),
            deleted: response.deleted,
            prev_kvs: response.prev_kvs.into_iter().map(key_value).collect(),
        }
    }

    /// Domain → wire transaction response. As in etcd, the responses of a
    /// txn's operations carry only their revision in their headers (no
    /// cluster, member or term): the txn's own header says those.
    pub fn txn_response(&self, response: d::TxnResponse, raft_term: u64) -> pb::TxnResponse {
        use pb::response_op::Response;
        let nested = HeaderFactory {
            cluster_id: 0,
            member_id: 0,
        };
        let responses = response
            .responses
            .into_iter()
            .map(|op| pb::ResponseOp {
                response: Some(match op {
                    d::ResponseOp::Range(r) => Response::ResponseRange(nested.range_response(r, 0)),
                    d::ResponseOp::Put(r) => Response::ResponsePut(nested.put_response(r, 0)),
                    d::ResponseOp::DeleteRange(r) => {
                        Response::ResponseDeleteRange(nested.delete_response(r, 0))
                    }
                    d::ResponseOp::Txn(r) => Response::ResponseTxn(nested.txn_response(r, 0)),
                }),
            })
            .collect();
        pb::TxnResponse {
            header: self.header(response.revision, raft_term),
            succeeded: response.succeeded,
            responses,
        }
    }
}
