//! The state machine: [`gantry_core::State`] in memory, snapshots in sled.

use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use gantry_core::{Outcome, State};
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use std::marker::PhantomData;

use crate::{
    Durability, LogId, Snapshot, SnapshotMeta, StoreConfig, StoredMembership, TypeConfig, to_io,
};

const SNAPSHOT_META: &[u8] = b"meta";
const SNAPSHOT_DATA: &[u8] = b"data";

/// What the state machine holds besides the domain state.
#[derive(Debug, Default)]
struct Applied {
    state: State,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

/// The snapshot payload: the domain state plus the Raft bookkeeping that
/// must come back with it. Written as one JSON object whose `state` member
/// is the state's own JSON, spliced in as it is (see [`encode_snapshot`]).
#[derive(Deserialize)]
struct SnapshotFile<'a> {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    /// The encoded core::State. Snapshots written before 2026-11-29 hold
    /// it as an array of byte values, which is still read.
    #[serde(borrow)]
    state: &'a serde_json::value::RawValue,
}

#[derive(Serialize)]
struct SnapshotHeader<'a> {
    last_applied: Option<LogId>,
    last_membership: &'a StoredMembership,
}

/// `{"last_applied":…,"last_membership":…,"state":<state JSON>}`. The state
/// used to be a byte array inside the JSON, which wrote every byte as a
/// decimal number: about 3.5 times the size, and most of the time spent
/// writing snapshots.
#[cfg(test)]
fn encode_snapshot(applied: &Applied) -> io::Result<Vec<u8>> {
    let state = applied.state.to_snapshot().map_err(to_io)?;
    splice_snapshot(applied.last_applied, &applied.last_membership, &state)
}

fn splice_snapshot(
    last_applied: Option<LogId>,
    last_membership: &StoredMembership,
    state: &[u8],
) -> io::Result<Vec<u8>> {
    let header = serde_json::to_vec(&SnapshotHeader {
        last_applied,
        last_membership,
    })
    .map_err(to_io)?;
    // The header is a JSON object: drop its closing brace and add the state.
    let mut out = Vec::with_capacity(header.len() + state.len() + 10);
    out.extend_from_slice(&header[..header.len() - 1]);
    out.extend_from_slice(b",\"state\":");
    out.extend_from_slice(state);
    out.push(b'}');
    Ok(out)
}

/// The state machine store. Clones share state; the snapshot builder is a clone.
pub struct StateMachineStore<C = TypeConfig> {
    applied: Arc<RwLock<Applied>>,
    snapshots: sled::Tree,
    db: sled::Db,
    durability: Durability,
    config: PhantomData<fn() -> C>,
}

impl<C> Clone for StateMachineStore<C> {
    fn clone(&self) -> Self {
        Self {
            applied: self.applied.clone(),
            snapshots: self.snapshots.clone(),
            db: self.db.clone(),
            durability: self.durability,
            config: PhantomData,
        }
    }
}

/// Read access to the applied state, for serving reads.
#[derive(Clone)]
pub struct StateReader {
    applied: Arc<RwLock<Applied>>,
}

// === impl StateReader ===

impl StateReader {
    /// Runs `f` over the current state and the index of the last applied entry.
    pub async fn read<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T {
        let applied = self.applied.read().await;
        f(&applied.state, applied.last_applied.map_or(0, |l| l.index))
    }
}

// === impl StateMachineStore ===

impl<C> StateMachineStore<C> {
    /// Snapshots in `db`; one found only in `legacy` (where replicas kept
    /// it before snapshots had a database of their own) is moved over.
    pub(crate) fn new(
        db: &sled::Db,
        legacy: Option<&sled::Db>,
        durability: Durability,
    ) -> io::Result<Self> {
        let snapshots = db.open_tree("snapshot").map_err(to_io)?;
        if let Some(legacy) = legacy {
            move_legacy_snapshot(&snapshots, db, legacy)?;
        }
        let store = Self {
            applied: Arc::default(),
            snapshots,
            db: db.clone(),
            durability,
            config: PhantomData,
        };
        // Start from the last snapshot; openraft re-applies the log after it.
        if let Some(data) = store.snapshots.get(SNAPSHOT_DATA).map_err(to_io)? {
            let applied = decode_snapshot(&data)?;
            *store.applied.try_write().map_err(to_io)? = applied;
        }
        Ok(store)
    }

    pub fn reader(&self) -> StateReader {
        StateReader {
            applied: self.applied.clone(),
        }
    }
}

fn move_legacy_snapshot(to: &sled::Tree, db: &sled::Db, legacy: &sled::Db) -> io::Result<()> {
    let old = legacy.open_tree("snapshot").map_err(to_io)?;
    if old.is_empty() {
        return Ok(());
    }
    if to.get(SNAPSHOT_DATA).map_err(to_io)?.is_none() {
        let mut batch = sled::Batch::default();
        for key in [SNAPSHOT_META, SNAPSHOT_DATA] {
            if let Some(v) = old.get(key).map_err(to_io)? {
                batch.insert(key, v);
            }
        }
        to.apply_batch(batch).map_err(to_io)?;
        db.flush().map_err(to_io)?;
    }
    // Only once the copy is durable: a crash before this leaves both.
    old.clear().map_err(to_io)?;
    legacy.flush().map_err(to_io)?;
    Ok(())
}

