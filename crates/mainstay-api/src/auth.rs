//! `etcdserverpb.Auth`: enable/disable, logins, users, roles, permissions.
//!
//! Changes go through Raft as `Command::Auth`, proposed as the caller so
//! every member checks the caller may administer at that point of the log.
//! Reads (user/role get and list, status) are served here after a read
//! barrier, with etcd's rules for who may see what. Passwords are hashed here,
//! with bcrypt on the blocking pool (at most `HASHING_MAX` at once), so a storm
//! of logins cannot stall the runtime; only hashes enter the log, and no
//! password or hash is logged. Failed logins slow down further attempts for
//! that user and from that client address (`LoginThrottle`).

use mainstay_auth::{AuthError, AuthReply, AuthRequest, Caller, Permission, PermissionKind};
use mainstay_mvcc::{Command, CommandResponse, MvccError};
use mainstay_proto::authpb;
use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::etcdserverpb::auth_server::Auth;
use tonic::{Request, Response, Status};

use crate::Api;
use crate::identity::{ClientIdentity, TokenKind};
use crate::status::{ApiError, api_status, auth_status, mvcc_status, unexpected};

/// How often a login is tried again when the auth state changed between its
/// password check and its log entry.
const LOGIN_ATTEMPTS: usize = 3;

/// The Auth service.
#[derive(Clone)]
pub struct AuthService {
    api: Api,
}

impl AuthService {
    /// Wraps the shared API state.
    pub fn new(api: Api) -> Self {
        AuthService { api }
    }

    /// Proposes an auth change as the request's caller; the header.
    async fn change<T>(
        &self,
        request: &Request<T>,
        change: AuthRequest,
    ) -> Result<Option<pb::ResponseHeader>, Status> {
        let caller = self.api.caller(request).await?;
        self.change_as(&caller, change).await
    }

    async fn change_as(
        &self,
        caller: &Caller,
        change: AuthRequest,
    ) -> Result<Option<pb::ResponseHeader>, Status> {
        match self.api.propose(caller, Command::Auth(change)).await? {
            (CommandResponse::Auth(_), term) => {
                let revision = self.api.replica.read(|space| space.revision());
                Ok(self.api.headers().header(revision, term))
            }
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// The caller, once this member has applied everything committed (auth
    /// reads are linearizable, as etcd's go through Raft).
    async fn reader<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = self.api.caller(request).await?;
        self.api.barrier(false).await?;
        Ok(caller)
    }

    /// A bcrypt hash of `password` (or the hash the client sent), computed on
    /// the blocking pool.
    async fn hash(&self, password: String, hashed: String) -> Result<String, Status> {
        if !hashed.is_empty() {
            // etcd 3.5 clients may send the hash instead (`hashedPassword`).
            return if hashed.starts_with("$2") && hashed.len() == 60 {
                Ok(hashed)
            } else {
                Err(auth_status(AuthError::AuthFailed))
            };
        }
        let cost = self.api.auth.bcrypt_cost;
        let _permit = self
            .api
            .auth
            .hashing
            .acquire()
            .await
            .map_err(|_| api_status(ApiError::TooManyRequests))?;
        off_runtime(move || bcrypt::hash(password, cost))
            .await?
            .map_err(|_| Status::internal("etcdserver: password hashing failed"))
    }

    /// Whether `password` matches `hash`, checked on the blocking pool.
    async fn verify(&self, password: String, hash: String) -> Result<bool, Status> {
        let _permit = self
            .api
            .auth
            .hashing
            .acquire()
            .await
            .map_err(|_| api_status(ApiError::TooManyRequests))?;
        off_runtime(move || bcrypt::verify(password, &hash).unwrap_or(false)).await
    }

    /// A login: the password against the state at one revision, then a log
    /// entry that succeeds only at that same revision; the token.
    async fn login(&self, name: &str, password: String) -> Result<(String, u64), Status> {
        for _ in 0..LOGIN_ATTEMPTS {
            self.api.barrier(false).await?;
            let (hash, checked_revision) = self
                .api
                .replica
                .read(|space| space.auth().login_hash(name))
                .map_err(auth_status)?;
            if !self.verify(password.clone(), hash).await? {
                return Err(auth_status(AuthError::AuthFailed));
            }
            let random = match &self.api.auth.tokens {
                TokenKind::Simple => self.random_token()?,
                TokenKind::Jwt(_) => String::new(),
            };
            let request = AuthRequest::Authenticate {
                name: name.to_string(),
                checked_revision,
                token: random.clone(),
            };
            let command = Command::Authorized {
                caller: Caller::anonymous(),
                command: Box::new(Command::Auth(request)),
            };
            let (outcome, term, index) = self.api.propose_typed(command).await?;
            let response = match outcome {
                // The state changed since the check: check again.
                Err(MvccError::Auth(AuthError::OldRevision)) => continue,
                other => other.map_err(|e| mvcc_status(&e))?,
            };
            let CommandResponse::Auth(AuthReply::Authenticated { user, revision }) = response
            else {
                return Err(unexpected(&response));
            };
            let token = match &self.api.auth.tokens {
                TokenKind::Simple => mainstay_raft::simple_token(&random, index),
                TokenKind::Jwt(keys) => keys.sign(&user, revision).map_err(Status::unknown)?,
            };
            return Ok((token, term));
        }
        Err(auth_status(AuthError::OldRevision))
    }
}

impl AuthService {
    /// 32 random letters and digits (the token's secret part): from the OS,
    /// or under the simulator from its seed.
    fn random_token(&self) -> Result<String, Status> {
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut bytes = [0u8; 32];
        match &self.api.auth.token_seed {
            None => ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| Status::internal("etcdserver: no randomness for a token"))?,
            Some(seed) => {
                let mut state = seed.lock().unwrap_or_else(|p| p.into_inner());
                for byte in &mut bytes {
                    // splitmix64, one byte per step.
                    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = *state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    *byte = (z ^ (z >> 31)) as u8;
                }
            }
        }
        Ok(bytes
            .iter()
            .map(|b| LETTERS[usize::from(*b) % LETTERS.len()] as char)
            .collect())
    }
}

