//! The pool's other threads, held for the matrix products of one decode step.
//!
//! Decoding a token runs about 65 matrix products of 0.5 to 4 MB each, a few microseconds
//! apart. Split through rayon, every product has to wake the pool's other threads, and on
//! this kind of machine (a VM whose idle vCPUs halt) that took long enough that they often
//! joined a product late or not at all: measured on 0.83 MB products with 2 threads, one
//! did 18 us of work and the other 10 us, or 28 us and none. Here each other thread instead
//! stays inside one rayon job for the whole step ([`DecodeHelpers::serve`], spawned in a
//! `rayon::scope` beside the layers), spinning on an atomic; each product gives every
//! helper an equal share of its rows ([`DecodeHelpers::split`]) and does the first share
//! itself. While they wait, helpers run the pool's other pending work (the attention tasks)
//! through `rayon::yield_now`. Nothing can hang: a share a helper has not picked up by the
//! time the caller finished its own is taken back and done by the caller, and a helper that
//! panics hands back an empty result, which the caller redoes.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::qmatvec::{Activations, BlockMatrix};

/// No job.
const EMPTY: u8 = 0;
/// A job waits in the slot.
const POSTED: u8 = 1;
/// The helper took the job and is running it.
const RUNNING: u8 = 2;
/// The helper's result waits in the slot.
const DONE: u8 = 3;

/// Rows `first..first + n` of `w` against `act`.
struct Job {
    w: Arc<BlockMatrix>,
    act: Arc<Activations>,
    first: usize,
    n: usize,
}

/// What travels between the caller and one helper.
enum Slot {
    Empty,
    Job(Job),
    Done(Vec<f32>),
}

/// One helper's state and slot.
struct Lane {
    state: AtomicU8,
    slot: Mutex<Slot>,
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
    stop: AtomicBool,
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
                })
                .collect(),
            stop: AtomicBool::new(false),
        }
    }

    /// Runs `work` on this thread with the pool's other threads serving as helpers until it
    /// returns (or panics: the helpers are released either way). Call it from a pool thread
    /// (the model's forward passes run on one), so that the helpers' jobs go to this pool.
    pub(crate) fn with<R: Send>(work: impl FnOnce(&Self) -> R + Send) -> R {
        /// Releases the helpers when dropped, also while unwinding.
        struct Release<'a>(&'a DecodeHelpers);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.finish();
            }
        }
        let helpers = Self::new(rayon::current_num_threads().saturating_sub(1));
        rayon::scope(|s| {
            for lane in 0..helpers.lanes.len() {
                let helpers = &helpers;
                s.spawn(move |_| helpers.serve(lane));
            }
            let _release = Release(&helpers);
            work(&helpers)
        })
    }

    /// Helper `lane`'s side: runs the shares posted to it until [`finish`](Self::finish),
    /// and the pool's other pending work in between.
    pub(crate) fn serve(&self, lane: usize) {
        let Some(me) = self.lanes.get(lane) else {
            return;
        };
        while !self.stop.load(Ordering::Acquire) {
            if me
                .state
                .compare_exchange(POSTED, RUNNING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                let job = me.take();
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
                    Slot::Job(j) => {
                        let mut y = vec![0f32; j.n];
                        j.w.rows_decode(&j.act, j.first, &mut y);
                        y
                    }
                    _ => Vec::new(),
                }))
                .unwrap_or_default();
                me.put(Slot::Done(out));
                me.state.store(DONE, Ordering::Release);
                continue;
            }
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    }

    /// Ends every [`serve`](Self::serve).
    pub(crate) fn finish(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// One decode product `y = w x`, `act` the quantized `x`: the rows are cut into equal
    /// shares, one per helper and the first for the caller's thread.
    pub(crate) fn split(&self, w: &Arc<BlockMatrix>, act: Activations, y: &mut [f32]) {
        let act = Arc::new(act);
        let rows = y.len();
        let parts = self.lanes.len() + 1;
        // Shares start on tile boundaries (see `BlockMatrix::share_start`).
        let bound = |p: usize| w.share_start(p, parts).min(rows);
        // Post every share first, so that the helpers start while the caller works.
        let mut posted = vec![false; self.lanes.len()];
        for (i, (lane, posted)) in self.lanes.iter().zip(posted.iter_mut()).enumerate() {
            let (first, end) = (bound(i + 1), bound(i + 2));
            if end > first && lane.state.load(Ordering::Acquire) == EMPTY {
                lane.put(Slot::Job(Job {
                    w: Arc::clone(w),
                    act: Arc::clone(&act),
                    first,
                    n: end - first,
                }));
                lane.state.store(POSTED, Ordering::Release);
                *posted = true;
            }
        }
        let (mine, mut rest) = y.split_at_mut(bound(1));
        w.rows_decode(&act, 0, mine);
        for (i, (lane, posted)) in self.lanes.iter().zip(posted).enumerate() {
            let (first, end) = (bound(i + 1), bound(i + 2));
            let (theirs, tail) = rest.split_at_mut(end - first);
            rest = tail;
            if !posted {
                w.rows_decode(&act, first, theirs);
                continue;
            }
            // Not picked up yet: take it back.
            if lane
                .state
                .compare_exchange(POSTED, EMPTY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                lane.put(Slot::Empty);
                w.rows_decode(&act, first, theirs);
                continue;
            }
            while lane.state.load(Ordering::Acquire) != DONE {
                std::hint::spin_loop();
            }
            let done = lane.take();
            lane.state.store(EMPTY, Ordering::Release);
            match done {
                Slot::Done(v) if v.len() == theirs.len() => theirs.copy_from_slice(&v),
                // Only a panic on the helper leaves anything else: redo the share here.
                _ => w.rows_decode(&act, first, theirs),
            }
        }
    }
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
        // Nobody serving: every share is taken back by the caller.
        for helpers in [0, 1, 3] {
            let h = DecodeHelpers::new(helpers);
            let mut y = vec![f32::NAN; 37];
            h.split(&w, w.quantize_input(&x, 1), &mut y);
            assert_eq!(y, want, "{helpers} idle helpers");
        }
        // Helpers serving in a scope, as the model runs them; many products in a row.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .map_err(|e| crate::Error::InvalidArgument(e.to_string()))?;
        let all = pool.install(|| {
            DecodeHelpers::with(|h| {
                assert_eq!(h.lanes.len(), 2);
                (0..200)
                    .map(|_| {
                        let mut y = vec![f32::NAN; 37];
                        h.split(&w, w.quantize_input(&x, 1), &mut y);
                        y
                    })
                    .collect::<Vec<_>>()
            })
        });
        for y in all {
            assert_eq!(y, want);
        }
        // A panic inside releases the helpers instead of leaving the scope waiting on them.
        let caught = pool.install(|| {
            std::panic::catch_unwind(|| DecodeHelpers::with(|_| -> () { panic!("inside") }))
        });
        assert!(caught.is_err());
        Ok(())
    }
}