fn decode_snapshot(data: &[u8]) -> io::Result<Applied> {
    let file: SnapshotFile = serde_json::from_slice(data).map_err(to_io)?;
    let raw = file.state.get();
    let state = if raw.starts_with('[') {
        let bytes: Vec<u8> = serde_json::from_str(raw).map_err(to_io)?;
        State::from_snapshot(&bytes)
    } else {
        State::from_snapshot(raw.as_bytes())
    };
    Ok(Applied {
        state: state.map_err(to_io)?,
        last_applied: file.last_applied,
        last_membership: file.last_membership,
    })
}

impl<C: StoreConfig> RaftSnapshotBuilder<C> for StateMachineStore<C> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // Only the copy holds the state still: encoding a large state took
        // seconds, and every write waited for it behind the lock.
        let (copy, meta) = {
            let applied = self.applied.read().await;
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
            };
            (applied.state.snapshot_copy(), meta)
        };
        let encode = {
            let meta = meta.clone();
            move || {
                let state = copy.encode().map_err(to_io)?;
                drop(copy);
                splice_snapshot(meta.last_log_id, &meta.last_membership, &state)
            }
        };
        let data = off_runtime(self.durability, encode).await?;
        self.save(&meta, &data).await?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl<C> StateMachineStore<C> {
    async fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, serde_json::to_vec(meta).map_err(to_io)?);
        batch.insert(SNAPSHOT_DATA, data);
        let (tree, db, durability) = (self.snapshots.clone(), self.db.clone(), self.durability);
        off_runtime(durability, move || {
            tree.apply_batch(batch).map_err(to_io)?;
            if durability == Durability::Fsync {
                db.flush().map_err(to_io)?;
            }
            Ok(())
        })
        .await
    }
}

/// Runs a snapshot's heavy synchronous work (encoding, writing and syncing
/// hundreds of MiB) off the runtime's workers, which go on serving and
/// applying; in the simulation ([`Durability::Process`]) inline, so that no
/// other thread makes its time depend on the machine.
async fn off_runtime<T: Send + 'static>(
    durability: Durability,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    match durability {
        Durability::Fsync => tokio::task::spawn_blocking(work).await.map_err(to_io)?,
        Durability::Process => work(),
    }
}

impl<C: StoreConfig> RaftStateMachine<C> for StateMachineStore<C> {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.applied.read().await;
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let outcome = {
                let mut applied = self.applied.write().await;
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Outcome::None,
                    EntryPayload::Normal(cmd) => applied.state.apply(entry.log_id.index, &cmd),
                    EntryPayload::Membership(m) => {
                        applied.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        Outcome::None
                    }
                }
            };
            if let Some(r) = responder {
                r.send(outcome);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let mut restored = decode_snapshot(&snapshot)?;
        // The meta is authoritative for what the snapshot covers.
        restored.last_applied = meta.last_log_id;
        restored.last_membership = meta.last_membership.clone();
        // Dispatchers cannot tell which nodes the snapshot changed: all may have.
        restored
            .state
            .touch_all(meta.last_log_id.map_or(0, |l| l.index));
        self.save(meta, &snapshot).await?;
        *self.applied.write().await = restored;
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let meta = self.snapshots.get(SNAPSHOT_META).map_err(to_io)?;
        let data = self.snapshots.get(SNAPSHOT_DATA).map_err(to_io)?;
        match (meta, data) {
            (Some(meta), Some(data)) => Ok(Some(Snapshot {
                meta: serde_json::from_slice(&meta).map_err(to_io)?,
                snapshot: data.to_vec(),
            })),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_core::{Command, JobSpec, NewJob};

    fn applied_with_a_job() -> Applied {
        let mut state = State::default();
        state.apply(
            1,
            &Command::SubmitJobs {
                now_ms: 1,
                jobs: vec![NewJob {
                    id: "job-1".into(),
                    spec: JobSpec {
                        argv: vec!["/bin/echo".into(), "quote \" and \\ backslash".into()],
                        ..JobSpec::default()
                    },
                    trace_parent: String::new(),
                }],
            },
        );
        Applied {
            state,
            last_applied: None,
            last_membership: StoredMembership::default(),
        }
    }

    #[test]
    fn t20_snapshots_round_trip_with_the_state_spliced_in() {
        let a = applied_with_a_job();
        let bytes = encode_snapshot(&a).unwrap();
        // The state is JSON inside JSON, not an array of byte values.
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""state":{"#), "{text}");
        let back = decode_snapshot(&bytes).unwrap();
        assert_eq!(back.state, a.state);
    }

    // Snapshots written before the splice held the state as a byte array.
    #[test]
    fn t20_snapshots_in_the_old_byte_array_form_still_load() {
        let a = applied_with_a_job();
        let old = serde_json::json!({
            "last_applied": null,
            "last_membership": StoredMembership::default(),
            "state": a.state.to_snapshot().unwrap(),
        });
        let back = decode_snapshot(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(back.state, a.state);
    }
}
