//! Connections as the servers see them, whatever network they come from: real
//! TCP in production, a simulated network under the simulator.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tonic::transport::server::Connected;

/// A byte stream a server can speak HTTP/2 over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// One accepted connection.
pub struct Conn {
    /// The bytes.
    pub io: Box<dyn Io>,
    /// Who is at the other end, for log lines (`IP:port`, or `unix socket`).
    pub remote: String,
    /// The verified client certificate's common name (TLS listeners only).
    pub common_name: Option<String>,
}

impl Conn {
    /// Wraps a stream.
    pub fn new(io: impl Io, remote: String) -> Conn {
        Conn {
            io: Box::new(io),
            remote,
            common_name: None,
        }
    }

    /// The same connection, with its client certificate's common name.
    pub fn with_common_name(mut self, common_name: Option<String>) -> Conn {
        self.common_name = common_name;
        self
    }
}

/// Every request on the connection carries who it came from (the auth layer
/// takes a certificate's common name as the user, as etcd does).
impl Connected for Conn {
    type ConnectInfo = mainstay_api::ClientIdentity;
    fn connect_info(&self) -> Self::ConnectInfo {
        mainstay_api::ClientIdentity {
            common_name: self.common_name.clone(),
            remote: self.remote.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

/// A stream of accepted connections.
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>;

/// Accepts from a real TCP listener (with TCP_NODELAY).
pub fn tcp_incoming(listener: TcpListener) -> Incoming {
    Box::pin(futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, remote)| {
            // Latency matters more than packet count for Raft and small requests.
            let _ = stream.set_nodelay(true);
            Conn::new(stream, remote.to_string())
        });
        Some((accepted, listener))
    }))
}

/// Accepts from a Unix socket listener.
#[cfg(unix)]
pub fn unix_incoming(listener: tokio::net::UnixListener) -> Incoming {
    Box::pin(futures::stream::unfold(listener, |listener| async move {
        let accepted = listener
            .accept()
            .await
            .map(|(stream, _)| Conn::new(stream, "unix socket".to_string()));
        Some((accepted, listener))
    }))
}
