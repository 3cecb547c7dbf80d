//! The pool's other threads, held for the matrix products of one decode step.
//!
//! Decoding a token runs about 65 matrix products of 0.5 to 4 MB each, a few microseconds
//! apart. Split through rayon, every product has to wake the pool's other threads, and on
//! this kind of machine (a VM whose idle vCPUs halt) that took long enough that they often
//! joined a product late or not at all: measured on 0.83 MB products with 2 threads, one
//! did 18 us of work and the other 10 us, or 28 us and none. Here each other thread instead
//! stays inside one rayon job ([`DecodeHelpers::serve`], spawned by
//! [`DecodeHelpers::wake`]), spinning on an atomic, for the whole step and until it has had
//! no work for [`LINGER`]: from one generated token to the next it never parks.
//!
//! Each step's work ([`DecodeHelpers::run`]) is cut into chunks, and every thread (the
//! caller and each helper) starts with an equal, contiguous share of them, taken from its
//! front. A thread that finishes its share takes the chunks still left in the others'
//! shares, from their backs. So the threads end together even when one of them runs slower
//! (a busy core, a late start), while each still reads its rows in order. The products
//! ([`DecodeHelpers::split`]) cut their rows into [`CHUNKS_PER_THREAD`] chunks per thread
//! (more for large matrices); the attention step (see `attention::decode_shares`) gives
//! each thread one chunk of query heads. While it waits for its next job, a helper fetches
//! the start of its share of the next product ([`DecodeHelpers::announce`]).
//!
//! Nothing can hang or be lost: a share no helper picked up is taken, chunk by chunk, by
//! the caller, which then waits only for helpers that did start; and the chunks of a helper
//! that panics are redone by the caller.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::qmatvec::{Activations, BlockMatrix};

/// The work of one step cut into chunks: `share(c, out)` computes chunk `c` into `out`
/// (overwriting it).
pub(crate) type Share = Arc<dyn Fn(usize, &mut [f32]) + Send + Sync>;

/// How long a helper keeps serving without work before its thread goes back to the pool:
/// longer than the gap between two tokens' steps (sampling, the caller's own work), so that
/// while a model generates, its helpers never park (waking a parked thread took 30-240 us
/// per token on this machine, much of a step).
const LINGER: Duration = Duration::from_millis(2);

/// Chunks per thread of a matrix product: enough that the threads end within a chunk of
/// each other, few enough that each chunk is a long sequential read.
const CHUNKS_PER_THREAD: usize = 8;

/// How much of its share of the next product a helper fetches into L2 while it waits for
/// it: measured against 0 and 1 MB (`bench`, interleaved single runs), 256 KB and 1 MB
/// gave the same, 0 was about 5% slower in the median.
const PREFETCH_BYTES: usize = 256 << 10;

/// The most weight bytes in one chunk of a product: a thread that runs out of work waits
/// at most for the chunks the others are in (256 KB is about 8 us of one thread's reading
/// here; the output projection's 43 MB would otherwise come in 2.7 MB chunks). 64 and
/// 128 KB, and 4 or 16 chunks per thread, measured the same (within 1-2%).
const MAX_CHUNK_BYTES: usize = 256 << 10;

/// No job.
const EMPTY: u8 = 0;
/// A job waits in the slot.
const POSTED: u8 = 1;
/// The helper took the job and is running it.
const RUNNING: u8 = 2;
/// The helper's result waits in the slot.
const DONE: u8 = 3;

/// Which chunks of a step are still unclaimed: share `s` holds chunks `front..back`
/// (packed in one atomic), claimed by its owner from the front and by the other threads
/// from the back.
struct Claims {
    shares: Vec<AtomicU64>,
}

impl Claims {
    /// Share `s` holds chunks `bounds[s]..bounds[s + 1]`.
    fn new(bounds: &[usize]) -> Self {
        Self {
            shares: bounds
                .windows(2)
                .map(|w| AtomicU64::new(pack(w[0], w[1])))
                .collect(),
        }
    }

    /// The next chunk of share `s` from its front, if any is left.
    fn front(&self, s: usize) -> Option<usize> {
        self.claim(s, |f, b| (f < b).then(|| ((f + 1, b), f)))
    }

    /// The last chunk of share `s`, if any is left. (`then`, not `then_some`: the latter
    /// would compute `b - 1` for an empty share too, which overflows at 0.)
    fn back(&self, s: usize) -> Option<usize> {
        self.claim(s, |f, b| (f < b).then(|| ((f, b - 1), b - 1)))
    }

