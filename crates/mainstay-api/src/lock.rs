//! `v3lockpb.Lock`: Lock and Unlock, etcd's `concurrency.Mutex` on the server
//! (the queue itself is in `recipe`).
//!
//! Lock creates `<name>/<lease hex>` with the caller's lease in one txn that
//! also reads the current holder; it answers at once when the key is first,
//! and otherwise waits for every older key under the prefix to be deleted.
//! The answer's key exists for as long as the caller holds the lock. Unlock
//! deletes that key.

use mainstay_auth::Caller;
use mainstay_mvcc::{Command, CommandResponse, DeleteRangeRequest, MvccError};
use mainstay_proto::v3lockpb as pb;
use mainstay_proto::v3lockpb::lock_server::Lock;
use tonic::{Request, Response, Status};

use crate::Api;
use crate::recipe::{self, Waited, Withdrawal};
use crate::status::{RecipeError, as_recipe_status, mvcc_status, recipe_status, unexpected};

/// The Lock service.
#[derive(Clone)]
pub struct LockService {
    api: Api,
}

impl LockService {
    /// Wraps the shared API state.
    pub fn new(api: Api) -> Self {
        LockService { api }
    }

    async fn acquire(
        &self,
        caller: &Caller,
        request: pb::LockRequest,
    ) -> Result<pb::LockResponse, Status> {
        self.api.check_size(&request)?;
        let prefix = recipe::queue_prefix(&request.name);
        recipe::permit_queue(&self.api, caller, &prefix, true)?;
        let lease = recipe::session_lease(&self.api, caller, request.lease).await?;
        let key = recipe::queue_key(&prefix, lease);
        let (response, term) =
            recipe::propose_txn(&self.api, caller, recipe::lock_txn(&key, lease, &prefix)).await?;
        let placed = recipe::placed(&response)
            .ok_or_else(|| unexpected(&CommandResponse::Txn(response.clone())))?;
        // Uncontended, or this lease already holds the lock: one round trip.
        // (The self-test break answers here whoever holds the lock.)
        if placed.first_in_line() || self.api.unsafe_lock_skip_wait {
            return Ok(pb::LockResponse {
                header: self.api.headers().header(response.revision, term),
                key,
            });
        }
        let withdrawal = Withdrawal::new(&self.api, caller, &key, placed.create_revision);
        match recipe::wait_turn(&self.api, &prefix, &key, placed.create_revision).await {
            Ok(revision) => {
                withdrawal.disarm();
                Ok(pb::LockResponse {
                    header: self.api.headers().header(revision, self.api.replica.term()),
                    key,
                })
            }
            Err(Waited::Gone) => {
                withdrawal.disarm();
                Err(recipe_status(RecipeError::SessionExpired))
            }
            // The withdrawal deletes the key as it drops, as etcd's Mutex does.
            Err(Waited::Failed(status)) => Err(status),
        }
    }

    async fn release(
        &self,
        caller: &Caller,
        request: pb::UnlockRequest,
    ) -> Result<pb::UnlockResponse, Status> {
        self.api.check_size(&request)?;
        if request.key.is_empty() {
            return Err(mvcc_status(&MvccError::EmptyKey));
        }
        let delete = DeleteRangeRequest {
            key: request.key,
            ..DeleteRangeRequest::default()
        };
        match self
            .api
            .propose(caller, Command::DeleteRange(delete))
            .await?
        {
            (CommandResponse::DeleteRange(deleted), term) => Ok(pb::UnlockResponse {
                header: self.api.headers().header(deleted.revision, term),
            }),
            (other, _) => Err(unexpected(&other)),
        }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let caller = self.api.caller(&request).await.map_err(as_recipe_status)?;
        self.acquire(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(as_recipe_status)
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let caller = self.api.caller(&request).await.map_err(as_recipe_status)?;
        self.release(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(as_recipe_status)
    }
}
