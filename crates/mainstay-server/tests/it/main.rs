//! In-process clusters over real gRPC on loopback: replication, forwarding,
//! linearizable reads, leader loss, restarts, snapshot catch-up, damaged logs,
//! etcd's error contract, the Lock and Election services, TLS for clients and
//! peers, and recovery from a lost quorum.

mod alarms;
mod auth;
mod authority;
mod cluster;
mod compaction;
mod election;
mod errors;
mod harness;
mod http;
mod lease;
mod lock;
mod peer_tls;
mod quorum_loss;
mod snapshot;
mod storage;
mod tls;
mod watch;