    fn claim(
        &self,
        s: usize,
        take: impl Fn(usize, usize) -> Option<((usize, usize), usize)>,
    ) -> Option<usize> {
        let cell = self.shares.get(s)?;
        let mut cur = cell.load(Ordering::Acquire);
        loop {
            let (f, b) = unpack(cur);
            let ((nf, nb), chunk) = take(f, b)?;
            match cell.compare_exchange_weak(cur, pack(nf, nb), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(chunk),
                Err(now) => cur = now,
            }
        }
    }

    /// Claims chunks for thread `me`: its own share's from the front, then the others'
    /// from their backs, until none is left. `work(c)` runs each.
    fn drain(&self, me: usize, mut work: impl FnMut(usize)) {
        while let Some(c) = self.front(me) {
            work(c);
        }
        for s in (0..self.shares.len()).filter(|&s| s != me) {
            while let Some(c) = self.back(s) {
                work(c);
            }
        }
    }
}

/// How many chunks a product with `w` is cut into for `threads` threads: at least
/// [`CHUNKS_PER_THREAD`] per thread, and none over [`MAX_CHUNK_BYTES`] of weights.
fn chunk_count(w: &BlockMatrix, threads: usize) -> usize {
    (threads * CHUNKS_PER_THREAD).max(w.size_in_bytes().div_ceil(MAX_CHUNK_BYTES))
}

fn pack(front: usize, back: usize) -> u64 {
    ((front as u64) << 32) | (back as u64 & 0xffff_ffff)
}

fn unpack(v: u64) -> (usize, usize) {
    ((v >> 32) as usize, (v & 0xffff_ffff) as usize)
}

/// A step as a helper sees it: the chunks (chunk `c` is output values
/// `starts[c]..starts[c + 1]`), what is claimed, and which share is the helper's own.
struct Job {
    share: Share,
    starts: Arc<Vec<usize>>,
    claims: Arc<Claims>,
    me: usize,
    /// Values in the helper's own share: its result's room, reserved once (growing it chunk
    /// by chunk reallocated several times per product).
    own: usize,
}

/// What travels between the caller and one helper.
enum Slot {
    Empty,
    Job(Job),
    /// The chunks the helper ran, and their values one after the other.
    Done(Vec<usize>, Vec<f32>),
}

/// One helper's state and slot.
struct Lane {
    state: AtomicU8,
    slot: Mutex<Slot>,
    /// Whether a thread is serving this lane (see [`DecodeHelpers::wake`]).
    serving: AtomicBool,
}

impl Lane {
    fn take(&self) -> Slot {
        match self.slot.lock() {
            Ok(mut s) => std::mem::replace(&mut *s, Slot::Empty),
            Err(_) => Slot::Empty,
        }
    }

    fn put(&self, slot: Slot) {
        if let Ok(mut s) = self.slot.lock() {
            *s = slot;
        }
    }
}

/// See the module documentation.
pub(crate) struct DecodeHelpers {
    lanes: Vec<Lane>,
    /// The matrix of the product after the one running (see [`announce`](Self::announce)),
    /// and how many have been announced.
    next: Mutex<Option<Arc<BlockMatrix>>>,
    announced: AtomicU64,
    /// The matrix to announce once the next step's jobs are posted (see
    /// [`next_up`](Self::next_up)).
    pending: Mutex<Option<Arc<BlockMatrix>>>,
}

impl std::fmt::Debug for DecodeHelpers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeHelpers")
            .field("helpers", &self.lanes.len())
            .finish()
    }
}

impl DecodeHelpers {
    /// Room for `helpers` helper threads (the pool's threads but the caller's).
    pub(crate) fn new(helpers: usize) -> Self {
        Self {
            lanes: (0..helpers)
                .map(|_| Lane {
                    state: AtomicU8::new(EMPTY),
                    slot: Mutex::new(Slot::Empty),
                    serving: AtomicBool::new(false),
                })
                .collect(),
            next: Mutex::new(None),
            announced: AtomicU64::new(0),
            pending: Mutex::new(None),
        }
    }

    /// Has the next [`run`](Self::run) [`announce`](Self::announce) `w` once it has posted
    /// its own jobs (before, a helper waiting for its job would spend its wait on the
    /// product after).
    pub(crate) fn next_up(&self, w: Option<&Arc<BlockMatrix>>) {
        if let Ok(mut p) = self.pending.lock() {
            *p = w.cloned();
        }
    }

