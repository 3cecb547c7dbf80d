//! Memory read bandwidth, shared by the `membw` and `bench` examples: the bound that
//! decoding speed is measured against (weight bytes per token x tokens/s).

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

/// Best read bandwidth in GB/s over `reps` passes of a `mib` MiB buffer split across the
/// threads of `pool`, and a checksum of what was read (so the reads cannot be skipped).
pub fn read_gb_per_s(pool: &rayon::ThreadPool, mib: usize, reps: usize) -> (f64, u64) {
    let n = mib * (1 << 20) / 8;
    let buf: Vec<u64> = (0..n as u64).collect();
    let threads = pool.current_num_threads().max(1);
    let mut best = 0f64;
    let mut check = 0u64;
    for _ in 0..reps {
        let t = Instant::now();
        let s = pool.install(|| {
            buf.par_chunks(n.div_ceil(threads).max(1))
                .map(sum)
                .reduce(|| 0, u64::wrapping_add)
        });
        best = best.max((n * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
        check = check.wrapping_add(s);
    }
    (best, check)
}
