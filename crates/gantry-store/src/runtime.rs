//! The runtime openraft runs on, in production and in the deterministic
//! simulation alike (one Raft type for both worlds): tokio, with two
//! differences. Random numbers (openraft's election timeouts) come from a
//! seed when a task runs under [`seeded`] (the simulation: every task
//! spawned under it derives its own seed from its parent's), else from the
//! operating system. And the watch channel wakes its waiters in the order
//! they registered: tokio's spreads them over eight lists picked at random
//! (`thread_rng_n(8)`), which makes the order differ from run to run.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::rt::watch::{self, RecvError, SendError};
use openraft::rt::{OptionalSend, OptionalSync, Select2, Select3, Select4};
use openraft_rt_tokio::TokioRuntime;
use rand_openraft::SeedableRng;
use rand_openraft::rngs::SmallRng;
use tokio::sync::Notify;

type Inner = TokioRuntime;

tokio::task_local! {
    static SEED: Cell<u64>;
}

/// Runs `f` (and every task it spawns through the runtime) with random
/// numbers drawn from `seed`: the same seed, the same numbers.
pub fn seeded<F: Future>(seed: u64, f: F) -> impl Future<Output = F::Output> {
    SEED.scope(Cell::new(seed), f)
}

/// Spawns `f` on tokio as the runtime spawns openraft's tasks: under
/// [`seeded`] the task draws from a seed of its own. Gantry's replica spawns
/// its tasks through this, so the simulation replays them too.
pub fn spawn<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    <GantryRuntime as AsyncRuntime>::spawn(f)
}

/// 128 random bits: from the task's seed under [`seeded`], else the OS.
pub fn random_u128() -> u128 {
    use rand_openraft::RngExt;
    <GantryRuntime as AsyncRuntime>::thread_rng().random()
}

/// SplitMix64, with `gamma` picking the sequence.
fn splitmix64(seed: u64, gamma: u64) -> u64 {
    let z = seed.wrapping_add(gamma);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The task's seed, moved on; `None` outside [`seeded`].
fn take_seed() -> Option<u64> {
    SEED.try_with(|c| {
        let seed = c.get();
        c.set(splitmix64(seed, 0x6a09_e667_f3bc_c908));
        seed
    })
    .ok()
}

/// See the module documentation.
#[derive(Debug)]
pub struct GantryRuntime(Inner);

impl AsyncRuntime for GantryRuntime {
    type JoinError = <Inner as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Inner as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Inner as AsyncRuntime>::Sleep;
    type Instant = <Inner as AsyncRuntime>::Instant;
    type TimeoutError = <Inner as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Inner as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        // A seeded task's child gets a seed of its own from its parent's.
        let seed = take_seed().map(|s| splitmix64(s, 0x9e37_79b9_7f4a_7c15));
        match seed {
            Some(s) => Inner::spawn(SEED.scope(Cell::new(s), future)),
            None => Inner::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Inner::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Inner::sleep_until(deadline)
    }

    fn timeout<R, F>(duration: Duration, future: F) -> Self::Timeout<R, F>
    where
        F: Future<Output = R> + OptionalSend,
    {
        Inner::timeout(duration, future)
    }

    fn timeout_at<R, F>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F>
    where
        F: Future<Output = R> + OptionalSend,
    {
        Inner::timeout_at(deadline, future)
    }

    fn select2<A, B>(
        a: A,
        b: B,
    ) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        Inner::select2(a, b)
    }

    fn select3<A, B, C>(
        a: A,
        b: B,
        c: C,
    ) -> impl Future<Output = Select3<A::Output, B::Output, C::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
    {
        Inner::select3(a, b, c)
    }

    fn select4<A, B, C, D>(
        a: A,
        b: B,
        c: C,
        d: D,
    ) -> impl Future<Output = Select4<A::Output, B::Output, C::Output, D::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
        D: Future + OptionalSend,
    {
        Inner::select4(a, b, c, d)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Inner::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        match take_seed() {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::seed_from_u64(rand::random()),
        }
    }

    type Mpsc = <Inner as AsyncRuntime>::Mpsc;
    type Watch = GantryWatch;
    type Oneshot = <Inner as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Inner as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        GantryRuntime(Inner::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Inner::spawn_blocking(f)
    }
}

/// A watch channel over one `Notify`: waiters wake in registration order.
pub struct GantryWatch;

struct Shared<T> {
    value: RwLock<T>,
    version: AtomicU64,
    senders: AtomicUsize,
    notify: Notify,
}

pub struct GantryWatchSender<T>(Arc<Shared<T>>);

pub struct GantryWatchReceiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

fn read<T>(s: &Shared<T>) -> RwLockReadGuard<'_, T> {
    // A panic while writing cannot leave a half-written value here (the
    // closure either ran or not); keep serving the value.
    s.value.read().unwrap_or_else(|p| p.into_inner())
}

impl watch::Watch for GantryWatch {
    type Sender<T: OptionalSend + OptionalSync> = GantryWatchSender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = GantryWatchReceiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = RwLockReadGuard<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Arc::new(Shared {
            value: RwLock::new(init),
            version: AtomicU64::new(0),
            senders: AtomicUsize::new(1),
            notify: Notify::new(),
        });
        (
            GantryWatchSender(shared.clone()),
            GantryWatchReceiver { shared, seen: 0 },
        )
    }
}

impl<T> Clone for GantryWatchSender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::SeqCst);
        GantryWatchSender(self.0.clone())
    }
}

impl<T> Drop for GantryWatchSender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.notify.notify_waiters();
        }
    }
}

impl<T> Clone for GantryWatchReceiver<T> {
    fn clone(&self) -> Self {
        GantryWatchReceiver {
            shared: self.shared.clone(),
            seen: self.seen,
        }
    }
}

impl<T: OptionalSend + OptionalSync> watch::WatchSender<GantryWatch, T> for GantryWatchSender<T> {
    fn send(&self, value: T) -> Result<(), SendError<T>> {
        // Like tokio's: fails when no receiver is left; we cannot count
        // receivers cheaply, and openraft ignores this error, so always send.
        let mut v = self.0.value.write().unwrap_or_else(|p| p.into_inner());
        *v = value;
        drop(v);
        self.0.version.fetch_add(1, Ordering::SeqCst);
        self.0.notify.notify_waiters();
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let mut v = self.0.value.write().unwrap_or_else(|p| p.into_inner());
        let modified = modify(&mut v);
        drop(v);
        if modified {
            self.0.version.fetch_add(1, Ordering::SeqCst);
            self.0.notify.notify_waiters();
        }
        modified
    }

    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        read(&self.0)
    }

    fn subscribe(&self) -> GantryWatchReceiver<T> {
        GantryWatchReceiver {
            shared: self.0.clone(),
            seen: self.0.version.load(Ordering::SeqCst),
        }
    }
}

impl<T: OptionalSend + OptionalSync> watch::WatchReceiver<GantryWatch, T>
    for GantryWatchReceiver<T>
{
    async fn changed(&mut self) -> Result<(), RecvError> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let version = self.shared.version.load(Ordering::SeqCst);
            if version != self.seen {
                self.seen = version;
                return Ok(());
            }
            if self.shared.senders.load(Ordering::SeqCst) == 0 {
                return Err(RecvError(()));
            }
            notified.await;
        }
    }

    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        read(&self.shared)
    }

    fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
        self.seen = self.shared.version.load(Ordering::SeqCst);
        read(&self.shared)
    }
}
