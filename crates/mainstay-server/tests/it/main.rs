//! In-process clusters over real gRPC on loopback: replication, forwarding,
//! linearizable reads, leader loss, restarts, snapshot catch-up, damaged logs,
//! etcd's error contract, and the Lock and Election services.

mod authority;
mod cluster;
mod election;
mod errors;
mod harness;
mod lease;
mod lock;
mod storage;
mod watch;
