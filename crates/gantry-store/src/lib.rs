//! Gantry's openraft storage on sled: the Raft log, the vote, the committed
//! index and snapshots are kept in one sled database under the replica's
//! data directory; the state machine ([`gantry_core::State`]) lives in
//! memory and is rebuilt on start from the last snapshot plus the log.

mod log_store;
mod state_machine;

use std::io;
use std::path::Path;

pub use log_store::LogStore;
pub use state_machine::{StateMachineStore, StateReader};

openraft::declare_raft_types!(
    /// Gantry's Raft type configuration: node ids are `u64` replica ids,
    /// nodes carry the replica's address, the payload is a core `Command`.
    pub TypeConfig:
        D = gantry_core::Command,
        R = gantry_core::Outcome,
);

pub type ReplicaId = u64;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

/// Opens (or creates) the replica's storage in `dir`.
pub fn open(dir: &Path) -> io::Result<(LogStore, StateMachineStore)> {
    std::fs::create_dir_all(dir)?;
    let db = sled::Config::new()
        .path(dir.join("raft.sled"))
        // Durability comes from explicit flushes where Raft needs them
        // (append, vote), never from a timer.
        .flush_every_ms(None)
        .open()
        .map_err(to_io)?;
    let log = LogStore::new(&db)?;
    let sm = StateMachineStore::new(&db)?;
    Ok((log, sm))
}

pub(crate) fn to_io(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::other(e)
}
