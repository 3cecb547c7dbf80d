//! Memory read bandwidth of this machine: streams a buffer much larger than the caches with
//! 1 and 2 threads (rayon), in several access patterns, and prints each and the best GB/s:
//! the bound that decoding speed is measured against (weight bytes per token x tokens/s).
//!
//! ```sh
//! cargo run -p elmroute-openelm --release --example membw -- --mib 1024 --reps 5
//! ```

use anyhow::Result;
use clap::Parser;

#[path = "common/bandwidth.rs"]
mod bandwidth;

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

fn main() -> Result<()> {
    let args = Args::parse();
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let (patterns, check) = bandwidth::read_patterns(&pool, args.mib, args.reps);
        let best = patterns.iter().fold(0f64, |a, p| a.max(p.1));
        let each: Vec<String> = patterns
            .iter()
            .map(|(name, gbps)| format!("{name} {gbps:.1}"))
            .collect();
        println!(
            "{threads} thread(s): {best:.1} GB/s read ({}; {} MiB, best of {}; checksum {check:x})",
            each.join(", "),
            args.mib,
            args.reps
        );
    }
    Ok(())
}
