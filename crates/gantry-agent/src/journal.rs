//! The agent's record of the attempts it runs and their supervisors' process
//! groups, so that an agent restarted after a crash finds what its previous
//! life left: it re-attaches to supervisors still running, and reports the
//! rest.
//!
//! One append-only file per agent, `DATA_DIR/attempts.journal`: a line when
//! an attempt's process group starts (`start JOB TASK ATTEMPT PGID`), a line
//! when the cluster has acknowledged its result (`end JOB TASK ATTEMPT`).
//! What has a start and no end was running, or unacknowledged, when the
//! agent stopped. A writer thread appends the lines queued since its last
//! write in one `write` call, and rewrites the file with only the open
//! attempts once ended ones dominate it.
//!
//! This replaced one record file per attempt (`DATA_DIR/attempts/`, made
//! when the task started and removed when its result was acknowledged):
//! creating and deleting an inode per task was the largest cost of a
//! short task on ext4. Records an older agent left there are still read.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use gantry_proto::v1::AttemptToken;

use crate::Key;

/// The journal's file name inside the data directory.
pub const FILE: &str = "attempts.journal";
/// The per-attempt records of agents before the journal.
pub const LEGACY_DIR: &str = "attempts";
/// The file is rewritten once it holds this many lines and at least four
/// times as many as there are open attempts.
const COMPACT_LINES: usize = 4096;

enum Entry {
    Start(Key, Record),
    End(Key),
}

/// What the journal keeps of a running attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The process group to kill if nothing else is left of it (the
    /// supervisor's; an agent from before supervisors wrote the task's).
    pub pgid: i32,
    /// The cgroup slot the task runs in (`slot-N`), if any.
    pub slot: Option<u32>,
}

/// Appends to the journal; cheap to clone, never blocks the caller.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Entry>,
}

impl Journal {
    /// Opens the journal in `data_dir` and returns the attempts a previous
    /// run left open, with the process group recorded for each (the
    /// supervisor's; an agent from before supervisors recorded the task's).
    /// They stay open until their reports are acknowledged, so a second
    /// crash finds them again.
    pub fn open(data_dir: &Path) -> std::io::Result<(Journal, BTreeMap<Key, Record>)> {
        let path = data_dir.join(FILE);
        let mut open = read(&path);
        for (key, pgid) in read_legacy(&data_dir.join(LEGACY_DIR)) {
            open.entry(key).or_insert(Record { pgid, slot: None });
        }
        let writer = Writer::create(path, open.clone())?;
        remove_legacy(&data_dir.join(LEGACY_DIR));
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("attempt-journal".into())
            .spawn(move || writer.run(rx))?;
        Ok((Journal { tx }, open))
    }

    /// The attempts a journal in `data_dir` leaves open, without opening it
    /// for writing (for tools that clean up after an agent).
    pub fn read_open(data_dir: &Path) -> BTreeMap<Key, Record> {
        read(&data_dir.join(FILE))
    }

    /// The attempt's supervisor (process group `pgid`) runs, its task in
    /// cgroup slot `slot`.
    pub fn started(&self, token: &AttemptToken, pgid: i32, slot: Option<u32>) {
        let _ = self
            .tx
            .send(Entry::Start(crate::key(token), Record { pgid, slot }));
    }

    /// The cluster acknowledged the attempt's result: nothing to recover.
    pub fn ended(&self, key: Key) {
        let _ = self.tx.send(Entry::End(key));
    }
}

/// Job ids come from the cluster (UUIDs); one with whitespace could not be
/// read back, so it is not journaled (the attempt still runs).
fn journaled(job_id: &str) -> bool {
    !job_id.is_empty() && !job_id.contains(char::is_whitespace)
}

fn start_line(out: &mut String, (job, task, attempt): &Key, r: Record) {
    use std::fmt::Write as _;
    let _ = match r.slot {
        Some(slot) => writeln!(out, "start {job} {task} {attempt} {} {slot}", r.pgid),
        None => writeln!(out, "start {job} {task} {attempt} {}", r.pgid),
    };
}

fn end_line(out: &mut String, (job, task, attempt): &Key) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "end {job} {task} {attempt}");
}

