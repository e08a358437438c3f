//! Listening where the configuration says (TCP with etcd's socket options, or a
//! Unix socket), and the HTTP/2 settings of the client-facing gRPC server.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use tokio::net::{TcpListener, TcpSocket};

use crate::config::{Config, ListenAddress};
use crate::io::{Incoming, tcp_incoming};

/// The listen backlog (tokio's `TcpListener::bind` uses the same).
const BACKLOG: u32 = 1024;

/// Listens on `address`; `reuse_port` sets SO_REUSEPORT on a TCP listener.
pub async fn listen(address: &ListenAddress, reuse_port: bool) -> io::Result<Incoming> {
    match address {
        ListenAddress::Tcp(address) => Ok(tcp_incoming(bind_tcp(*address, reuse_port)?)),
        ListenAddress::Unix(path) => listen_unix(path).await,
    }
}

fn bind_tcp(address: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As Go's listeners (etcd's) and Rust's own do: a restarted member can bind
    // its port while connections of its previous run are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if reuse_port {
        #[cfg(unix)]
        socket.set_reuseport(true)?;
        #[cfg(not(unix))]
        return Err(io::Error::other("--socket-reuse-port needs a Unix system"));
    }
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

#[cfg(unix)]
async fn listen_unix(path: &Path) -> io::Result<Incoming> {
    use tokio::net::UnixListener;
    let listener = match UnixListener::bind(path) {
        // A socket file left by a member that is gone (nothing accepts on it)
        // is removed, as etcd does; a live one is left alone.
        Err(error) if error.kind() == io::ErrorKind::AddrInUse && is_stale_socket(path).await => {
            std::fs::remove_file(path)?;
            UnixListener::bind(path)?
        }
        bound => bound?,
    };
    Ok(crate::io::unix_incoming(listener))
}

#[cfg(unix)]
async fn is_stale_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    is_socket
        && tokio::net::UnixStream::connect(path)
            .await
            .is_err_and(|error| error.kind() == io::ErrorKind::ConnectionRefused)
}

#[cfg(not(unix))]
async fn listen_unix(path: &Path) -> io::Result<Incoming> {
    Err(io::Error::other(format!(
        "unix://{}: Unix sockets need a Unix system",
        path.display()
    )))
}

/// The server for client listeners: gRPC and the HTTP endpoints, HTTP/2 with
/// etcd's settings (`--max-concurrent-streams`, `--grpc-keepalive-interval`
/// and `-timeout`) and HTTP/1.1.
pub fn client_grpc_server(config: &Config) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(config.concurrent_streams_max)
        .http2_keepalive_interval(config.grpc_keepalive_interval)
        .http2_keepalive_timeout(Some(config.grpc_keepalive_timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_unix_socket_is_replaced_and_a_live_one_kept() {
        // Method: bind a socket path, drop the listener (its file stays, as
        // after a crash), bind again; then bind while the second one listens.
        let dir = tempfile::tempdir().expect("tempdir");
        let address = ListenAddress::Unix(dir.path().join("client.sock"));
        drop(listen(&address, false).await.expect("first bind"));
        let _live = listen(&address, false)
            .await
            .expect("stale socket replaced");
        let error = listen(&address, false)
            .await
            .err()
            .expect("a live socket is in use");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
        // A path that is not a socket is never removed.
        let file = dir.path().join("data");
        std::fs::write(&file, b"keep").expect("write");
        assert!(
            listen(&ListenAddress::Unix(file.clone()), false)
                .await
                .is_err()
        );
        assert_eq!(std::fs::read(&file).expect("read"), b"keep");
    }

    #[tokio::test]
    async fn reuse_port_lets_two_listeners_share_a_port() {
        let first = bind_tcp(SocketAddr::from(([127, 0, 0, 1], 0)), true).expect("bind");
        let address = first.local_addr().expect("address");
        assert!(bind_tcp(address, true).is_ok(), "SO_REUSEPORT on both");
        assert!(bind_tcp(address, false).is_err(), "without SO_REUSEPORT");
    }
}
