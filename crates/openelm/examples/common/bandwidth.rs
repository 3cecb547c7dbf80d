//! Memory read bandwidth, shared by the `membw` and `bench` examples: the bound that
//! decoding speed is measured against (weight bytes per token x tokens/s).
//!
//! One access pattern understates what the memory system delivers, so the buffer is read
//! in several ways and the best counts: one sequential stream per thread; two and four
//! interleaved streams per thread (more reads in flight from the hardware prefetchers);
//! and on x86-64 one stream with software prefetch hints 6 KB ahead (as the decode kernels
//! use). On Linux the best two are also run on a buffer advised to be backed by 2 MiB
//! pages: a 4 KB page costs a TLB miss (in a VM, a nested page walk) every 4 KB, and on
//! this machine's VM the huge pages read 5-10% faster. (The model's weights stay in
//! ordinary pages: in huge pages they decoded no faster, measured in pairs.)

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
    let mut patterns: Vec<(&'static str, Read, Pages)> = vec![
        ("1 stream", sum, Pages::Small),
        ("2 streams", sum_streams::<2>, Pages::Small),
        ("4 streams", sum_streams::<4>, Pages::Small),
        ("1 stream + prefetch", sum_prefetch, Pages::Small),
    ];
    if cfg!(target_os = "linux") {
        patterns.push(("2 streams, 2 MiB pages", sum_streams::<2>, Pages::Huge));
        patterns.push((
            "1 stream + prefetch, 2 MiB pages",
            sum_prefetch,
            Pages::Huge,
        ));
    }
    let mut best = vec![0f64; patterns.len()];
    let mut check = 0u64;
    for pages in [Pages::Small, Pages::Huge] {
        if !patterns.iter().any(|p| p.2 == pages) {
            continue;
        }
        // One buffer at a time: two would need twice the memory.
        let buf: Box<dyn std::ops::Deref<Target = [u64]>> = match pages {
            Pages::Small => Box::new((0..n as u64).collect::<Vec<u64>>()),
            Pages::Huge => match HugeBuffer::new(n) {
                Some(b) => Box::new(b),
                // No mapping or no advice: the huge-page patterns are left out.
                None => {
                    patterns.retain(|p| p.2 != Pages::Huge);
                    best.truncate(patterns.len());
                    continue;
                }
            },
        };
        let buf: &[u64] = &buf;
        let threads = pool.current_num_threads().max(1);
        for _ in 0..reps {
            for (b, (_, read, _)) in best.iter_mut().zip(&patterns).filter(|(_, p)| p.2 == pages) {
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
    }
    (patterns.iter().map(|p| p.0).zip(best).collect(), check)
}

/// The page size a buffer is read from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pages {
    /// Whatever the allocator gives (4 KB pages here).
    Small,
    /// An anonymous mapping advised to be backed by 2 MiB pages (transparent huge pages; a
    /// hint the OS may decline).
    Huge,
}

/// `n` words in an anonymous mapping with the huge-page advice, written before any read
/// (the advice has to come before the pages are first touched).
struct HugeBuffer {
    map: memmap2::MmapMut,
}

impl HugeBuffer {
    fn new(n: usize) -> Option<Self> {
        let mut map = memmap2::MmapMut::map_anon(n * 8).ok()?;
        #[cfg(target_os = "linux")]
        map.advise(memmap2::Advice::HugePage).ok()?;
        for (i, w) in map.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&(i as u64).to_ne_bytes());
        }
        Some(Self { map })
    }
}

impl std::ops::Deref for HugeBuffer {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        // A fresh mapping is page-aligned and its length a multiple of 8: the cast cannot
        // fail (an empty slice if it ever did).
        bytemuck::try_cast_slice(&self.map).unwrap_or(&[])
    }
}

/// The best of [`read_patterns`]. (`membw` prints every pattern and does not call this.)
#[allow(dead_code)]
pub fn read_gb_per_s(pool: &rayon::ThreadPool, mib: usize, reps: usize) -> f64 {
    read_patterns(pool, mib, reps)
        .0
        .iter()
        .fold(0f64, |a, p| a.max(p.1))
}
