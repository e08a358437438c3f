//! PURE. A linearizability checker for etcd KV client histories.
//!
//! Histories record each request's invocation, completion and answer; a timed
//! out request has an unknown outcome (it may take effect at any point after its
//! invocation, or never). `check` partitions the history by key (requests that
//! touch several keys merge their partitions, giving a combined model), runs a
//! memoised Wing–Gong/Lowe search per partition against the sequential etcd
//! model, checks that revisions never go backwards in real time, and reports
//! each failure with a short window of the operations that show it.
//! `check_sessions` checks what one client sees on one connection: revisions
//! never go back, and its own acknowledged writes are seen.

mod check;
mod history;
mod model;
mod search;
mod session;

#[cfg(test)]
mod tests;

pub use check::{Report, Violation, ViolationKind, check};
pub use history::{Input, Key, Operation, Outcome, Output};
pub use search::{CONFIGURATIONS_MAX, Verdict};
pub use session::{SessionEvent, SessionKind, SessionViolation, check_sessions};
