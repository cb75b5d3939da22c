//! Group fsync: one thread per database makes writes durable, with one
//! sled flush for every request that was waiting when the flush began.
//!
//! Appending used to await `flush_async` before returning, so openraft
//! could not hand over the next entries until the disk had answered, and
//! every append paid for its own flush. `flush_async` also runs `flush` as
//! a job on sled's I/O pool, and every job given to that pool wakes all of
//! its idle threads (seven per process) for one of them to take it; sled's
//! own flush gives the pool one more job (the buffer write), which remains.
//!
//! Now an append writes its entries into sled's buffers and returns; the
//! flusher calls openraft's callback once a flush that began after the
//! write has finished. A flush makes durable everything written before it
//! began, so the callbacks fire in order and none fires early.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// What a finished flush hands to a waiter: its result, shared by all.
pub(crate) type Flushed<'a> = &'a Result<(), (io::ErrorKind, String)>;

type Waiter = Box<dyn FnOnce(Flushed<'_>) + Send>;

/// The handle of a database's flusher thread. Dropping the last handle
/// lets the thread finish what is queued, release its database handle and
/// exit; the drop waits for that, so the database can be reopened at once.
pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<Waiter>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start(db: &sled::Db) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let db = db.clone();
        let thread = std::thread::Builder::new()
            .name("gantry-fsync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Everyone queued now was written before this flush.
                    let waiting: Vec<Waiter> =
                        std::iter::once(first).chain(rx.try_iter()).collect();
                    let result = db
                        .flush()
                        .map(|_| ())
                        .map_err(|e| (io::ErrorKind::Other, e.to_string()));
                    if let Err((_, e)) = &result {
                        tracing::error!(error = %e, "flushing the Raft log failed");
                    }
                    for w in waiting {
                        w(&result);
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Runs `then` once everything written before this call is on disk.
    pub(crate) fn after_flush(&self, then: impl FnOnce(Flushed<'_>) + Send + 'static) {
        let sent = self.tx.as_ref().map(|tx| tx.send(Box::new(then)));
        if let Some(Err(mpsc::SendError(then))) = sent {
            // Only if the thread is gone (it never exits while handles
            // exist, short of a panic): nothing can be made durable.
            then(&Err((
                io::ErrorKind::BrokenPipe,
                "the log's flusher thread has stopped".into(),
            )));
        }
    }

    /// Waits until everything written before this call is on disk.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_flush(move |r| {
            let _ = tx.send(r.clone());
        });
        match rx.await {
            Ok(r) => r.map_err(|(kind, e)| io::Error::new(kind, e)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the log's flusher thread stopped before flushing",
            )),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn t20_waiters_are_answered_in_order_and_the_database_reopens_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let db = sled::open(&path).unwrap();
        let flusher = Flusher::start(&db).unwrap();
        let (order, answered) = mpsc::channel();
        for i in 0..100u32 {
            db.insert(i.to_be_bytes(), &[1u8][..]).unwrap();
            let order = order.clone();
            flusher.after_flush(move |r| {
                assert!(r.is_ok(), "{r:?}");
                order.send(i).unwrap();
            });
        }
        flusher.flush().await.unwrap();
        drop(order);
        assert_eq!(
            answered.iter().collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        drop(flusher);
        drop(db);
        // The thread's handle on the database is gone with the flusher.
        let db = sled::open(&path).unwrap();
        assert_eq!(db.len(), 100);
    }
}