    /// Tells the helpers which matrix the next product reads: each, once idle, fetches the
    /// start of its share of it into L2 while the caller does the serial work between the
    /// two products (norms, quantizing, the attention's bookkeeping).
    pub(crate) fn announce(&self, w: &Arc<BlockMatrix>) {
        if let Ok(mut next) = self.next.lock() {
            *next = Some(Arc::clone(w));
        }
        self.announced.fetch_add(1, Ordering::Release);
    }

    /// Rows `first..end` of `w` that thread `me` (0: the caller) starts a product with.
    fn own_rows(&self, w: &BlockMatrix, me: usize) -> (usize, usize) {
        let chunks = chunk_count(w, self.threads());
        let threads = self.threads();
        let at = |t: usize| w.share_start(t * chunks / threads, chunks);
        (at(me), at(me + 1))
    }

    /// Makes sure every lane has a thread serving it: for each lane no thread serves (at
    /// the first step, or after [`LINGER`] without work), a [`serve`](Self::serve) job is
    /// spawned on the calling thread's rayon pool. Call it from a pool thread (the model's
    /// forward passes run on one) at the start of each decode step.
    pub(crate) fn wake(self: &Arc<Self>) {
        for (i, lane) in self.lanes.iter().enumerate() {
            if !lane.serving.swap(true, Ordering::AcqRel) {
                let helpers = Arc::clone(self);
                rayon::spawn(move || helpers.serve(i));
            }
        }
    }

