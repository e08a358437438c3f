//! `mainstay dev`: three members on loopback in one process, data under one folder.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::sync::watch;

use crate::config::ServeArgs;
use crate::run::run;

/// Client and peer ports of the three dev members.
pub const DEV_PORTS: [(u16, u16); 3] = [(2379, 2380), (22379, 22380), (32379, 32380)];

/// The configuration of dev member `position` (0..3) under `data_root`.
pub fn dev_member_args(data_root: &Path, position: usize) -> ServeArgs {
    let cluster: Vec<String> = DEV_PORTS
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", i + 1))
        .collect();
    let (client, peer) = DEV_PORTS[position];
    ServeArgs {
        name: Some(format!("m{}", position + 1)),
        data_dir: Some(data_root.join(format!("m{}", position + 1))),
        listen_client_urls: Some(format!("http://127.0.0.1:{client}")),
        advertise_client_urls: Some(format!("http://127.0.0.1:{client}")),
        listen_peer_urls: Some(format!("http://127.0.0.1:{peer}")),
        initial_advertise_peer_urls: Some(format!("http://127.0.0.1:{peer}")),
        initial_cluster: Some(cluster.join(",")),
        initial_cluster_state: Some("new".into()),
        initial_cluster_token: Some("mainstay-dev".into()),
        ..ServeArgs::default()
    }
}

/// Runs the dev cluster until `shutdown` resolves; returns the first member error.
pub async fn run_dev(
    data_root: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_root)
        .with_context(|| format!("create {}", data_root.display()))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut members = tokio::task::JoinSet::new();
    let mut endpoints = Vec::new();
    for position in 0..DEV_PORTS.len() {
        // The dev cluster is fixed: no MAINSTAY_* or ETCD_* variable changes it.
        let config = dev_member_args(&data_root, position).resolve_with_env(&Default::default())?;
        endpoints.push(config.advertise_client_urls.join(","));
        println!(
            "member {} client {} peer {} data {}",
            config.name,
            config.advertise_client_urls.join(","),
            config.advertise_peer_urls.join(","),
            config.data_dir.display()
        );
        let mut rx = stop_rx.clone();
        members.spawn(async move {
            let signal = async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            run(config, signal).await
        });
    }
    println!(
        "\nReady to use:\n  etcdctl --endpoints={} put hello world\n",
        endpoints.join(",")
    );
    let mut result = Ok(());
    tokio::select! {
        () = shutdown => {}
        Some(joined) = members.join_next() => {
            result = match joined {
                Ok(Ok(())) => Err(anyhow::anyhow!("a member exited")),
                Ok(Err(error)) => Err(error),
                Err(error) => Err(anyhow::anyhow!("member task failed: {error}")),
            };
        }
    }
    let _ = stop_tx.send(true);
    while let Some(joined) = members.join_next().await {
        if let Ok(Err(error)) = joined {
            tracing::warn!(%error, "member stopped with an error");
        }
    }
    result
}
