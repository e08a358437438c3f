//! The simple tokens this member knows. A login is a log entry, so every
//! member learns its token when it applies it (as `<random>.<log index>`),
//! and forgets a user's tokens when the user is deleted or gets a new
//! password, and every token when auth is turned off. A token lives
//! `--auth-token-ttl` from its last use, by this member's clock.
//!
//! A member learns tokens only from logins it applies once it serves (caught
//! up with the leader, `Replica::catch_up`): logins it replays after a
//! restart, or receives in a backlog as a new member, may be long expired,
//! and must not come back to life with a fresh TTL. As in etcd, a restart
//! forgets every token; a client whose token this member does not know gets
//! `invalid auth token` and logs in again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_auth::{AuthReply, AuthRequest, SimpleTokens};
use mainstay_mvcc::{Command, CommandResponse, MvccError};
use tokio::time::Instant;

/// The token table; clones share it.
#[derive(Clone, Debug)]
pub struct Tokens {
    table: Arc<Mutex<SimpleTokens<Instant>>>,
    learning: Arc<AtomicBool>,
}

impl Tokens {
    /// An empty table whose tokens live `ttl` from their last use.
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            table: Arc::new(Mutex::new(SimpleTokens::new(ttl))),
            learning: Arc::new(AtomicBool::new(false)),
        }
    }

    /// From now on, logins applied here are learned (the member serves).
    pub(crate) fn start_learning(&self) {
        self.learning.store(true, Ordering::Release);
    }

    fn table(&self) -> std::sync::MutexGuard<'_, SimpleTokens<Instant>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user of a live token (its TTL starts again), if this member knows it.
    pub fn user(&self, token: &str) -> Option<String> {
        self.table().user(token, Instant::now())
    }

    /// What an applied command at `log_index` does to the tokens.
    pub(crate) fn applied(
        &self,
        command: &Command,
        result: &Result<CommandResponse, MvccError>,
        log_index: u64,
    ) {
        let (Command::Auth(request), Ok(CommandResponse::Auth(reply))) = (command.inner(), result)
        else {
            return;
        };
        match (request, reply) {
            (AuthRequest::Authenticate { name, token, .. }, AuthReply::Authenticated { .. })
                if !token.is_empty() && self.learning.load(Ordering::Acquire) =>
            {
                self.table()
                    .assign(&simple_token(token, log_index), name, Instant::now());
            }
            (AuthRequest::UserDelete { name }, _)
            | (AuthRequest::UserChangePassword { name, .. }, _) => {
                self.table().invalidate_user(name);
            }
            (AuthRequest::Disable, _) => self.table().clear(),
            _ => {}
        }
    }
}

/// The token a client gets for a login: its random part and the login's log
/// index (etcd's form), so any member can tell how far it must have applied
/// before it can know the token.
pub fn simple_token(random: &str, log_index: u64) -> String {
    format!("{random}.{log_index}")
}

/// The log index a simple token names, if it has the form.
pub fn simple_token_index(token: &str) -> Option<u64> {
    let (random, index) = token.rsplit_once('.')?;
    if random.is_empty() {
        return None;
    }
    index.parse().ok()
}
