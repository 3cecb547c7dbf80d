//! Memory read bandwidth of this machine: streams a buffer much larger than the caches with
//! 1 and 2 threads (rayon) and prints GB/s, the bound that decoding speed is measured against
//! (weight bytes per token x tokens/s).
//!
//! ```sh
//! cargo run -p elmroute-openelm --release --example membw -- --mib 1024 --reps 5
//! ```

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use rayon::prelude::*;

#[derive(Debug, Parser)]
#[command(about = "Measure memory read bandwidth")]
struct Args {
    /// Buffer size in MiB.
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// Passes per thread count; the best is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

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

fn main() -> Result<()> {
    let args = Args::parse();
    let n = args.mib * (1 << 20) / 8;
    let buf: Vec<u64> = (0..n as u64).collect();
    let bytes = (n * 8) as f64;
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let mut best = 0f64;
        let mut check = 0u64;
        for _ in 0..args.reps {
            let t = Instant::now();
            let s = pool.install(|| {
                buf.par_chunks(n.div_ceil(threads))
                    .map(sum)
                    .reduce(|| 0, u64::wrapping_add)
            });
            best = best.max(bytes / t.elapsed().as_secs_f64() / 1e9);
            check = check.wrapping_add(s);
        }
        println!(
            "{threads} thread(s): {best:.1} GB/s read ({} MiB, best of {}; checksum {check:x})",
            args.mib, args.reps
        );
    }
    Ok(())
}
