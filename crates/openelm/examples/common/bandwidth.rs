//! Memory read bandwidth, shared by the `membw` and `bench` examples: the bound that
//! decoding speed is measured against (weight bytes per token x tokens/s).
//!
//! One access pattern understates what the memory system delivers, so the buffer is read
//! in three ways and the best counts: one sequential stream per thread; two and four
//! interleaved streams per thread (more reads in flight from the hardware prefetchers);
//! and on x86-64 one stream with software prefetch hints 6 KB ahead (as the decode kernels
//! use).

use std::time::Instant;

use rayon::prelude::*;

/// Sum of the buffer with eight independent lanes, so the adds never wait on each other and
/// the loop is bound by how fast memory delivers.
fn sum(v: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in v.chunks_exact(8) {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*x);
        }
    }
    acc.iter().fold(0, |a, x| a.wrapping_add(*x))
}

/// [`sum`] reading `S` equal parts of the buffer in turn, a 64-byte line of each.
fn sum_streams<const S: usize>(v: &[u64]) -> u64 {
    let part = v.len() / S / 8 * 8;
    let mut acc = [0u64; 8];
    for i in (0..part).step_by(8) {
        for s in 0..S {
            let c = &v[s * part + i..s * part + i + 8];
            for (a, x) in acc.iter_mut().zip(c) {
                *a = a.wrapping_add(*x);
            }
        }
    }
    acc.iter()
        .fold(sum(&v[S * part..]), |a, x| a.wrapping_add(*x))
}

/// [`sum`] with a prefetch hint 6 KB ahead of every line read (x86-64; elsewhere, [`sum`]).
fn sum_prefetch(v: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let mut acc = [0u64; 8];
        for c in v.chunks_exact(8) {
            // SAFETY: `prefetcht0` is a hint that reads nothing and cannot fault; the pointer
            // (possibly past the buffer) is made with `wrapping_add` and never dereferenced.
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(c.as_ptr().wrapping_add(768).cast())
            };
            for (a, x) in acc.iter_mut().zip(c) {
                *a = a.wrapping_add(*x);
            }
        }
        acc.iter().fold(0, |a, x| a.wrapping_add(*x))
    }
    #[cfg(not(target_arch = "x86_64"))]
    sum(v)
}

/// One way of reading the buffer: returns its checksum.
type Read = fn(&[u64]) -> u64;

/// The best read bandwidth in GB/s of each access pattern (named), over `reps` passes on a
/// `mib` MiB buffer split across the threads of `pool`, and a checksum of what was read (so
/// that the reads cannot be skipped).
pub fn read_patterns(
    pool: &rayon::ThreadPool,
    mib: usize,
    reps: usize,
) -> (Vec<(&'static str, f64)>, u64) {
    let n = mib * (1 << 20) / 8;
    let buf: Vec<u64> = (0..n as u64).collect();
    let threads = pool.current_num_threads().max(1);
    let patterns: [(&'static str, Read); 4] = [
        ("1 stream", sum),
        ("2 streams", sum_streams::<2>),
        ("4 streams", sum_streams::<4>),
        ("1 stream + prefetch", sum_prefetch),
    ];
    let mut best = vec![0f64; patterns.len()];
    let mut check = 0u64;
    for _ in 0..reps {
        for (b, (_, read)) in best.iter_mut().zip(patterns) {
            let t = Instant::now();
            let s = pool.install(|| {
                buf.par_chunks(n.div_ceil(threads).max(1))
                    .map(read)
                    .reduce(|| 0, u64::wrapping_add)
            });
            *b = b.max((n * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
            check = check.wrapping_add(s);
        }
    }
    (patterns.iter().map(|p| p.0).zip(best).collect(), check)
}

/// The best of [`read_patterns`]. (`membw` prints every pattern and does not call this.)
#[allow(dead_code)]
pub fn read_gb_per_s(pool: &rayon::ThreadPool, mib: usize, reps: usize) -> f64 {
    read_patterns(pool, mib, reps)
        .0
        .iter()
        .fold(0f64, |a, p| a.max(p.1))
}