/// The attempts a journal leaves open, with their process groups. Lines
/// that do not parse (a torn last write) are skipped.
fn read(path: &Path) -> BTreeMap<Key, Record> {
    let mut open = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return open;
    };
    for line in text.lines() {
        let mut f = line.split(' ');
        let parsed = (|| {
            let kind = f.next()?;
            let key: Key = (
                f.next()?.to_owned(),
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
            );
            match kind {
                "start" => {
                    let pgid = f.next()?.parse::<i32>().ok()?;
                    // Agents before cgroup slots wrote no slot.
                    let slot = match f.next() {
                        None => None,
                        Some(n) => Some(n.parse::<u32>().ok()?),
                    };
                    Some((key, Some(Record { pgid, slot })))
                }
                "end" => Some((key, None)),
                _ => None,
            }
        })();
        match parsed {
            Some((key, Some(record))) => {
                open.insert(key, record);
            }
            Some((key, None)) => {
                open.remove(&key);
            }
            None => {
                tracing::warn!(path = %path.display(), %line, "unreadable journal line; skipped")
            }
        }
    }
    open
}

/// Records of an agent from before the journal: one file per attempt with
/// its job id, task, attempt and process group on four lines.
fn read_legacy(dir: &Path) -> Vec<(Key, i32)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = text.lines();
        let parsed = (|| {
            let job_id = lines.next()?.to_owned();
            let task = lines.next()?.parse().ok()?;
            let attempt = lines.next()?.parse().ok()?;
            let pgid: i32 = lines.next()?.parse().ok()?;
            Some(((job_id, task, attempt), pgid))
        })();
        match parsed {
            Some(record) => found.push(record),
            None => {
                tracing::warn!(path = %path.display(), "unreadable attempt record; removing it")
            }
        }
    }
    found
}

