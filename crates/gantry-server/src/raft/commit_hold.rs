//! Commit-only appends held briefly, so that a follower learns the commit
//! index with the next entries instead of in a message of its own.
//!
//! openraft sends a follower the leader's commit index in an append without
//! entries whenever the index advances and no new entry is waiting. Under
//! load the next entries follow within a millisecond, so every follower
//! handled two messages per entry (each a TLS record both ways, a wake-up
//! and a pass through openraft's core). Here an append that carries nothing
//! but a commit (no entries, continuing where the last one sent ended) is
//! held for up to [`COMMIT_HOLD`]: a request that comes meanwhile carries
//! the same commit or a newer one, and the held one is not sent; otherwise
//! it goes out when the hold ends. An idle follower learns a commit at most
//! that much later; the leader's own commit, and so every client's answer,
//! does not wait for it.
//!
//! openraft expects one answer per request, in order, and reads from each
//! the time its request was made as the time the follower last heard from
//! the leader. A request not sent is answered with the follower's answer to
//! the next request sent, just before that one's: the follower did
//! acknowledge a message made after it. An answer is never made up before
//! the follower has given one.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{Stream, StreamExt};
use gantry_store::{LogId, TypeConfig};
use openraft::raft::AppendEntriesRequest;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

/// How long a commit-only append waits for the next entries to carry it.
pub(crate) const COMMIT_HOLD: Duration = Duration::from_millis(2);

/// What became of one of openraft's requests, in the order they came.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Sent {
    /// Sent to the follower at this time; its answer will come.
    Remote(Instant),
    /// Not sent: a later request carried its commit. Holds the request's
    /// `prev_log_id`, which the follower had already matched.
    Superseded(Option<LogId>),
}

/// The requests to send, from openraft's stream of them.
pub(crate) struct Outgoing<S> {
    input: S,
    held: Option<(AppendEntriesRequest<TypeConfig>, Instant)>,
    /// Where the last request sent ended (its last entry, else its
    /// `prev_log_id`); `None` before the first.
    last_end: Option<Option<LogId>>,
    sent: UnboundedSender<Sent>,
}

impl<S> Outgoing<S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    /// `sent` hears of every request taken from `input`, in order.
    pub(crate) fn new(input: S, sent: UnboundedSender<Sent>) -> Self {
        Self {
            input,
            held: None,
            last_end: None,
            sent,
        }
    }

    /// The next request to send; `None` once openraft's stream has ended
    /// and nothing is held.
    pub(crate) async fn next(&mut self) -> Option<AppendEntriesRequest<TypeConfig>> {
        loop {
            let next = match self.held.as_ref().map(|(_, until)| *until) {
                None => self.input.next().await,
                Some(until) => tokio::select! {
                    biased;
                    r = self.input.next() => r,
                    () = tokio::time::sleep_until(until) => {
                        return self.held.take().map(|(req, _)| self.send(req));
                    }
                },
            };
            let Some(req) = next else {
                return self.held.take().map(|(req, _)| self.send(req));
            };
            if let Some((held, _)) = self.held.take() {
                let _ = self.sent.send(Sent::Superseded(held.prev_log_id));
            }
            if req.entries.is_empty() && self.last_end.as_ref() == Some(&req.prev_log_id) {
                self.held = Some((req, Instant::now() + COMMIT_HOLD));
                continue;
            }
            return Some(self.send(req));
        }
    }

    fn send(&mut self, req: AppendEntriesRequest<TypeConfig>) -> AppendEntriesRequest<TypeConfig> {
        let end = req.entries.last().map(|e| e.log_id).or(req.prev_log_id);
        self.last_end = Some(end);
        let _ = self.sent.send(Sent::Remote(Instant::now()));
        req
    }
}

/// Takes from `queue` what the follower's next answer settles: the requests
/// superseded before the next one sent (their `prev_log_id`s, returned in
/// order) and that one. `None` when no request sent is waiting.
pub(crate) fn settle(queue: &mut VecDeque<Sent>) -> Option<Vec<Option<LogId>>> {
    let remote = queue.iter().position(|s| matches!(s, Sent::Remote(_)))?;
    Some(
        queue
            .drain(..=remote)
            .filter_map(|s| match s {
                Sent::Superseded(id) => Some(id),
                Sent::Remote(_) => None,
            })
            .collect(),
    )
}

