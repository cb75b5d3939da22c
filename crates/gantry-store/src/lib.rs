//! Gantry's openraft storage on sled: the Raft log, the vote, the committed
//! index and snapshots are kept in one sled database under the replica's
//! data directory; the state machine ([`gantry_core::State`]) lives in
//! memory and is rebuilt on start from the last snapshot plus the log.

mod flusher;
mod log_cache;
mod log_store;
pub mod runtime;
mod state_machine;

use std::io;
use std::path::Path;

pub use log_store::LogStore;
pub use state_machine::{StateMachineStore, StateReader};

use openraft::impls::leader_id_adv::LeaderId;
use openraft::vote::RaftLeaderId;

/// An entry's payload: a core `Command`, shared rather than copied. The
/// log keeps its newest entries in memory (see `log_store`), and
/// replication to each follower and the state machine read them from there:
/// with a shared payload, each of those reads costs a reference count
/// instead of a copy of every job in the entry. Encoded (log, wire) exactly
/// as the `Command` itself.
pub type Payload = std::sync::Arc<gantry_core::Command>;

openraft::declare_raft_types!(
    /// Gantry's Raft type configuration: node ids are `u64` replica ids,
    /// nodes carry the replica's address, the payload is a core `Command`.
    pub TypeConfig:
        D = Payload,
        R = gantry_core::Outcome,
        AsyncRuntime = runtime::GantryRuntime,
);

/// Any Raft type configuration the store can serve: Gantry's payload and
/// openraft's default id, vote and entry types, with the runtime left open.
/// Production and the deterministic simulation both use [`TypeConfig`]
/// (whose runtime draws from a seed under [`runtime::seeded`]).
pub trait StoreConfig:
    openraft::RaftTypeConfig<
        D = Payload,
        R = gantry_core::Outcome,
        NodeId = u64,
        Node = openraft::impls::BasicNode,
        Term = u64,
        LeaderId = LeaderId<u64, u64>,
        Vote = openraft::impls::Vote<LeaderId<u64, u64>>,
        Entry = openraft::Entry<
            <LeaderId<u64, u64> as RaftLeaderId>::Committed,
            openraft::EntryPayload<Payload, u64, openraft::impls::BasicNode>,
        >,
    >
{
}

impl<C> StoreConfig for C where
    C: openraft::RaftTypeConfig<
            D = Payload,
            R = gantry_core::Outcome,
            NodeId = u64,
            Node = openraft::impls::BasicNode,
            Term = u64,
            LeaderId = LeaderId<u64, u64>,
            Vote = openraft::impls::Vote<LeaderId<u64, u64>>,
            Entry = openraft::Entry<
                <LeaderId<u64, u64> as RaftLeaderId>::Committed,
                openraft::EntryPayload<Payload, u64, openraft::impls::BasicNode>,
            >,
        >
{
}

/// When a write counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Appends, votes and snapshots are flushed to disk before openraft is
    /// told they are done (production).
    Fsync,
    /// Writes reach the process's sled cache only: they survive the store
    /// being dropped and reopened in the same process, which is all a
    /// simulated crash does. For the deterministic simulation only, where
    /// waiting on disk threads would make time depend on the machine.
    Process,
}

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
    open_with(dir, Durability::Fsync)
}

/// [`open`] for any [`StoreConfig`], with the durability asked for.
///
/// Two sled databases: `raft.sled` for the log and the vote, and
/// `snapshot.sled` for the last snapshot. A flush makes a whole database
/// durable, so a snapshot of hundreds of MiB in the log's database was
/// written out by the next log flush, and every write waited for it.
pub fn open_with<C: StoreConfig>(
    dir: &Path,
    durability: Durability,
) -> io::Result<(LogStore<C>, StateMachineStore<C>)> {
    std::fs::create_dir_all(dir)?;
    let db = open_db(&dir.join("raft.sled"), LOG_CACHE_BYTES)?;
    let snapshots = open_db(&dir.join("snapshot.sled"), SNAPSHOT_CACHE_BYTES)?;
    let log = LogStore::new(&db, durability)?;
    // Snapshots of replicas older than the split are in the log's database.
    let sm = StateMachineStore::new(&snapshots, Some(&db), durability)?;
    Ok((log, sm))
}

fn open_db(path: &Path, cache_bytes: u64) -> io::Result<sled::Db> {
    sled::Config::new()
        .path(path)
        // Durability comes from explicit flushes where Raft needs them
        // (append, vote, snapshot), never from a timer.
        .flush_every_ms(None)
        .cache_capacity(cache_bytes)
        .open()
        .map_err(to_io)
}

/// sled's page cache for the log: replication and apply read recent
/// entries, which this holds many times over (sled's default is 1 GiB).
pub const LOG_CACHE_BYTES: u64 = 64 << 20;
/// The snapshot database is read at start and when a follower needs it.
pub const SNAPSHOT_CACHE_BYTES: u64 = 8 << 20;

/// The stores over one already open sled database (the log and snapshots
/// together): what a restart sees when it reopens the same data. The
/// simulation keeps a replica's database across its simulated crashes and
/// rebuilds the stores from it.
pub fn from_db<C: StoreConfig>(
    db: &sled::Db,
    durability: Durability,
) -> io::Result<(LogStore<C>, StateMachineStore<C>)> {
    let log = LogStore::new(db, durability)?;
    let sm = StateMachineStore::new(db, None, durability)?;
    Ok((log, sm))
}

pub(crate) fn to_io(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::other(e)
}