/// Runs costly work (bcrypt) on the blocking pool; on a current-thread
/// runtime (the simulator's) in place, so a seed replays.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| Status::internal("etcdserver: password hashing failed"))
    } else {
        Ok(work())
    }
}

fn permission_to_pb(permission: &Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: match permission.kind {
            PermissionKind::Read => authpb::permission::Type::Read,
            PermissionKind::Write => authpb::permission::Type::Write,
            PermissionKind::ReadWrite => authpb::permission::Type::Readwrite,
        } as i32,
        key: permission.key.clone(),
        range_end: permission.range_end.clone(),
    }
}

fn permission_from_pb(permission: authpb::Permission) -> Permission {
    Permission {
        kind: match authpb::permission::Type::try_from(permission.perm_type) {
            Ok(authpb::permission::Type::Write) => PermissionKind::Write,
            Ok(authpb::permission::Type::Readwrite) => PermissionKind::ReadWrite,
            // READ is 0; an unknown type grants the least.
            _ => PermissionKind::Read,
        },
        key: permission.key,
        range_end: permission.range_end,
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let header = self.change(&request, AuthRequest::Enable).await?;
        tracing::info!("authentication enabled");
        Ok(Response::new(pb::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let header = self.change(&request, AuthRequest::Disable).await?;
        tracing::info!("authentication disabled");
        Ok(Response::new(pb::AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let caller = self.reader(&request).await?;
        self.api.permit_admin(&caller)?;
        let (enabled, auth_revision) = self
            .api
            .replica
            .read(|space| (space.auth().enabled(), space.auth().revision()));
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.api.current_header(),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let remote = request
            .extensions()
            .get::<ClientIdentity>()
            .map(|identity| identity.remote.clone())
            .unwrap_or_default();
        let pb::AuthenticateRequest { name, password } = request.into_inner();
        let keys = [format!("user:{name}"), format!("addr:{}", address(&remote))];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let now = tokio::time::Instant::now();
        if self.throttle().check(&keys, now).is_err() {
            tracing::warn!(user = %name, %remote, "login refused: too many failed attempts");
            return Err(api_status(ApiError::TooManyRequests));
        }
        match self.login(&name, password).await {
            Ok((token, term)) => {
                self.throttle().succeeded(keys[0]);
                let revision = self.api.replica.read(|space| space.revision());
                Ok(Response::new(pb::AuthenticateResponse {
                    header: self.api.headers().header(revision, term),
                    token,
                }))
            }
            Err(status) => {
                if status.code() == tonic::Code::InvalidArgument {
                    self.throttle().failed(&keys, tokio::time::Instant::now());
                    tracing::info!(user = %name, %remote, "login failed");
                }
                Err(status)
            }
        }
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        let request = request.into_inner();
        let no_password = request.options.is_some_and(|o| o.no_password);
        if request.name.is_empty() {
            return Err(auth_status(AuthError::UserEmpty));
        }
        // Refused before the costly hash if the caller may not do it anyway.
        self.api.permit_admin(&caller)?;
        let password = if no_password {
            None
        } else {
            Some(self.hash(request.password, request.hashed_password).await?)
        };
        let change = AuthRequest::UserAdd {
            name: request.name,
            password,
            no_password,
        };
        let header = self.change_as(&caller, change).await?;
        Ok(Response::new(pb::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let caller = self.reader(&request).await?;
        let name = request.into_inner().name;
        let roles = self
            .api
            .replica
            .read(|space| {
                let auth = space.auth();
                auth.check_user_get(&caller, &name)?;
                auth.user(&name)
                    .map(|user| user.roles.clone())
                    .ok_or(AuthError::UserNotFound)
            })
            .map_err(auth_status)?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.api.current_header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let caller = self.reader(&request).await?;
        let users = self
            .api
            .replica
            .read(|space| {
                space.auth().check_admin(&caller)?;
                Ok(space.auth().user_names())
            })
            .map_err(auth_status)?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.api.current_header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self
            .change(&request, AuthRequest::UserDelete { name })
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        let request = request.into_inner();
        self.api.permit_admin(&caller)?;
        let password = self.hash(request.password, request.hashed_password).await?;
        let change = AuthRequest::UserChangePassword {
            name: request.name,
            password,
        };
        let header = self.change_as(&caller, change).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let pb::AuthUserGrantRoleRequest { user, role } = request.get_ref().clone();
        let header = self
            .change(&request, AuthRequest::UserGrantRole { user, role })
            .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let pb::AuthUserRevokeRoleRequest { name, role } = request.get_ref().clone();
        let header = self
            .change(&request, AuthRequest::UserRevokeRole { name, role })
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self.change(&request, AuthRequest::RoleAdd { name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let caller = self.reader(&request).await?;
        let role = request.into_inner().role;
        let perm = self
            .api
            .replica
            .read(|space| {
                let auth = space.auth();
                auth.check_role_get(&caller, &role)?;
                auth.role(&role)
                    .map(|role| role.permissions.iter().map(permission_to_pb).collect())
                    .ok_or(AuthError::RoleNotFound)
            })
            .map_err(auth_status)?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.api.current_header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let caller = self.reader(&request).await?;
        let roles = self
            .api
            .replica
            .read(|space| {
                space.auth().check_admin(&caller)?;
                Ok(space.auth().role_names())
            })
            .map_err(auth_status)?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.api.current_header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let name = request.get_ref().role.clone();
        let header = self
            .change(&request, AuthRequest::RoleDelete { name })
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let pb::AuthRoleGrantPermissionRequest { name, perm } = request.get_ref().clone();
        let change = AuthRequest::RoleGrantPermission {
            name,
            permission: perm.map(permission_from_pb),
        };
        let header = self.change(&request, change).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header,
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let pb::AuthRoleRevokePermissionRequest {
            role,
            key,
            range_end,
        } = request.get_ref().clone();
        let change = AuthRequest::RoleRevokePermission {
            role,
            key,
            range_end,
        };
        let header = self.change(&request, change).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header,
        }))
    }
}

impl AuthService {
    fn throttle(
        &self,
    ) -> std::sync::MutexGuard<'_, mainstay_auth::LoginThrottle<tokio::time::Instant>> {
        self.api
            .auth
            .throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// The address part of `IP:port` (a client's logins share one count).
fn address(remote: &str) -> &str {
    remote.rsplit_once(':').map_or(remote, |(host, _)| host)
}
