//! Memory read bandwidth of this machine: streams a buffer much larger than the caches with
//! 1 and 2 threads (rayon), in several access patterns, and prints each and the best GB/s:
//! the bound that decoding speed is measured against (weight bytes per token x tokens/s).
//! Then the round trip of a cache line between two threads: the price of each meeting
//! between the threads of a decode step (on this VM, 50-190 ns while memory read about
//! 45 GB/s, and 360-430 ns while it read 70-80 GB/s: the two vCPUs then sit on different
//! dies).
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
    let (round_trip, handoff) = core_to_core(args.reps);
    println!(
        "core to core: {round_trip:.0} ns a cache line's round trip, {handoff:.0} ns to hand 8 KB over and back (best of {})",
        args.reps.max(1)
    );
    Ok(())
}

/// The best over `reps` tries of: the round trip of one cache line between two threads
/// (each waits for the other's write, then writes), and the time for one thread to write
/// 8 KB that the other then reads, signalled both ways; in ns.
fn core_to_core(reps: usize) -> (f64, f64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    const TRIPS: u64 = 20_000;
    const WORDS: usize = 1024;
    let flag = AtomicU64::new(0);
    let words: Vec<AtomicU64> = (0..WORDS).map(|_| AtomicU64::new(0)).collect();
    let wait_for = |v: u64| {
        while flag.load(Ordering::Acquire) != v {
            std::hint::spin_loop();
        }
    };
    let (mut round_trip, mut handoff) = (f64::MAX, f64::MAX);
    for _ in 0..reps.max(1) {
        flag.store(0, Ordering::Release);
        // Turn `2i + 1` is this thread's signal, `2i + 2` the other's answer.
        let (a, b) = std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..2 * TRIPS {
                    wait_for(2 * i + 1);
                    if i >= TRIPS {
                        let sum = words
                            .iter()
                            .fold(0u64, |a, w| a.wrapping_add(w.load(Ordering::Relaxed)));
                        std::hint::black_box(sum);
                    }
                    flag.store(2 * i + 2, Ordering::Release);
                }
            });
            let start = std::time::Instant::now();
            for i in 0..TRIPS {
                flag.store(2 * i + 1, Ordering::Release);
                wait_for(2 * i + 2);
            }
            let a = start.elapsed().as_nanos() as f64 / TRIPS as f64;
            let start = std::time::Instant::now();
            for i in TRIPS..2 * TRIPS {
                for w in &words {
                    w.store(i, Ordering::Relaxed);
                }
                flag.store(2 * i + 1, Ordering::Release);
                wait_for(2 * i + 2);
            }
            (a, start.elapsed().as_nanos() as f64 / TRIPS as f64)
        });
        round_trip = round_trip.min(a);
        handoff = handoff.min(b);
    }
    (round_trip, handoff)
}
