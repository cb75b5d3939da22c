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
/// must come back with it.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    // The encoded core::State, kept as a string-free byte blob.
    state: Vec<u8>,
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
    pub(crate) fn new(db: &sled::Db, durability: Durability) -> io::Result<Self> {
        let snapshots = db.open_tree("snapshot").map_err(to_io)?;
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

fn decode_snapshot(data: &[u8]) -> io::Result<Applied> {
    let file: SnapshotFile = serde_json::from_slice(data).map_err(to_io)?;
    Ok(Applied {
        state: State::from_snapshot(&file.state).map_err(to_io)?,
        last_applied: file.last_applied,
        last_membership: file.last_membership,
    })
}

impl<C: StoreConfig> RaftSnapshotBuilder<C> for StateMachineStore<C> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (data, meta) = {
            let applied = self.applied.read().await;
            let file = SnapshotFile {
                last_applied: applied.last_applied,
                last_membership: applied.last_membership.clone(),
                state: applied.state.to_snapshot().map_err(to_io)?,
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
            };
            (serde_json::to_vec(&file).map_err(to_io)?, meta)
        };
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
        self.snapshots.apply_batch(batch).map_err(to_io)?;
        if self.durability == Durability::Fsync {
            self.db.flush_async().await.map_err(to_io)?;
        }
        Ok(())
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
