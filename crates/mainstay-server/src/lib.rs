//! Wiring: configuration (`ServeArgs` → `Config`), `run` for one member and the
//! three-member local dev cluster. Binaries stay thin; tests call `run` directly.

mod config;
mod dev;
mod run;

pub use config::{ClusterState, Config, ServeArgs, defaults, parse_url};
pub use dev::{DEV_PORTS, dev_member_args, run_dev};
pub use mainstay_raft::Replica;
pub use run::{Listeners, bind, cluster_id_for, run, run_observed, run_with_listeners};
