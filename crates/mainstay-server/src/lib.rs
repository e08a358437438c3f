//! Wiring: configuration (`ServeArgs` → `Config`), `run` for one member and the
//! three-member local dev cluster. Binaries stay thin; tests call `run` directly.

mod anchor_clients;
mod authority;
mod certs;
mod config;
mod dev;
mod io;
mod listen;
mod peer_names;
mod peer_tls;
mod run;
mod snapshot_file;
mod tls;

pub use certs::{CertMember, Made, make as make_certs};
pub use config::{
    ClusterState, Config, EtcdFlags, Listen, ListenAddress, LogFormat, LogOutput, ServeArgs,
    Warning, defaults, parse_url,
};
pub use dev::{DEV_PORTS, dev_member_args, dev_member_args_tls, run_dev};
pub use io::{Conn, Incoming, Io, tcp_incoming};
pub use listen::{client_grpc_server, listen};
pub use mainstay_raft::Replica;
pub use run::{Env, Listeners, SafetyBreaks, bind, run, run_with_listeners};
pub use snapshot_file::{FileStatus, RestoreArgs, StatusArgs, file_status, render_status, restore};
