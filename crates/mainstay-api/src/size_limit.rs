//! gRPC's own message size limit, with gRPC's words. etcd lets gRPC receive
//! messages of up to `--max-request-bytes` plus 512 KiB (so that it can answer
//! a request a little over the limit with "request is too large" itself, see
//! `ApiError::RequestTooLarge`); a larger message is refused by grpc-go with
//! `ResourceExhausted` "grpc: received message larger than max (N vs. M)".
//! tonic refuses it with `OutOfRange` and other words, so this layer reads each
//! request message's length prefix (1 flag byte, 4 length bytes) as it streams
//! by and fails the request body with etcd's status before tonic sees the
//! message. The decision is made on the parsed length, never on text.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body as TonicBody;
use tonic::codegen::Bytes;

/// The status grpc-go answers for a message of `length` bytes over `limit`.
pub fn message_too_large(length: u64, limit: u64) -> Status {
    Status::resource_exhausted(format!(
        "grpc: received message larger than max ({length} vs. {limit})"
    ))
}

/// Where the parser is within the stream of length-prefixed messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prefix {
    /// This many bytes of a 5-byte prefix seen, and its length bytes so far.
    Reading { seen: u8, length: u32 },
    /// Bytes of the current message still to come.
    Message(u64),
}

/// Follows length prefixes through arbitrary chunks; `None` while all is
/// well, `Some(length)` for the first message over `limit`.
#[derive(Clone, Debug)]
pub struct PrefixParser {
    state: Prefix,
    limit: u64,
}

impl PrefixParser {
    /// A parser at the start of a request body.
    pub fn new(limit: u64) -> Self {
        PrefixParser {
            state: Prefix::Reading { seen: 0, length: 0 },
            limit,
        }
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Option<u64> {
        while !chunk.is_empty() {
            match self.state {
                Prefix::Message(left) => {
                    let take = left.min(chunk.len() as u64);
                    chunk = &chunk[take as usize..];
                    self.state = if take == left {
                        Prefix::Reading { seen: 0, length: 0 }
                    } else {
                        Prefix::Message(left - take)
                    };
                }
                Prefix::Reading { seen, length } => {
                    // Byte 0 is the compression flag; bytes 1..=4 the length.
                    let length = if seen == 0 {
                        0
                    } else {
                        (length << 8) | u32::from(chunk[0])
                    };
                    chunk = &chunk[1..];
                    if seen < 4 {
                        self.state = Prefix::Reading {
                            seen: seen + 1,
                            length,
                        };
                        continue;
                    }
                    let length = u64::from(length);
                    if length > self.limit {
                        return Some(length);
                    }
                    self.state = if length == 0 {
                        Prefix::Reading { seen: 0, length: 0 }
                    } else {
                        Prefix::Message(length)
                    };
                }
            }
        }
        None
    }
}

/// A request body that fails with `message_too_large` at the first prefix
/// announcing a message over the limit.
struct LimitedBody {
    inner: TonicBody,
    parser: PrefixParser,
    failed: bool,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Some(length) = self.parser.feed(data)
                {
                    self.failed = true;
                    let limit = self.parser.limit;
                    return Poll::Ready(Some(Err(message_too_large(length, limit))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The layer for a client server: every service behind it.
#[derive(Clone, Copy, Debug)]
pub struct MessageSizeLimit {
    /// Largest message accepted, in bytes.
    pub limit: u64,
}

impl<S> tower::Layer<S> for MessageSizeLimit {
    type Service = MessageSizeLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageSizeLimited {
            inner,
            limit: self.limit,
        }
    }
}

/// The service `MessageSizeLimit` wraps.
#[derive(Clone, Debug)]
pub struct MessageSizeLimited<S> {
    inner: S,
    limit: u64,
}

impl<S> tower::Service<http::Request<TonicBody>> for MessageSizeLimited<S>
where
    S: tower::Service<http::Request<TonicBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<TonicBody>) -> S::Future {
        // HTTP requests (the JSON gateway, health) have their own body limit.
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            return self.inner.call(request);
        }
        let limit = self.limit;
        self.inner.call(request.map(|inner| {
            TonicBody::new(LimitedBody {
                inner,
                parser: PrefixParser::new(limit),
                failed: false,
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: u32) -> Vec<u8> {
        let mut out = vec![0];
        out.extend(length.to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, length as usize));
        out
    }

    #[test]
    fn prefixes_are_found_across_any_chunking() {
        // Two messages within the limit, then one over it.
        let stream: Vec<u8> = [message(3), message(0), message(10), message(11)].concat();
        for size in 1..stream.len() {
            let mut parser = PrefixParser::new(10);
            let found = stream.chunks(size).find_map(|chunk| parser.feed(chunk));
            assert_eq!(found, Some(11), "chunks of {size}");
        }
        let mut parser = PrefixParser::new(11);
        assert_eq!(parser.feed(&stream), None);
    }

    #[test]
    fn the_status_is_grpc_gos() {
        let status = message_too_large(3_000_000, 2_097_152);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "grpc: received message larger than max (3000000 vs. 2097152)"
        );
    }
}
