//! Who a request acts for (etcd's `AuthInfoFromCtx`): nobody while auth is
//! off (a token sent then is ignored, as etcd 3.5 does); else the user of the
//! `token` metadata (or `authorization`, with or without `Bearer `), which
//! must be valid; else, with `--client-cert-auth`, the common name of the
//! verified client certificate of this very connection; else nobody, which
//! every permission check refuses with `user name is empty`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_auth::{AuthError, Caller, LoginThrottle};
use tokio::sync::Semaphore;
use tonic::{Request, Status};

use crate::Api;
use crate::jwt::JwtKeys;
use crate::status::auth_status;

/// What the server knows of a client connection (tonic's connect info).
#[derive(Clone, Debug, Default)]
pub struct ClientIdentity {
    /// The common name of the client certificate the TLS handshake verified.
    pub common_name: Option<String>,
    /// The client's address (`IP:port`), for login throttling and logs.
    pub remote: String,
}

/// How tokens are issued (`--auth-token`).
#[derive(Clone, Debug)]
pub enum TokenKind {
    /// Random tokens every member learns from the log (etcd's `simple`).
    Simple,
    /// Signed tokens (etcd's `jwt`).
    Jwt(JwtKeys),
}

/// Auth settings and the per-member login state.
#[derive(Debug)]
pub struct AuthOptions {
    /// Token kind.
    pub tokens: TokenKind,
    /// bcrypt cost of new password hashes (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
    /// `--client-cert-auth`: a verified certificate's common name is a user.
    pub client_cert_auth: bool,
    /// Failed logins by user and by client address.
    pub(crate) throttle: Mutex<LoginThrottle<tokio::time::Instant>>,
    /// bcrypt runs on at most this many blocking threads at once.
    pub(crate) hashing: Semaphore,
    /// SIMULATOR ONLY: draw tokens' random parts from this seed (a seed then
    /// replays); `None` in production, where the OS draws them.
    pub token_seed: Option<Mutex<u64>>,
}

/// bcrypt hashes computed at once by one member (each takes ~50-100 ms of a core).
pub const HASHING_MAX: usize = 2;

impl AuthOptions {
    /// Settings with empty login state.
    pub fn new(tokens: TokenKind, bcrypt_cost: u32, client_cert_auth: bool) -> AuthOptions {
        AuthOptions {
            tokens,
            bcrypt_cost,
            client_cert_auth,
            throttle: Mutex::new(LoginThrottle::default()),
            hashing: Semaphore::new(HASHING_MAX),
            token_seed: None,
        }
    }
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions::new(TokenKind::Simple, bcrypt::DEFAULT_COST, false)
    }
}

/// The identity a request carries, before it is resolved against the auth state.
#[derive(Clone, Debug, Default)]
pub(crate) struct Credentials {
    token: Option<String>,
    common_name: Option<String>,
}

impl Credentials {
    /// The token metadata and the connection's certificate name.
    pub(crate) fn of<T>(request: &Request<T>) -> Credentials {
        let metadata = request.metadata();
        let token = metadata
            .get("token")
            .or_else(|| metadata.get("authorization"))
            .and_then(|value| value.to_str().ok())
            .map(|token| token.strip_prefix("Bearer ").unwrap_or(token).to_string());
        let common_name = request
            .extensions()
            .get::<ClientIdentity>()
            .and_then(|identity| identity.common_name.clone());
        Credentials { token, common_name }
    }
}

/// How long a request waits for this member to apply a login it has not seen
/// yet (a token from a login at another member).
const TOKEN_APPLY_WAIT: Duration = Duration::from_secs(5);

impl Api {
    /// Who a request acts for, as of now.
    pub(crate) async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.resolve(&Credentials::of(request)).await
    }

    /// Resolves credentials against the current auth state.
    pub(crate) async fn resolve(&self, credentials: &Credentials) -> Result<Caller, Status> {
        if !self.replica.auth_enabled() {
            return Ok(Caller::anonymous());
        }
        let revision = self.replica.read(|space| space.auth().revision());
        if let Some(token) = &credentials.token {
            let invalid = || auth_status(AuthError::InvalidAuthToken);
            return match &self.auth.tokens {
                TokenKind::Jwt(keys) => {
                    let (user, revision) = keys.verify(token).ok_or_else(invalid)?;
                    Ok(Caller { user, revision })
                }
                TokenKind::Simple => {
                    let index = mainstay_raft::simple_token_index(token).ok_or_else(invalid)?;
                    // A login past what this member knows committed: it may
                    // lag, so it first catches up with the leader's commit (one
                    // shared read barrier). A login still past it was never
                    // committed (a made-up token): refused without holding
                    // the request; one known committed is waited for.
                    let (committed, _) = self.replica.commit_and_apply_indexes();
                    if index > committed {
                        self.barrier(false).await?;
                    }
                    let (committed, _) = self.replica.commit_and_apply_indexes();
                    if index > committed || !self.replica.applied_by(index, TOKEN_APPLY_WAIT).await
                    {
                        return Err(invalid());
                    }
                    let user = self.replica.tokens().user(token).ok_or_else(invalid)?;
                    // Read again: the login may have applied meanwhile.
                    let revision = self.replica.read(|space| space.auth().revision());
                    Ok(Caller { user, revision })
                }
            };
        }
        if self.auth.client_cert_auth
            && let Some(user) = &credentials.common_name
        {
            return Ok(Caller {
                user: user.clone(),
                revision,
            });
        }
        Ok(Caller::anonymous())
    }

    /// Refuses unless `check` passes on the current auth state.
    pub(crate) fn permit(
        &self,
        check: impl FnOnce(&mainstay_mvcc::KeySpace) -> Result<(), AuthError>,
    ) -> Result<(), Status> {
        self.replica.read(check).map_err(auth_status)
    }

    /// Refuses unless `caller` may administer (root while auth is on).
    pub(crate) fn permit_admin(&self, caller: &Caller) -> Result<(), Status> {
        self.permit(|space| space.auth().check_admin(caller))
    }

    /// Refuses unless `caller` is an authenticated user (while auth is on).
    pub(crate) fn permit_user(&self, caller: &Caller) -> Result<(), Status> {
        self.permit(|space| space.auth().check_user(caller))
    }
}

/// Shared handle type for the options.
pub type SharedAuth = Arc<AuthOptions>;
