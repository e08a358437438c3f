//! `mainstay dev`: three members on loopback in one process, data under one folder.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::sync::watch;

use crate::certs::CertMember;
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

/// Dev member `position` serving clients over TLS with the certificates in
/// `certs` (made by `mainstay certs`): client certificates required.
pub fn dev_member_args_tls(data_root: &Path, certs: &Path, position: usize) -> ServeArgs {
    let plain = dev_member_args(data_root, position);
    let name = plain.name.clone().unwrap_or_default();
    let (client, _) = DEV_PORTS[position];
    ServeArgs {
        listen_client_urls: Some(format!("https://127.0.0.1:{client}")),
        advertise_client_urls: Some(format!("https://127.0.0.1:{client}")),
        cert_file: Some(certs.join(format!("{name}.pem"))),
        key_file: Some(certs.join(format!("{name}-key.pem"))),
        trusted_ca_file: Some(certs.join("ca.pem")),
        client_cert_auth: Some(true),
        ..plain
    }
}

/// Runs the dev cluster until `shutdown` resolves; returns the first member
/// error. With `tls`, clients are served over TLS with certificates made (once)
/// under `<data_root>/certs`.
pub async fn run_dev(
    data_root: PathBuf,
    tls: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_root)
        .with_context(|| format!("create {}", data_root.display()))?;
    let certs = data_root.join("certs");
    if tls {
        let members: Vec<CertMember> = (1..=DEV_PORTS.len())
            .map(|i| CertMember {
                name: format!("m{i}"),
                hosts: vec!["127.0.0.1".to_string(), "localhost".to_string()],
            })
            .collect();
        crate::certs::make(&certs, &members, &["root".to_string()], 365)?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut members = tokio::task::JoinSet::new();
    let mut endpoints = Vec::new();
    for position in 0..DEV_PORTS.len() {
        // The dev cluster is fixed: no MAINSTAY_* or ETCD_* variable changes it.
        let args = if tls {
            dev_member_args_tls(&data_root, &certs, position)
        } else {
            dev_member_args(&data_root, position)
        };
        let config = args.resolve_with_env(&Default::default())?;
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
    let tls_flags = if tls {
        let file = |name: &str| certs.join(name).display().to_string();
        format!(
            " --cacert={} --cert={} --key={}",
            file("ca.pem"),
            file("client-root.pem"),
            file("client-root-key.pem")
        )
    } else {
        String::new()
    };
    println!(
        "\nReady to use:\n  etcdctl --endpoints={}{tls_flags} put hello world\n",
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