/// Once their attempts are in the journal, the legacy records go.
fn remove_legacy(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

// === impl Writer ===

struct Writer {
    path: PathBuf,
    file: std::fs::File,
    /// Open attempts and their process groups (0: none left).
    live: BTreeMap<Key, Record>,
    lines: usize,
}

impl Writer {
    /// A fresh journal holding `live`.
    fn create(path: PathBuf, live: BTreeMap<Key, Record>) -> std::io::Result<Writer> {
        let file = rewrite(&path, &live)?;
        Ok(Writer {
            path,
            file,
            lines: live.len(),
            live,
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Entry>) {
        let mut out = String::new();
        // Blocks for the first entry, then takes whatever else is queued:
        // one write for everything that arrived meanwhile.
        while let Ok(first) = rx.recv() {
            out.clear();
            for entry in std::iter::once(first).chain(rx.try_iter()) {
                self.add(&mut out, entry);
            }
            if !out.is_empty()
                && let Err(e) = self.file.write_all(out.as_bytes())
            {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the attempt journal");
            }
            if self.lines >= COMPACT_LINES && self.lines >= 4 * self.live.len() {
                match rewrite(&self.path, &self.live) {
                    Ok(file) => {
                        self.file = file;
                        self.lines = self.live.len();
                    }
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e, "cannot compact the attempt journal")
                    }
                }
            }
        }
    }

    fn add(&mut self, out: &mut String, entry: Entry) {
        match entry {
            Entry::Start(key, record) => {
                if !journaled(&key.0) {
                    tracing::warn!(job_id = %key.0, "job id cannot be journaled; a crash would leave this attempt's processes running");
                    return;
                }
                start_line(out, &key, record);
                self.live.insert(key, record);
            }
            Entry::End(key) => {
                if self.live.remove(&key).is_none() {
                    return;
                }
                end_line(out, &key);
            }
        }
        self.lines += 1;
    }
}

/// Writes the journal anew with just `live` (beside it, then renamed over
/// it, so a crash leaves the old or the new one whole) and opens it for
/// appending.
fn rewrite(path: &Path, live: &BTreeMap<Key, Record>) -> std::io::Result<std::fs::File> {
    let mut text = String::new();
    for (key, record) in live {
        start_line(&mut text, key, *record);
    }
    let tmp = path.with_extension("journal.new");
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Readable by the agent's user only: it names what runs here.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(job: &str, attempt: u32) -> AttemptToken {
        AttemptToken {
            job_id: job.into(),
            task: 0,
            attempt,
        }
    }

    /// Waits until the writer thread has written what was queued: the file
    /// says so, or the test fails at the deadline.
    fn wait_for_file(path: &Path, want: impl Fn(&str) -> bool) {
        let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if want(&text) {
                return;
            }
            assert!(
                std::time::SystemTime::now() < deadline,
                "journal never became as expected: {text:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn t10_open_attempts_are_recovered_and_ended_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, reports) = Journal::open(dir.path()).unwrap();
        assert!(reports.is_empty());
        // Process groups that do not exist: killpg fails quietly.
        journal.started(&token("a", 1), i32::MAX - 1, None);
        journal.started(&token("b", 1), i32::MAX - 2, Some(7));
        journal.ended(crate::key(&token("a", 1)));
        let path = dir.path().join(FILE);
        wait_for_file(&path, |t| t.contains("end a 0 1"));
        drop(journal);

        let (journal, reports) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            reports.keys().cloned().collect::<Vec<_>>(),
            vec![("b".to_owned(), 0, 1)]
        );
        assert_eq!(
            reports[&("b".to_owned(), 0, 1)],
            Record {
                pgid: i32::MAX - 2,
                slot: Some(7)
            },
            "its process group and slot are kept"
        );
        // Until acknowledged, a second crash finds it again.
        drop(journal);
        let (journal, reports) = Journal::open(dir.path()).unwrap();
        assert_eq!(reports.len(), 1);
        journal.ended(("b".to_owned(), 0, 1));
        wait_for_file(&path, |t| t.contains("end b 0 1"));
        drop(journal);
        let (_, reports) = Journal::open(dir.path()).unwrap();
        assert!(reports.is_empty(), "{reports:?}");
    }

    #[test]
    fn t10_the_journal_is_compacted_and_keeps_what_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let (journal, _) = Journal::open(dir.path()).unwrap();
        journal.started(&token("kept", 1), i32::MAX - 3, None);
        for i in 0..COMPACT_LINES as u32 {
            journal.started(&token("gone", i), i32::MAX - 4, None);
            journal.ended(("gone".to_owned(), 0, i));
        }
        journal.started(&token("last", 1), i32::MAX - 5, None);
        // After compaction the file holds the open attempts, not thousands of lines.
        wait_for_file(&path, |t| {
            t.contains("start last 0 1") && t.lines().count() < COMPACT_LINES
        });
        drop(journal);
        let (_, reports) = Journal::open(dir.path()).unwrap();
        let mut jobs: Vec<_> = reports.keys().map(|k| k.0.clone()).collect();
        jobs.sort();
        assert_eq!(jobs, vec!["kept", "last"]);
    }

    #[test]
    fn t10_legacy_records_and_torn_lines_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join(LEGACY_DIR);
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(legacy.join("old-0-1"), "old\n0\n1\n0\n").unwrap();
        std::fs::write(legacy.join("junk"), "not a record").unwrap();
        // A crash in the middle of a write leaves a partial last line.
        std::fs::write(
            dir.path().join(FILE),
            "start j 0 2 0\nstart k 0 1 0 3\nstart half 0",
        )
        .unwrap();
        let (_, reports) = Journal::open(dir.path()).unwrap();
        let mut jobs: Vec<_> = reports.keys().map(|k| k.0.clone()).collect();
        jobs.sort();
        assert_eq!(jobs, vec!["j", "k", "old"]);
        assert_eq!(reports[&("k".to_owned(), 0, 1)].slot, Some(3));
        assert!(
            !legacy.exists(),
            "legacy records are folded into the journal"
        );
    }

    #[test]
    fn t10_job_ids_that_cannot_be_read_back_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        journal.started(&token("two words", 1), i32::MAX - 6, None);
        journal.started(&token("fine", 1), i32::MAX - 7, None);
        wait_for_file(&dir.path().join(FILE), |t| t.contains("fine"));
        drop(journal);
        let (_, reports) = Journal::open(dir.path()).unwrap();
        assert_eq!(reports.len(), 1);
    }
}
