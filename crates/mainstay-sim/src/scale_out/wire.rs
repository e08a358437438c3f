//! A line protocol over turmoil's TCP between the simulated clients, the
//! group leaders and the sequencer: one request line, one answer line. The
//! members themselves are reached through their real etcd API.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use turmoil::net::TcpStream;
use turmoil::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Deadline of one request in simulated time.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(3);

/// Deadline of one attempt at one member, after which the next member is
/// tried (etcd's clients move to another endpoint as well).
pub(crate) const ATTEMPT: Duration = Duration::from_secs(1);

/// Longest line accepted (a batch's hello or a put's value stay far below).
const LINE_MAX: usize = 64 * 1024;

/// One connection.
pub(crate) struct Line {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Line {
    pub(crate) fn new(stream: TcpStream) -> Line {
        let (read, write) = stream.into_split();
        Line {
            reader: BufReader::new(read),
            writer: write,
        }
    }

    /// Connects to `host:port` within the deadline.
    pub(crate) async fn connect(host: &str, port: u16) -> std::io::Result<Line> {
        match tokio::time::timeout(TIMEOUT, TcpStream::connect((host, port))).await {
            Ok(stream) => Ok(Line::new(stream?)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )),
        }
    }

    /// The next line, None at the end of the stream.
    pub(crate) async fn read(&mut self) -> std::io::Result<Option<String>> {
        let mut text = String::new();
        let read = (&mut self.reader)
            .take(LINE_MAX as u64)
            .read_line(&mut text)
            .await?;
        if read == 0 {
            return Ok(None);
        }
        if !text.ends_with('\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "line too long or cut",
            ));
        }
        text.pop();
        Ok(Some(text))
    }

    /// Sends one line.
    pub(crate) async fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.writer.write_all(text.as_bytes()).await?;
        self.writer.write_all(b"\n").await?;
        self.writer.flush().await
    }

    /// Sends a request and waits for its answer, within the deadline.
    pub(crate) async fn call(&mut self, request: &str) -> std::io::Result<String> {
        let exchange = async {
            self.send(request).await?;
            self.read().await?.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")
            })
        };
        match tokio::time::timeout(TIMEOUT, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in time",
            )),
        }
    }
}