/// When the oldest request sent and not yet answered was sent.
pub(crate) fn oldest_sent(queue: &VecDeque<Sent>) -> Option<Instant> {
    queue.iter().find_map(|s| match s {
        Sent::Remote(t) => Some(*t),
        Sent::Superseded(_) => None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use gantry_store::{Entry, Vote};
    use openraft::entry::RaftEntry;
    use openraft::vote::leader_id_adv::CommittedLeaderId;
    use tokio::sync::mpsc;

    use super::*;

    fn id(index: u64) -> LogId {
        LogId::new(
            CommittedLeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        )
    }

    /// Entries `from..=to` after `prev`, with the leader's commit at `commit`.
    fn append(prev: u64, to: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: Some(id(prev)),
            leader_commit: Some(id(commit)),
            entries: (prev + 1..=to).map(|i| Entry::new_blank(id(i))).collect(),
        }
    }

    fn shape(r: &AppendEntriesRequest<TypeConfig>) -> (u64, usize, u64) {
        (
            r.prev_log_id.unwrap().index,
            r.entries.len(),
            r.leader_commit.unwrap().index,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn t10_a_commit_only_append_is_carried_by_the_next_entries() {
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let (sent_tx, mut sent_rx) = mpsc::unbounded_channel();
        let mut out = Outgoing::new(
            tokio_stream::wrappers::UnboundedReceiverStream::new(input_rx),
            sent_tx,
        );
        // Entries 1-2, then their commit alone, then entry 3 within the hold.
        input_tx.send(append(0, 2, 0)).unwrap();
        input_tx.send(append(2, 2, 2)).unwrap();
        assert_eq!(shape(&out.next().await.unwrap()), (0, 2, 0));
        let t = tokio::spawn(async move {
            tokio::time::sleep(COMMIT_HOLD / 2).await;
            input_tx.send(append(2, 3, 2)).unwrap();
            input_tx
        });
        assert_eq!(
            shape(&out.next().await.unwrap()),
            (2, 1, 2),
            "the commit went with entry 3, not alone"
        );
        let mut sent = Vec::new();
        while let Ok(s) = sent_rx.try_recv() {
            sent.push(s);
        }
        assert!(matches!(sent[0], Sent::Remote(_)), "{sent:?}");
        assert_eq!(sent[1], Sent::Superseded(Some(id(2))));
        assert!(matches!(sent[2], Sent::Remote(_)), "{sent:?}");
        assert_eq!(sent.len(), 3);

        // A commit with nothing after it goes out alone when the hold ends.
        let input_tx = t.await.unwrap();
        input_tx.send(append(3, 3, 3)).unwrap();
        let start = Instant::now();
        assert_eq!(shape(&out.next().await.unwrap()), (3, 0, 3));
        assert_eq!(start.elapsed(), COMMIT_HOLD);

        // A held commit is sent when openraft's stream ends.
        input_tx.send(append(3, 3, 3)).unwrap();
        drop(input_tx);
        assert_eq!(shape(&out.next().await.unwrap()), (3, 0, 3));
        assert!(out.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn t11_an_empty_append_that_does_not_continue_the_last_is_sent_at_once() {
        let (sent_tx, _sent_rx) = mpsc::unbounded_channel();
        // The first request of a stream (a probe, or a heartbeat's only
        // one), and one whose prev_log_id is not where the last ended.
        let mut out = Outgoing::new(
            futures::stream::iter(vec![append(5, 5, 5), append(4, 4, 5)]),
            sent_tx,
        );
        let start = Instant::now();
        assert_eq!(shape(&out.next().await.unwrap()), (5, 0, 5));
        assert_eq!(shape(&out.next().await.unwrap()), (4, 0, 5));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(out.next().await.is_none());
    }

    #[test]
    fn t12_an_answer_settles_the_superseded_requests_before_it_and_its_own() {
        let now = Instant::now();
        let mut q: VecDeque<Sent> = VecDeque::from(vec![
            Sent::Remote(now),
            Sent::Superseded(Some(id(2))),
            Sent::Superseded(Some(id(2))),
            Sent::Remote(now + Duration::from_millis(1)),
            Sent::Superseded(Some(id(3))),
        ]);
        assert_eq!(oldest_sent(&q), Some(now));
        assert_eq!(settle(&mut q), Some(vec![]));
        assert_eq!(oldest_sent(&q), Some(now + Duration::from_millis(1)));
        assert_eq!(settle(&mut q), Some(vec![Some(id(2)), Some(id(2))]));
        // The last is settled only by an answer to a request still to be sent.
        assert_eq!(settle(&mut q), None);
        assert_eq!(q, VecDeque::from(vec![Sent::Superseded(Some(id(3)))]));
        assert_eq!(oldest_sent(&q), None);
    }
}
