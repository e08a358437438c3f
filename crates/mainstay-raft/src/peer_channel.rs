//! A channel to a peer that tells, by type, the calls that never left this
//! member. Whether a failed forwarded write may be sent again depends on it, so
//! it must not hang on an error's wording: tonic keeps a connect failure's type
//! only inside the channel (its `Status` carries the text alone), so this layer
//! looks there and hands the client a `NotSent` error in its place.
//!
//! `Dial` opens such channels: over TCP, or a Unix socket for `unix://` URLs.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::transport::Channel;

type BoxError = Box<dyn Error + Send + Sync>;

/// A call that failed before any byte of it was sent: the connection to the
/// peer could not be established. Safe to send again.
#[derive(Debug, thiserror::Error)]
#[error("peer not reached: {0}")]
pub struct NotSent(String);

/// Whether a failed call's status says it surely never reached the peer.
pub fn not_sent(status: &tonic::Status) -> bool {
    status.source().is_some_and(|source| source.is::<NotSent>())
}

/// `Channel` with connect failures turned into `NotSent`.
#[derive(Clone, Debug)]
pub struct PeerChannel(Channel);

impl PeerChannel {
    /// Wraps a (lazily connecting) channel.
    pub fn new(channel: Channel) -> Self {
        PeerChannel(channel)
    }
}

/// Whether `error` or any error under it is tonic's connect failure.
fn is_connect_failure(error: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Keeps the error, except a connect failure, which becomes `NotSent` (with no
/// source: tonic would otherwise find the connect error under it and flatten
/// it to text again).
fn classify(error: tonic::transport::Error) -> BoxError {
    if is_connect_failure(&error) {
        let mut text = error.to_string();
        let mut cause = error.source();
        while let Some(inner) = cause {
            text.push_str(": ");
            text.push_str(&inner.to_string());
            cause = inner.source();
        }
        Box::new(NotSent(text))
    } else {
        Box::new(error)
    }
}

impl tower::Service<http::Request<Body>> for PeerChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(classify)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = self.0.call(request);
        Box::pin(async move { call.await.map_err(classify) })
    }
}

/// Opens a lazily connected channel to a peer URL.
pub type Dial = Arc<dyn Fn(&str) -> Result<tonic::transport::Channel, String> + Send + Sync>;

/// Dials peers over the operating system's TCP, or its Unix sockets for
/// etcd's `unix://path` peer URLs.
pub fn tcp_dial() -> Dial {
    Arc::new(|url: &str| {
        let socket_path = url.strip_prefix("unix://");
        // For a Unix socket the URI names only the HTTP/2 authority.
        let uri = match socket_path {
            Some(_) => "http://localhost".to_string(),
            None => url.to_string(),
        };
        let endpoint = peer_endpoint(url, uri)?;
        match socket_path {
            Some(path) => unix_channel(&endpoint, std::path::PathBuf::from(path)),
            None => Ok(endpoint.connect_lazy()),
        }
    })
}

/// The endpoint (timeouts, keep-alive) every peer channel uses; `uri` is
/// what the channel is built for (the peer URL, or a stand-in for a socket).
pub fn peer_endpoint(url: &str, uri: String) -> Result<tonic::transport::Endpoint, String> {
    Ok(tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| format!("bad peer URL {url}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// A lazily connected channel to the Unix socket at `path`.
#[cfg(unix)]
fn unix_channel(
    endpoint: &tonic::transport::Endpoint,
    path: std::path::PathBuf,
) -> Result<tonic::transport::Channel, String> {
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        })),
    )
}

#[cfg(not(unix))]
fn unix_channel(
    _endpoint: &tonic::transport::Endpoint,
    path: std::path::PathBuf,
) -> Result<tonic::transport::Channel, String> {
    Err(format!(
        "unix://{}: Unix sockets need a Unix system",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mainstay_proto::peer::ReadIndexRequest;
    use mainstay_proto::peer::raft_peer_client::RaftPeerClient;

    /// A ReadIndex call through a `PeerChannel` to `address`, which must fail.
    async fn read_index_at(address: std::net::SocketAddr) -> tonic::Status {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect_lazy();
        RaftPeerClient::new(PeerChannel::new(channel))
            .read_index(ReadIndexRequest {})
            .await
            .expect_err("no answer can come")
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_sent_and_a_reset_one_is_unknown() {
        // A port nobody listens on: the connection is refused, nothing is sent.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let status = read_index_at(address).await;
        assert!(not_sent(&status), "{status:?}");

        // A server that accepts and then drops the connection: the request may
        // have been read, so it is not marked as unsent.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            for _ in 0..4 {
                if let Ok((mut socket, _)) = listener.accept().await {
                    let mut buffer = [0u8; 4096];
                    let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buffer).await;
                }
            }
        });
        let status = read_index_at(address).await;
        assert!(!not_sent(&status), "{status:?}");
        server.abort();
    }
}
