//! Bugs a test can plant in the shipped replica code, to prove that the
//! deterministic simulation, which runs this code, catches them. Debug
//! builds only: in a release build no switch can be set and every check
//! reads off. A switch holds for the thread that set it (a simulated run
//! is one thread), so runs beside it are untouched.

/// A bug to plant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// The leader stamps entries with its bare wall clock, not the entry
    /// clock (no floor at the latest entry, no catching up after a change
    /// of leader): a leader whose clock is behind writes times earlier than
    /// the entries before them.
    RawEntryStamps,
    /// The leader's liveness loop forgets the sessions replicas confirm
    /// (while the reporters still tell agents they are confirmed): nodes
    /// whose agents hold fresh leases are marked lost, and their tasks run
    /// elsewhere while they still run there.
    ForgetConfirmations,
    /// The leader's garbage collection ignores retentions: every finished
    /// job goes at the next round, however recently it finished.
    CollectIgnoringRetention,
}

#[cfg(debug_assertions)]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Plant>> = const { std::cell::Cell::new(None) };
}

/// Plants `bug` (or none) for this thread; `false` where it cannot be (a
/// release build).
pub fn set(bug: Option<Plant>) -> bool {
    #[cfg(debug_assertions)]
    {
        PLANTED.with(|p| p.set(bug));
        true
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = bug;
        false
    }
}

/// Whether `bug` is planted on this thread.
#[inline]
pub(crate) fn planted(bug: Plant) -> bool {
    #[cfg(debug_assertions)]
    {
        PLANTED.with(|p| p.get() == Some(bug))
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = bug;
        false
    }
}