    /// Helper `lane`'s side: runs the steps posted to it, and fetches the start of the
    /// announced next product in between, until it has had nothing to do for [`LINGER`].
    pub(crate) fn serve(&self, lane: usize) {
        let Some(me) = self.lanes.get(lane) else {
            return;
        };
        let mut seen = 0;
        let mut idle = Instant::now();
        let mut spins = 0u32;
        loop {
            let now = self.announced.load(Ordering::Acquire);
            if now != seen && me.state.load(Ordering::Acquire) != POSTED {
                seen = now;
                let next = self.next.lock().ok().and_then(|n| n.clone());
                if let Some(w) = next {
                    let rows = self.own_rows(&w, lane + 1);
                    let mut cut = false;
                    w.prefetch_rows(rows, PREFETCH_BYTES, || {
                        cut = me.state.load(Ordering::Acquire) == POSTED;
                        !cut
                    });
                    if cut {
                        // Cut short by a job: start again after it (what is fetched
                        // already costs little to ask for again).
                        seen = now.wrapping_sub(1);
                    }
                }
            }
            if me
                .state
                .compare_exchange(POSTED, RUNNING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                let job = me.take();
                let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
                    Slot::Job(j) => {
                        let (mut ran, mut values) = (Vec::new(), Vec::with_capacity(j.own));
                        j.claims.drain(j.me, |c| {
                            if let (Some(&a), Some(&b)) = (j.starts.get(c), j.starts.get(c + 1)) {
                                let at = values.len();
                                values.resize(at + b.saturating_sub(a), 0.0);
                                (j.share)(c, &mut values[at..]);
                                ran.push(c);
                            }
                        });
                        Slot::Done(ran, values)
                    }
                    _ => Slot::Done(Vec::new(), Vec::new()),
                }))
                // Claimed chunks are lost with a panic; the caller redoes every chunk
                // missing from the result.
                .unwrap_or(Slot::Done(Vec::new(), Vec::new()));
                me.put(done);
                me.state.store(DONE, Ordering::Release);
                idle = Instant::now();
                continue;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && idle.elapsed() > LINGER {
                break;
            }
            // Only spin: a helper that ran the pool's other jobs in between (as it once did)
            // could take the next forward pass itself and leave its lane unserved.
            std::hint::spin_loop();
        }
        // A job posted from here on is not picked up: the caller takes its chunks back.
        me.serving.store(false, Ordering::Release);
    }

    /// Threads a step's work is cut over: the helpers and the caller.
    pub(crate) fn threads(&self) -> usize {
        self.lanes.len() + 1
    }

    /// One decode product `y = w x`, `act` the quantized `x`: the rows are cut into
    /// [`CHUNKS_PER_THREAD`] chunks per thread, each starting on a tile boundary (see
    /// `BlockMatrix::share_start`).
    pub(crate) fn split(&self, w: &Arc<BlockMatrix>, act: Activations, y: &mut [f32]) {
        let rows = y.len();
        let chunks = chunk_count(w, self.threads());
        let mut starts: Vec<usize> = (0..=chunks)
            .map(|c| w.share_start(c, chunks).min(rows))
            .collect();
        starts.dedup();
        let starts = Arc::new(starts);
        let (w, act, at) = (Arc::clone(w), Arc::new(act), Arc::clone(&starts));
        self.run(
            y,
            starts,
            Arc::new(move |c, out| {
                w.rows_decode(&act, at.get(c).copied().unwrap_or(0), out);
            }),
        );
    }

    /// Runs `share` for every chunk of `y` (chunk `c` is `y[starts[c]..starts[c + 1]]`;
    /// `starts` ascending, from 0 to `y.len()`): every thread starts with an equal run of
    /// the chunks (a chunk each when there are as many as threads) and then takes what
    /// is left of the others' (see the module documentation).
    pub(crate) fn run(&self, y: &mut [f32], starts: Arc<Vec<usize>>, share: Share) {
        let chunks = starts.len().saturating_sub(1);
        if starts.first() != Some(&0)
            || starts.last() != Some(&y.len())
            || starts.windows(2).any(|w| w[0] > w[1])
        {
            // Not a cut of `y`: nothing a caller in this crate passes.
            return;
        }
        let threads = self.threads();
        let bounds: Vec<usize> = (0..=threads).map(|t| t * chunks / threads).collect();
        let claims = Arc::new(Claims::new(&bounds));
        // Post every helper's job first, so that they start while the caller works.
        let mut posted = vec![false; self.lanes.len()];
        for (i, (lane, posted)) in self.lanes.iter().zip(posted.iter_mut()).enumerate() {
            if bounds[i + 1] < bounds[i + 2] && lane.state.load(Ordering::Acquire) == EMPTY {
                lane.put(Slot::Job(Job {
                    share: Arc::clone(&share),
                    starts: Arc::clone(&starts),
                    claims: Arc::clone(&claims),
                    me: i + 1,
                    own: starts[bounds[i + 2]] - starts[bounds[i + 1]],
                }));
                lane.state.store(POSTED, Ordering::Release);
                *posted = true;
            }
        }
        if let Some(w) = self.pending.lock().ok().and_then(|mut p| p.take()) {
            self.announce(&w);
        }
        let mut done = vec![false; chunks];
        let chunk = |y: &mut [f32], c: usize, done: &mut [bool]| {
            if let Some(out) = y.get_mut(starts[c]..starts[c + 1]) {
                share(c, out);
            }
            done[c] = true;
        };
        claims.drain(0, |c| chunk(y, c, &mut done));
        for (lane, posted) in self.lanes.iter().zip(posted) {
            if !posted {
                continue;
            }
            // Not picked up: its chunks are all claimed (by this thread) by now.
            if lane
                .state
                .compare_exchange(POSTED, EMPTY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                lane.put(Slot::Empty);
                continue;
            }
            while lane.state.load(Ordering::Acquire) != DONE {
                std::hint::spin_loop();
            }
            let result = lane.take();
            lane.state.store(EMPTY, Ordering::Release);
            if let Slot::Done(ran, values) = result {
                let mut at = 0;
                for c in ran {
                    let (a, b) = (starts[c], starts[c + 1]);
                    if let (Some(dst), Some(src)) = (y.get_mut(a..b), values.get(at..at + b - a)) {
                        dst.copy_from_slice(src);
                        done[c] = true;
                    }
                    at += b - a;
                }
            }
        }
        // Only a helper's panic leaves chunks undone: redo them here.
        for c in 0..chunks {
            if !done[c] {
                chunk(y, c, &mut done);
            }
        }
    }
}

