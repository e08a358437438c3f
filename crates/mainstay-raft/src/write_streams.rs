//! `WriteStreams`: the `ForwardWriteStream`s a follower keeps open to its
//! leader between batches of forwarded writes (`write_batches`), so a batch is
//! one message each way rather than a call with its own set-up. A stream is
//! taken by one batch sender at a time and given back after a reply; any
//! failure drops it. Idle streams are kept only for the latest leader, at most
//! `SENDERS_MAX` (one per sender).

use std::sync::Mutex;

use mainstay_proto::peer::{ForwardWritesRequest, ForwardWritesResponse};
use tokio::sync::mpsc;

use crate::write_batches::SENDERS_MAX;

/// One open stream: a batch in, exactly one reply out, in order.
pub(crate) struct WriteStream {
    pub(crate) requests: mpsc::Sender<ForwardWritesRequest>,
    pub(crate) replies: tonic::Streaming<ForwardWritesResponse>,
}

/// Idle streams by leader id. See the module docs.
#[derive(Default)]
pub(crate) struct WriteStreams {
    idle: Mutex<Vec<(u64, WriteStream)>>,
}

impl WriteStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, WriteStream)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle stream to `leader` whose sending side is still open, if any.
    pub(crate) fn take(&self, leader: u64) -> Option<WriteStream> {
        let mut idle = self.lock();
        idle.retain(|(_, stream)| !stream.requests.is_closed());
        let at = idle.iter().position(|(id, _)| *id == leader)?;
        Some(idle.swap_remove(at).1)
    }

    /// Keeps a stream that just answered for the next batch to `leader`;
    /// streams to any other member are dropped.
    pub(crate) fn give_back(&self, leader: u64, stream: WriteStream) {
        let mut idle = self.lock();
        idle.retain(|(id, _)| *id == leader);
        if idle.len() < SENDERS_MAX {
            idle.push((leader, stream));
        }
    }
}
