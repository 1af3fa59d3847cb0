//! A persistent thread pool for the matmul kernels.
//!
//! `n - 1` worker threads are spawned once; the calling thread is worker 0. A call publishes a
//! job (a `&dyn Fn(usize)` that lives on the caller's stack), bumps a generation counter and
//! waits until every worker has reported the generation back. Idle workers spin for a short,
//! time-bounded while (so back-to-back matmuls of one decode step find them awake) and then
//! park, so a pool that is not used costs no CPU.
//!
//! Thread count: `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else
//! `std::thread::available_parallelism()` — the same precedence candle uses for its own pool.
//!
//! Nested calls (a job that calls [`Pool::run`] again) and concurrent calls from two threads
//! do not deadlock: the second caller runs every part of its job itself, in order.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// One cache line per worker so that polling never false-shares with another worker's writes.
#[repr(C, align(128))]
struct Slot {
    /// Generation the worker has finished (written by the worker, read by the caller).
    done: AtomicUsize,
    /// True while the worker is parked or about to park (written by the worker).
    sleeping: AtomicBool,
}

#[repr(C, align(128))]
struct Gen(AtomicUsize);

/// The job being run: a type-erased pointer to the caller's closure and its trampoline.
#[derive(Clone, Copy)]
struct Job {
    data: *const (),
    call: unsafe fn(*const (), usize),
}

struct Shared {
    generation: Gen,
    slots: Box<[Slot]>,
    job: UnsafeCell<Job>,
    stop: AtomicBool,
    panicked: AtomicBool,
    spin: Duration,
    threads: OnceLock<Box<[Thread]>>,
}

// SAFETY: `job` is written only by the caller holding `Pool::lock`, strictly before the
// generation is published with Release ordering, and read by workers only after they observe
// that generation with Acquire ordering; it is not written again until every worker has
// reported the generation done (Release/Acquire on `Slot::done`).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    n_threads: usize,
    lock: Mutex<()>,
}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

unsafe fn trampoline<F: Fn(usize) + Sync>(data: *const (), tid: usize) {
    (*(data as *const F))(tid)
}

fn env_threads(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse::<usize>().ok().filter(|&n| n > 0)
}

/// The thread count the global pool uses.
pub fn default_threads() -> usize {
    env_threads("CANDLE_NUM_THREADS")
        .or_else(|| env_threads("RAYON_NUM_THREADS"))
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .max(1)
}

fn default_spin() -> Duration {
    let us = std::env::var("ZIYA_KERNELS_SPIN_US").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(100);
    Duration::from_micros(us)
}

/// The process-wide pool (created on first use).
pub fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(default_threads()))
}

impl Pool {
    /// A pool of `n_threads` (including the calling thread; `n_threads - 1` are spawned).
    pub fn new(n_threads: usize) -> Self {
        Self::with_spin(n_threads, default_spin())
    }