/// Runs the decode products `y = w x` of every matrix in `ws` in turn, `passes` times, the
/// way a decode step runs its projections: on the calling rayon pool's threads, through
/// [`DecodeHelpers`], each product's input quantized by the caller and the next matrix
/// announced to the helpers; matrices not `x.len()` wide are skipped. Returns each pass's
/// time and the last product's output. For the `kernels` example, which times it against
/// one large product of the same bytes: the difference is what the boundaries between a
/// decode step's products cost. Call it on a pool thread (inside `rayon::scope` or
/// `install`), as the model's forward passes run.
#[doc(hidden)]
pub fn decode_products(
    ws: &[Arc<BlockMatrix>],
    x: &[f32],
    passes: usize,
) -> (Vec<Duration>, Vec<f32>) {
    let helpers = Arc::new(DecodeHelpers::new(
        rayon::current_num_threads().saturating_sub(1),
    ));
    let mut y = Vec::new();
    let mut times = Vec::with_capacity(passes);
    for _ in 0..passes {
        let start = Instant::now();
        helpers.wake();
        for (i, w) in ws.iter().enumerate() {
            let (rows, cols) = w.dims();
            if cols != x.len() {
                continue;
            }
            y = vec![0f32; rows];
            helpers.next_up(ws.get(i + 1));
            helpers.split(w, w.quantize_input(x, 1), &mut y);
        }
        times.push(start.elapsed());
    }
    (times, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn matrix(rows: usize, cols: usize) -> crate::Result<Arc<BlockMatrix>> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu)?;
        Ok(Arc::new(BlockMatrix::from_qtensor(
            "w",
            &QTensor::quantize(&t, GgmlDType::Q4_0)?,
        )?))
    }

    #[test]
    fn shares_give_the_same_product_with_or_without_helpers() -> crate::Result<()> {
        let w = matrix(37, 64)?;
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.3).sin()).collect();
        let mut want = vec![0f32; 37];
        w.matmul(&x, 1, &mut want);
        // Nobody serving: the caller takes every chunk.
        for helpers in [0, 1, 3] {
            let h = DecodeHelpers::new(helpers);
            let mut y = vec![f32::NAN; 37];
            h.split(&w, w.quantize_input(&x, 1), &mut y);
            assert_eq!(y, want, "{helpers} idle helpers");
        }
        // Helpers serving, as the model runs them; many products in a row.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .map_err(|e| crate::Error::InvalidArgument(e.to_string()))?;
        let h = Arc::new(DecodeHelpers::new(2));
        let all = pool.install(|| {
            h.wake();
            (0..200)
                .map(|_| {
                    let mut y = vec![f32::NAN; 37];
                    h.split(&w, w.quantize_input(&x, 1), &mut y);
                    y
                })
                .collect::<Vec<_>>()
        });
        for y in all {
            assert_eq!(y, want);
        }
        // With nothing to do, the helpers give their threads back to the pool.
        let start = Instant::now();
        while h.lanes.iter().any(|l| l.serving.load(Ordering::Acquire)) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "helpers still serving"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // And a later step wakes them again.
        let mut y = vec![f32::NAN; 37];
        pool.install(|| {
            h.wake();
            h.split(&w, w.quantize_input(&x, 1), &mut y);
        });
        assert_eq!(y, want);
        Ok(())
    }

    #[test]
    fn decode_products_runs_every_pass_through_the_helpers() -> crate::Result<()> {
        let (a, b, narrow) = (matrix(40, 64)?, matrix(24, 64)?, matrix(8, 32)?);
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.7).cos()).collect();
        let mut want = vec![0f32; 24];
        b.matmul(&x, 1, &mut want);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .map_err(|e| crate::Error::InvalidArgument(e.to_string()))?;
        let ws = [a, b, narrow];
        let (times, y) = pool.install(|| decode_products(&ws, &x, 3));
        assert_eq!(times.len(), 3);
        // The last matrix is 32 wide, not 64: skipped, so `y` is `b`'s product.
        assert_eq!(y, want);
        Ok(())
    }

    #[test]
    fn every_chunk_is_claimed_once_from_the_front_or_the_back() {
        // Three threads' shares of 10 chunks: 0..3, 3..6, 6..10.
        let claims = Claims::new(&[0, 3, 6, 10]);
        assert_eq!(claims.front(1), Some(3));
        assert_eq!(claims.back(1), Some(5));
        assert_eq!(claims.front(1), Some(4));
        assert_eq!(claims.front(1), None);
        assert_eq!(claims.back(1), None);
        // Thread 0 drains its own share front first, then the others' from their backs.
        let mut order = Vec::new();
        claims.drain(0, |c| order.push(c));
        assert_eq!(order, vec![0, 1, 2, 9, 8, 7, 6]);
        assert_eq!(claims.back(2), None);
        // Claimed from both ends at once, every chunk goes to exactly one thread.
        let claims = Arc::new(Claims::new(&[0, 500, 1000]));
        let taken: Vec<Vec<usize>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|me| {
                    let claims = Arc::clone(&claims);
                    s.spawn(move || {
                        let mut got = Vec::new();
                        claims.drain(me, |c| got.push(c));
                        got
                    })
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let mut all: Vec<usize> = taken.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }
}
