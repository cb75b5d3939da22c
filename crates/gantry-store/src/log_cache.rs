//! The newest entries of the Raft log, kept decoded in memory.
//!
//! Every entry is read back soon after it is appended: by the replication
//! task of each follower (on the leader) and by the state machine when it
//! is committed (on every replica). Read from sled, each of those reads
//! copied the entry out of sled's pages and decoded its JSON again (three
//! decodes per entry on a leader of three replicas, one on a follower).
//! Entries here share their payload ([`crate::Payload`]), so a read is a
//! reference count per entry.
//!
//! The cache holds a contiguous run of entries that ends where the log
//! ends, or nothing: appends extend it, and truncations and purges cut it
//! as they cut the log. A read it cannot answer whole (older entries, or a
//! range past its end) goes to sled, so the cache only ever changes how
//! fast a read is, never what it returns.

use std::collections::VecDeque;

use crate::Entry;

/// At most this many entries are kept...
pub(crate) const MAX_ENTRIES: usize = 4_096;
/// ...and at most this many bytes of their encoding (the newest entry is
/// kept whatever its size). Followers fetch entries within milliseconds of
/// their append; only a replica catching up after a restart reads older
/// ones, from sled.
pub(crate) const MAX_BYTES: usize = 8 << 20;

#[derive(Debug, Default)]
pub(crate) struct LogCache {
    /// Entries in index order, each with the size of its encoding.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl LogCache {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    /// The index after the last entry held.
    fn next(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }

    /// Adds `entry`, just appended to the log, where `is_last` says
    /// whether nothing follows it in the log. An entry that does not
    /// continue the run empties the cache (the run must end where the log
    /// does), and one the log holds more after is not kept.
    pub(crate) fn push(&mut self, entry: &Entry, size: usize, is_last: impl FnOnce() -> bool) {
        match self.next() {
            Some(next) if next == entry.log_id.index => {}
            Some(_) => {
                self.clear();
                return;
            }
            None if !is_last() => return,
            None => {}
        }
        self.bytes += size;
        self.entries.push_back((entry.clone(), size));
        while self.entries.len() > MAX_ENTRIES || (self.bytes > MAX_BYTES && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    /// Forgets every entry from index `from` on (the log was truncated).
    pub(crate) fn truncate_from(&mut self, from: u64) {
        while self.next().is_some_and(|n| n > from) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets every entry up to and including index `upto` (the log was purged).
    pub(crate) fn purge_upto(&mut self, upto: u64) {
        while self.first().is_some_and(|f| f <= upto) {
            self.pop_front();
        }
    }

    /// The entries in `start..end` (`end` exclusive, `None` for the end of
    /// the log) if the cache holds all of them; `None` sends the read to sled.
    pub(crate) fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.first()?;
        let next = self.next()?;
        let end = end.unwrap_or(next);
        if start < first || end > next {
            return None;
        }
        if start >= end {
            return Some(Vec::new());
        }
        let from = usize::try_from(start - first).ok()?;
        let n = usize::try_from(end - start).ok()?;
        Some(
            self.entries
                .range(from..from + n)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::vote::leader_id_adv::CommittedLeaderId;

    use super::*;
    use crate::LogId;

    fn entry(index: u64) -> Entry {
        let id = LogId::new(
            CommittedLeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        );
        Entry::new_normal(
            id,
            gantry_core::Command::SubmitJobs {
                now_ms: index,
                jobs: Vec::new(),
            }
            .into(),
        )
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    fn filled(range: std::ops::RangeInclusive<u64>) -> LogCache {
        let mut c = LogCache::default();
        for i in range {
            c.push(&entry(i), 10, || true);
        }
        c
    }

    #[test]
    fn t10_reads_inside_the_run_are_answered_and_others_go_to_the_log() {
        let c = filled(5..=9);
        assert_eq!(indexes(&c.get(5, Some(10)).unwrap()), vec![5, 6, 7, 8, 9]);
        assert_eq!(indexes(&c.get(6, Some(8)).unwrap()), vec![6, 7]);
        assert_eq!(indexes(&c.get(7, None).unwrap()), vec![7, 8, 9]);
        assert_eq!(c.get(8, Some(8)).unwrap(), Vec::new());
        // The run ends where the log does: nothing lies past it.
        assert_eq!(c.get(10, None).unwrap(), Vec::new());
        // Older entries, and a range past the end, are sled's to answer.
        assert!(c.get(4, Some(7)).is_none());
        assert!(c.get(8, Some(11)).is_none());
        assert!(LogCache::default().get(1, None).is_none());
    }

    #[test]
    fn t10_truncation_and_purge_cut_the_run_as_they_cut_the_log() {
        let mut c = filled(1..=10);
        c.truncate_from(8);
        assert_eq!(
            indexes(&c.get(1, None).unwrap()),
            (1..=7).collect::<Vec<_>>()
        );
        c.purge_upto(3);
        assert_eq!(indexes(&c.get(4, None).unwrap()), vec![4, 5, 6, 7]);
        assert!(c.get(3, None).is_none());
        c.push(&entry(8), 10, || true);
        assert_eq!(indexes(&c.get(4, None).unwrap()), vec![4, 5, 6, 7, 8]);
        // A purge past the end (a snapshot installed beyond the log) empties it.
        c.purge_upto(20);
        assert!(c.get(21, None).is_none());
        assert_eq!(c.bytes, 0);
    }

    #[test]
    fn t10_an_entry_that_does_not_continue_the_run_empties_it() {
        let mut c = filled(1..=5);
        c.push(&entry(3), 10, || true);
        assert!(c.get(1, None).is_none());
        // On an empty cache, an entry the log holds more after is not kept.
        c.push(&entry(3), 10, || false);
        assert!(c.get(3, None).is_none());
        c.push(&entry(3), 10, || true);
        assert_eq!(indexes(&c.get(3, None).unwrap()), vec![3]);
    }

    #[test]
    fn t10_the_oldest_entries_go_first_past_either_bound() {
        let n = MAX_ENTRIES as u64 + 10;
        let c = filled(1..=n);
        assert_eq!(c.entries.len(), MAX_ENTRIES);
        assert!(c.get(10, None).is_none());
        assert_eq!(c.get(11, None).unwrap().len(), MAX_ENTRIES);

        let mut c = LogCache::default();
        let big = MAX_BYTES / 3;
        for i in 1..=5 {
            c.push(&entry(i), big, || true);
        }
        assert_eq!(indexes(&c.get(3, None).unwrap()), vec![3, 4, 5]);
        assert!(c.bytes <= MAX_BYTES);
        // One entry over the bound is still kept: the newest is always there.
        c.push(&entry(6), MAX_BYTES * 2, || true);
        assert_eq!(indexes(&c.get(6, None).unwrap()), vec![6]);
        assert_eq!(c.bytes, MAX_BYTES * 2);
    }

    #[test]
    fn t10_payloads_are_shared_not_copied() {
        let c = filled(1..=3);
        let a = c.get(2, Some(3)).unwrap();
        let b = c.get(2, Some(3)).unwrap();
        let payload = |e: &Entry| match &e.payload {
            openraft::EntryPayload::Normal(p) => p.clone(),
            _ => panic!("not a normal entry"),
        };
        assert!(std::sync::Arc::ptr_eq(&payload(&a[0]), &payload(&b[0])));
    }
}