    pub fn with_spin(n_threads: usize, spin: Duration) -> Self {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: Gen(AtomicUsize::new(0)),
            slots: (0..n_threads)
                .map(|_| Slot { done: AtomicUsize::new(0), sleeping: AtomicBool::new(false) })
                .collect(),
            job: UnsafeCell::new(Job { data: std::ptr::null(), call: trampoline::<fn(usize)> }),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            spin,
            threads: OnceLock::new(),
        });
        let mut handles = Vec::with_capacity(n_threads.saturating_sub(1));
        for tid in 1..n_threads {
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("ziya-kernels-{tid}"))
                .spawn(move || worker(shared, tid))
                .expect("failed to spawn kernel pool thread");
            handles.push(h.thread().clone());
            // The JoinHandle is dropped: workers are detached and exit when `stop` is set.
        }
        let _ = shared.threads.set(handles.into_boxed_slice());
        Pool { shared, n_threads, lock: Mutex::new(()) }
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(tid)` for every `tid` in `0..n_threads()`, in parallel, and returns when all are
    /// done. A panic in any part is re-raised here after every part has finished.
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        let n = self.n_threads;
        if n == 1 {
            f(0);
            return;
        }
        let nested = IN_POOL.with(|c| c.get());
        let guard = if nested { None } else { self.lock.try_lock().ok() };
        let Some(_guard) = guard else {
            // Nested or concurrent use: the parts do not depend on which thread runs them.
            for tid in 0..n {
                f(tid);
            }
            return;
        };
        let sh = &*self.shared;
        sh.panicked.store(false, Ordering::Relaxed);
        // SAFETY: we hold the lock, and every worker finished the previous generation (waited
        // for below before the previous call returned), so no worker reads `job` now.
        unsafe {
            *sh.job.get() = Job { data: &f as *const F as *const (), call: trampoline::<F> };
        }
        let gen = sh.generation.0.load(Ordering::Relaxed).wrapping_add(1);
        sh.generation.0.store(gen, Ordering::SeqCst);
        let threads = sh.threads.get().expect("pool threads");
        for tid in 1..n {
            if sh.slots[tid].sleeping.load(Ordering::SeqCst) {
                threads[tid - 1].unpark();
            }
        }
        // Wait for the workers even if our own part panics: they borrow `f`.
        struct Wait<'a>(&'a Shared, usize, usize);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                let (sh, gen, n) = (self.0, self.1, self.2);
                for tid in 1..n {
                    let mut spins = 0u32;
                    while sh.slots[tid].done.load(Ordering::Acquire) != gen {
                        spins = spins.wrapping_add(1);
                        if spins.is_multiple_of(1024) {
                            std::thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                }
            }
        }
        let wait = Wait(sh, gen, n);
        IN_POOL.with(|c| c.set(true));
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                IN_POOL.with(|c| c.set(false));
            }
        }
        let reset = Reset;
        f(0);
        drop(reset);
        drop(wait);
        if sh.panicked.swap(false, Ordering::AcqRel) {
            panic!("a kernel pool worker panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(threads) = self.shared.threads.get() {
            for t in threads.iter() {
                t.unpark();
            }
        }
    }
}

fn worker(sh: Arc<Shared>, tid: usize) {
    IN_POOL.with(|c| c.set(true));
    let slot = &sh.slots[tid];
    let mut seen = 0usize;
    loop {
        // Wait for a new generation: spin for `sh.spin`, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        let gen = loop {
            let g = sh.generation.0.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            if sh.stop.load(Ordering::Relaxed) {
                return;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || start.elapsed() < sh.spin {
                std::hint::spin_loop();
                continue;
            }
            // Announce sleep, re-check, park. The caller stores the generation (SeqCst) before
            // reading `sleeping` (SeqCst), so either we see the new generation here or it sees
            // `sleeping` and unparks us (an unpark before park makes park return at once).
            slot.sleeping.store(true, Ordering::SeqCst);
            let g = sh.generation.0.load(Ordering::SeqCst);
            if g == seen && !sh.stop.load(Ordering::SeqCst) {
                std::thread::park();
            }
            slot.sleeping.store(false, Ordering::SeqCst);
        };
        seen = gen;
        // SAFETY: the job was written before the generation was published (Release/SeqCst) and
        // we observed the generation with Acquire; the closure it points to is kept alive by the
        // caller until we store `done` below.
        let job = unsafe { *sh.job.get() };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (job.call)(job.data, tid) }));
        if r.is_err() {
            sh.panicked.store(true, Ordering::Release);
        }
        slot.done.store(gen, Ordering::Release);
    }
}

/// Contiguous, balanced split of `n` items into `parts`: the range of part `i`, with the
/// boundaries on multiples of `align` (the last part takes the remainder).
pub fn split(n: usize, parts: usize, i: usize, align: usize) -> std::ops::Range<usize> {
    let align = align.max(1);
    let units = n.div_ceil(align);
    let per = units / parts;
    let extra = units % parts;
    let start = (i * per + i.min(extra)) * align;
    let end = ((i + 1) * per + (i + 1).min(extra)) * align;
    start.min(n)..end.min(n)
}

/// Per-thread slabs of contiguous rows, handed out in chunks: each thread first takes the chunks
/// of its own slab in order (so it streams one contiguous range of weights), then helps with
/// what is left of the other slabs (so a thread slowed by another process does not hold up
/// the call).
pub struct Slabs {
    cursors: Box<[Cursor]>,
    ends: Box<[usize]>,
    chunk: usize,
    /// Claims take half of what is left of the slab (at most `chunk`, at least `align`).
    guided: Option<usize>,
}

#[repr(C, align(128))]
struct Cursor(AtomicUsize);

impl Slabs {
    pub fn new(n: usize, parts: usize, chunk: usize, align: usize) -> Self {
        let chunk = chunk.max(1).next_multiple_of(align.max(1));
        let mut cursors = Vec::with_capacity(parts);
        let mut ends = Vec::with_capacity(parts);
        for i in 0..parts {
            let r = split(n, parts, i, align);
            cursors.push(Cursor(AtomicUsize::new(r.start)));
            ends.push(r.end);
        }
        Slabs { cursors: cursors.into_boxed_slice(), ends: ends.into_boxed_slice(), chunk, guided: None }
    }

    /// Like [`Slabs::new`], but each claim takes half of what is left of the slab, rounded up
    /// to `align`, at most `chunk`: the chunks shrink toward the end, so the last one a thread
    /// is still working on while the others have run out is small. For the batched products,
    /// whose chunks are large (eight row groups of 32 rows, a sixth of a ViT-g product's share
    /// per thread): with fixed chunks a thread waited for the other's last one at the end of
    /// each product.
    pub fn guided(n: usize, parts: usize, chunk: usize, align: usize) -> Self {
        let align = align.max(1);
        Slabs { guided: Some(align), ..Self::new(n, parts, chunk, align) }
    }

    /// The chunk to claim from a slab with `left` items left.
    fn claim_size(&self, left: usize) -> usize {
        match self.guided {
            Some(align) => left.div_ceil(2).next_multiple_of(align).min(self.chunk),
            None => self.chunk,
        }
    }

    /// Calls `f` on every chunk that thread `tid` claims.
    pub fn for_each(&self, tid: usize, mut f: impl FnMut(std::ops::Range<usize>)) {
        let parts = self.cursors.len();
        for k in 0..parts {
            let s = (tid + k) % parts;
            let end = self.ends[s];
            loop {
                // Cheap check first: a finished slab costs one load, not an atomic RMW.
                if self.cursors[s].0.load(Ordering::Relaxed) >= end {
                    break;
                }
                let (start, size) = match self.guided {
                    None => (self.cursors[s].0.fetch_add(self.chunk, Ordering::Relaxed), self.chunk),
                    Some(_) => {
                        // The size depends on the cursor: claim it only if no one moved it.
                        let cur = self.cursors[s].0.load(Ordering::Relaxed);
                        let size = self.claim_size(end.saturating_sub(cur));
                        match self.cursors[s].0.compare_exchange_weak(
                            cur,
                            cur + size,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        ) {
                            Ok(_) => (cur, size),
                            Err(_) => continue,
                        }
                    }
                };
                if start >= end {
                    break;
                }
                f(start..(start + size).min(end));
            }
        }
    }
}

/// Raw output pointer shared by the workers; each writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    #[inline(always)]
    pub fn ptr(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers() {
        for n in [0usize, 1, 5, 17, 100, 5120] {
            for parts in 1..6 {
                for align in [1usize, 4, 16] {
                    let mut next = 0;
                    for i in 0..parts {
                        let r = split(n, parts, i, align);
                        assert_eq!(r.start, next);
                        assert!(r.start <= r.end);
                        if r.end < n {
                            assert_eq!(r.end % align, 0);
                        }
                        next = r.end;
                    }
                    assert_eq!(next, n);
                }
            }
        }
    }

    #[test]
    fn pool_runs_all_parts_and_slabs_cover() {
        for threads in [1usize, 2, 3, 5] {
            let pool = Pool::with_spin(threads, Duration::from_micros(10));
            for round in 0..200 {
                let n = 1000 + round;
                for slabs in [Slabs::new(n, threads, 7, 4), Slabs::guided(n, threads, 7, 4)] {
                    let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    pool.run(|tid| {
                        slabs.for_each(tid, |r| {
                            for i in r {
                                seen[i].fetch_add(1, Ordering::Relaxed);
                            }
                        })
                    });
                    assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                }
                if round % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(2)); // let workers park
                }
            }
            // nested use runs inline
            let count = AtomicUsize::new(0);
            pool.run(|_| {
                pool.run(|_| {
                    count.fetch_add(1, Ordering::Relaxed);
                })
            });
            assert_eq!(count.load(Ordering::Relaxed), threads * threads);
        }
    }

    #[test]
    fn pool_propagates_panics() {
        let pool = Pool::with_spin(2, Duration::from_micros(10));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(|tid| {
                if tid == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        // still usable
        let count = AtomicUsize::new(0);
        pool.run(|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}
