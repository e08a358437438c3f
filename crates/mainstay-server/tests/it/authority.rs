//! Requests whose HTTP/2 `:authority` is not a bare `host:port` are served, as
//! etcd serves them (etcdctl 3.4 sends the endpoint URL, etcd clientv3 3.5.0
//! sent `#initially=[...]`), on client and peer ports alike.

use std::net::SocketAddr;
use std::time::Duration;

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Options, TestCluster};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// One unary call of `path` (empty request message) per authority, on one
/// connection, from hand-written frames (h2's own client cannot send a
/// malformed authority). Yields each call's grpc-status, or the RST_STREAM code.
async fn raw_calls(
    address: SocketAddr,
    path: &str,
    authorities: &[String],
) -> Vec<Result<String, u32>> {
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    let (mut encoder, mut decoder) = (Encoder::new(), Decoder::new());
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    for (i, authority) in authorities.iter().enumerate() {
        let stream = 2 * i as u32 + 1;
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        let block = encoder.encode(fields);
        out.extend(frame(HEADERS, END_HEADERS, stream, &block));
        out.extend(frame(0x0, END_STREAM, stream, &[0; 5]));
    }
    tcp.write_all(&out).await.expect("write");
    let mut results = vec![None; authorities.len()];
    while results.iter().any(Option::is_none) {
        let mut head = [0; 9];
        tcp.read_exact(&mut head).await.expect("read");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0; len];
        tcp.read_exact(&mut payload).await.expect("read");
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        let slot = (stream as usize).saturating_sub(1) / 2;
        match head[3] {
            0x4 if head[4] == 0 => tcp
                .write_all(&frame(0x4, 1, 0, &[]))
                .await
                .expect("settings ack"),
            0x3 => {
                results[slot] = Some(Err(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ])))
            }
            HEADERS => {
                for (name, value) in decoder.decode(&payload).expect("response headers") {
                    if name == b"grpc-status" {
                        results[slot] = Some(Ok(String::from_utf8_lossy(&value).into_owned()));
                    }
                }
            }
            _ => {}
        }
    }
    results.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_a_url_or_garbage_as_authority_are_served() {
    let cluster = TestCluster::start(1, Options::default()).await;
    let member = &cluster.members[0];
    for (port, path) in [
        (member.client_port, "/etcdserverpb.Maintenance/Status"),
        (member.client_port, "/etcdserverpb.Cluster/MemberList"),
        (member.peer_port, "/mainstay.peer.RaftPeer/ReadIndex"),
    ] {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let authorities = [
            format!("http://127.0.0.1:{port}"),
            format!("#initially=[127.0.0.1:{port}]"),
            format!("127.0.0.1:{port}"),
        ];
        let answers = tokio::time::timeout(
            Duration::from_secs(10),
            raw_calls(address, path, &authorities),
        )
        .await
        .expect("answers in time");
        let ok = || Ok("0".to_string());
        assert_eq!(answers, vec![ok(), ok(), ok()], "{path}");
    }
    cluster.shutdown().await;
}
