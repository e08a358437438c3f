//! In-process clusters over real gRPC on loopback: replication, forwarding,
//! linearizable reads, leader loss, restarts, snapshot catch-up, damaged logs,
//! and etcd's error contract.

mod authority;
mod cluster;
mod errors;
mod harness;
mod lease;
mod storage;
mod watch;
