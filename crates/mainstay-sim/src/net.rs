//! The simulated network seam: turmoil sockets behind the member's `Dial` and
//! `Incoming`, so the real tonic servers and clients run unchanged.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use mainstay_raft::Dial;
use mainstay_server::{Conn, Incoming};
use tonic::transport::{Channel, Endpoint, Uri};

/// A lazily connected channel to `url` over turmoil's network.
pub fn channel(url: &str) -> Result<Channel, String> {
    let endpoint =
        Endpoint::from_shared(url.to_string()).map_err(|e| format!("bad URL {url}: {e}"))?;
    // The same connection settings as production's `tcp_dial`.
    let endpoint = endpoint
        .connect_timeout(std::time::Duration::from_secs(1))
        .http2_keep_alive_interval(std::time::Duration::from_secs(5))
        .keep_alive_timeout(std::time::Duration::from_secs(5));
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(|uri: Uri| async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(80);
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        })),
    )
}

/// One client per member, on each member's client port.
pub fn per_member<T>(members: &[String], make: impl Fn(Channel) -> T) -> Result<Vec<T>, String> {
    members
        .iter()
        .map(|member| channel(&format!("http://{member}:2379")).map(&make))
        .collect()
}

/// The member's peer dialer under simulation.
pub fn dial() -> Dial {
    Arc::new(channel)
}

/// Accepts simulated connections on `port`.
pub async fn incoming(port: u16) -> std::io::Result<Incoming> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(Box::pin(futures::stream::unfold(
        listener,
        |listener| async move {
            let accepted = listener
                .accept()
                .await
                .map(|(stream, remote)| Conn::new(stream, remote.to_string()));
            Some((accepted, listener))
        },
    )))
}
