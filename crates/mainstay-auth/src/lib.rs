//! PURE. etcd's auth store as replicated state: users, roles, key-range
//! permissions, enable/disable and the auth revision (`AuthState`), what an
//! auth request does to it (`AuthState::apply`), and who may do what
//! (`AuthState::check_op`, `check_admin`). Beside it, two per-member tables
//! with time passed in as a value: simple tokens (`SimpleTokens`) and failed
//! logins (`LoginThrottle`).
//!
//! No I/O, clock, randomness or async: every replica computes the same result
//! from the same state and request. Password hashing and token signing happen
//! outside (the API layer), so what enters the Raft log is already a hash.

mod error;
mod ranges;
mod request;
mod state;
pub mod throttle;
mod tokens;

#[cfg(test)]
mod tests;

pub use error::AuthError;
pub use ranges::{Interval, covers};
pub use request::{AuthReply, AuthRequest, valid_permission_range};
pub use state::{AuthState, Caller, Permission, PermissionKind, ROOT, Role, User};
pub use throttle::{LoginThrottle, Throttled};
pub use tokens::{SIMPLE_TOKENS_MAX, SimpleTokens};
