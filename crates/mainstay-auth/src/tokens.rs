//! Simple tokens: opaque strings a member maps to a user name, each valid for
//! a TTL from its last use (etcd's `simple` token provider). Every member learns
//! a token when it applies the login's log entry. Time is passed in, so this
//! table is pure and the simulator drives it.

use std::collections::HashMap;
use std::ops::Add;
use std::time::Duration;

/// Most live tokens a member keeps; past it, the one closest to expiry goes.
pub const SIMPLE_TOKENS_MAX: usize = 100_000;

/// The token table of one member. `I` is the caller's instant type.
#[derive(Debug)]
pub struct SimpleTokens<I> {
    ttl: Duration,
    tokens: HashMap<String, (String, I)>,
}

impl<I: Copy + Ord + Add<Duration, Output = I>> SimpleTokens<I> {
    /// An empty table whose tokens live `ttl` after their last use.
    pub fn new(ttl: Duration) -> Self {
        SimpleTokens {
            ttl,
            tokens: HashMap::new(),
        }
    }

    /// Records a token for `user` at `now`.
    pub fn assign(&mut self, token: &str, user: &str, now: I) {
        if self.tokens.len() >= SIMPLE_TOKENS_MAX {
            self.tokens.retain(|_, (_, deadline)| *deadline > now);
        }
        if self.tokens.len() >= SIMPLE_TOKENS_MAX
            && let Some(oldest) = self
                .tokens
                .iter()
                .min_by_key(|(_, (_, deadline))| *deadline)
                .map(|(token, _)| token.clone())
        {
            self.tokens.remove(&oldest);
        }
        self.tokens
            .insert(token.to_string(), (user.to_string(), now + self.ttl));
    }

    /// The user of a live token, whose TTL starts again; `None` for an
    /// unknown or expired one (which is forgotten).
    pub fn user(&mut self, token: &str, now: I) -> Option<String> {
        let (user, deadline) = self.tokens.get_mut(token)?;
        if *deadline <= now {
            self.tokens.remove(token);
            return None;
        }
        *deadline = now + self.ttl;
        Some(user.clone())
    }

    /// Forgets every token of a user (deleted, or with a new password).
    pub fn invalidate_user(&mut self, user: &str) {
        self.tokens.retain(|_, (name, _)| name != user);
    }

    /// Forgets every token (auth disabled).
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// Live and expired-but-unseen tokens held.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}
