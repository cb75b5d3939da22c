//! Live task output on the replica that holds the node's stream: a bounded
//! buffer per attempt plus a broadcast for followers. Other replicas relay
//! it through `RaftService.TailOutput`. Nothing here is in the Raft log; the
//! log keeps only the bounded tails that come with each result.

use std::collections::{HashMap, VecDeque};

use gantry_core::AttemptRef;
use gantry_proto::v1::LogChunk;
use tokio::sync::{RwLock, broadcast};

/// Live output kept per attempt (older chunks are dropped first).
pub const MAX_BUFFERED_BYTES_PER_ATTEMPT: usize = 1024 * 1024;
/// Attempts whose output is kept; the oldest finished ones go first.
pub const MAX_BUFFERED_ATTEMPTS: usize = 1_000;
/// Chunks a slow follower may lag behind before it misses some.
const FOLLOW_QUEUE: usize = 1_024;

type Key = (String, AttemptRef);

struct Buffer {
    chunks: VecDeque<LogChunk>,
    bytes: usize,
    done: bool,
    seq: u64,
    tx: broadcast::Sender<Option<LogChunk>>,
}

/// What a reader gets: what is buffered now, and the live rest if following.
pub struct Tail {
    pub buffered: Vec<LogChunk>,
    pub done: bool,
    pub live: broadcast::Receiver<Option<LogChunk>>,
}

#[derive(Default)]
pub struct OutputHub {
    buffers: RwLock<HashMap<Key, Buffer>>,
}

impl OutputHub {
    fn new_buffer() -> Buffer {
        Buffer {
            chunks: VecDeque::new(),
            bytes: 0,
            done: false,
            seq: 0,
            tx: broadcast::channel(FOLLOW_QUEUE).0,
        }
    }

    /// Adds a chunk from `node_id`'s stream.
    pub async fn push(&self, node_id: &str, attempt: AttemptRef, chunk: LogChunk) {
        let mut buffers = self.buffers.write().await;
        if buffers.len() >= MAX_BUFFERED_ATTEMPTS {
            evict(&mut buffers);
        }
        let buf = buffers
            .entry((node_id.to_owned(), attempt))
            .or_insert_with(Self::new_buffer);
        buf.seq += 1;
        buf.bytes += chunk.data.len();
        let _ = buf.tx.send(Some(chunk.clone()));
        buf.chunks.push_back(chunk);
        while buf.bytes > MAX_BUFFERED_BYTES_PER_ATTEMPT {
            match buf.chunks.pop_front() {
                Some(c) => buf.bytes -= c.data.len(),
                None => break,
            }
        }
    }

    /// The attempt ended: followers get the end of the stream.
    pub async fn finish(&self, node_id: &str, attempt: AttemptRef) {
        let mut buffers = self.buffers.write().await;
        let buf = buffers
            .entry((node_id.to_owned(), attempt))
            .or_insert_with(Self::new_buffer);
        buf.done = true;
        let _ = buf.tx.send(None);
    }

    /// What is buffered for an attempt, and a receiver for what follows.
    pub async fn tail(&self, node_id: &str, attempt: AttemptRef) -> Tail {
        let mut buffers = self.buffers.write().await;
        let buf = buffers
            .entry((node_id.to_owned(), attempt))
            .or_insert_with(Self::new_buffer);
        Tail {
            buffered: buf.chunks.iter().cloned().collect(),
            done: buf.done,
            live: buf.tx.subscribe(),
        }
    }
}

/// Drops a finished attempt's buffer (or any, if none has finished).
fn evict(buffers: &mut HashMap<Key, Buffer>) {
    let victim = buffers
        .iter()
        .find(|(_, b)| b.done)
        .or_else(|| buffers.iter().next())
        .map(|(k, _)| k.clone());
    if let Some(k) = victim {
        buffers.remove(&k);
    }
}
