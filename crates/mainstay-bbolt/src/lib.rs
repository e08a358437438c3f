//! The bbolt file format (bbolt v1.3.x, the one etcd 3.4–3.6 keeps its
//! backend in and streams as a snapshot), written from sorted data in one
//! pass with memory that does not grow with the data, and read back.
//!
//! Hand-written: no maintained crate writes bbolt files as a stream (the one
//! Rust port is a whole mmap database that would need the file on disk
//! first). The facts (page layout, meta checksum) are in
//! `docs/design/etcd-snapshot-format.md`.
//!
//! Writing takes two passes over the same data: `Planner` sees only the
//! sizes and fixes every page id, so the meta pages (which name the root
//! page and the page count) can go first; `Writer` then emits the pages in
//! order and checks that the data matched the plan.

mod layout;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

pub use layout::PAGE_SIZE;
pub use reader::{Database, Item, ReadError};
pub use writer::{Plan, Planner, Sink, WriteError, Writer};
