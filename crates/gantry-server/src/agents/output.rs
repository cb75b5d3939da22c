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

#[derive(Default)]
struct Buffer {
    chunks: VecDeque<LogChunk>,
    bytes: usize,
    done: bool,
    seq: u64,
    /// Made when the first reader follows: a broadcast channel holds
    /// [`FOLLOW_QUEUE`] slots from the start, too much to pay for every
    /// attempt when most are never followed.
    tx: Option<broadcast::Sender<Option<LogChunk>>>,
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
    /// Adds a chunk from `node_id`'s stream.
    pub async fn push(&self, node_id: &str, attempt: AttemptRef, chunk: LogChunk) {
        let mut buffers = self.buffers.write().await;
        let buf = entry(&mut buffers, node_id, attempt);
        buf.seq += 1;
        buf.bytes += chunk.data.len();
        if let Some(tx) = &buf.tx {
            let _ = tx.send(Some(chunk.clone()));
        }
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
        let buf = entry(&mut buffers, node_id, attempt);
        buf.done = true;
        if let Some(tx) = &buf.tx {
            let _ = tx.send(None);
        }
    }

    /// What is buffered for an attempt, and a receiver for what follows.
    pub async fn tail(&self, node_id: &str, attempt: AttemptRef) -> Tail {
        let mut buffers = self.buffers.write().await;
        let buf = entry(&mut buffers, node_id, attempt);
        let live = buf
            .tx
            .get_or_insert_with(|| broadcast::channel(FOLLOW_QUEUE).0)
            .subscribe();
        Tail {
            buffered: buf.chunks.iter().cloned().collect(),
            done: buf.done,
            live,
        }
    }

    /// Attempts with a buffer now (at most [`MAX_BUFFERED_ATTEMPTS`]).
    #[cfg(test)]
    async fn len(&self) -> usize {
        self.buffers.read().await.len()
    }
}

/// The attempt's buffer, made if it has none; the map never grows past
/// [`MAX_BUFFERED_ATTEMPTS`].
fn entry<'a>(
    buffers: &'a mut HashMap<Key, Buffer>,
    node_id: &str,
    attempt: AttemptRef,
) -> &'a mut Buffer {
    let key = (node_id.to_owned(), attempt);
    if !buffers.contains_key(&key) && buffers.len() >= MAX_BUFFERED_ATTEMPTS {
        evict(buffers);
    }
    buffers.entry(key).or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32) -> AttemptRef {
        AttemptRef {
            job_id: format!("job-{n}"),
            task: 0,
            attempt: 1,
        }
    }

    // Every finished attempt used to leave a buffer behind (finish made one
    // when none existed), so a replica's memory grew with every task it saw.
    #[tokio::test]
    async fn t40_buffers_stay_bounded_however_many_attempts_finish() {
        let hub = OutputHub::default();
        for n in 0..(MAX_BUFFERED_ATTEMPTS as u32 * 3) {
            hub.finish("node-1", attempt(n)).await;
        }
        assert_eq!(hub.len().await, MAX_BUFFERED_ATTEMPTS);
    }

    #[tokio::test]
    async fn t40_a_follower_sees_chunks_and_the_end() {
        let hub = OutputHub::default();
        let chunk = |d: &str| LogChunk {
            data: d.as_bytes().to_vec(),
            ..LogChunk::default()
        };
        hub.push("n", attempt(1), chunk("before")).await;
        let mut tail = hub.tail("n", attempt(1)).await;
        assert_eq!(tail.buffered.len(), 1);
        assert!(!tail.done);
        hub.push("n", attempt(1), chunk("after")).await;
        hub.finish("n", attempt(1)).await;
        assert_eq!(tail.live.recv().await.unwrap().unwrap().data, b"after");
        assert!(tail.live.recv().await.unwrap().is_none());
        assert!(hub.tail("n", attempt(1)).await.done);
    }
}
