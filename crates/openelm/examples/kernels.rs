//! Throughput of the block kernels on one activation row (the decode step), in GB/s of
//! weights: a matrix that stays in cache (the kernel's own speed), many distinct small
//! matrices streamed from memory one call each (as a layer's projections are), and one large
//! matrix of the same total size (the cost of a call boundary is the difference), and the
//! small matrices again through the decode step's helper threads, one product after
//! another as a decode step runs its projections (what the boundaries between a step's
//! products cost the model). With `--prompt M`, also the prompt kernels: the cached matrix
//! against `M` activation rows at once, in activation rows (tokens) per second.
//!
//! ```sh
//! cargo run -p elmroute-openelm --release --example kernels -- --dtype q4_0
//! RAYON_NUM_THREADS=1 cargo run -p elmroute-openelm --release --example kernels
//! ```

use std::time::Instant;

use anyhow::Result;
use candle_core::quantized::QTensor;
use clap::Parser;
use elmroute_openelm::{BlockMatrix, Device, Tensor, decode_products, parse_quant_type};

#[derive(Debug, Parser)]
#[command(about = "Measure the Q8_0 / Q4_0 decode kernels")]
struct Args {
    /// q8_0, q4_0, q4_k or q6_k (q6_k with AVX-512 only).
    #[arg(long, default_value = "q4_0")]
    dtype: String,
    /// Rows of each small matrix (output width).
    #[arg(long, default_value_t = 1152)]
    rows: usize,
    /// Columns (input width), a multiple of 32.
    #[arg(long, default_value_t = 1280)]
    cols: usize,
    /// Total MiB of weights streamed per pass: well past the last-level cache (32 MB here),
    /// or part of each pass comes from it and "from memory" reads faster than memory.
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Timed passes; the best is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Also time the cached matrix against this many activation rows at once (the prompt
    /// kernels); 0 skips it.
    #[arg(long, default_value_t = 0)]
    prompt: usize,
}

fn matrix(rows: usize, cols: usize, dtype: elmroute_openelm::GgmlDType) -> Result<BlockMatrix> {
    let t = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu)?;
    Ok(BlockMatrix::from_qtensor(
        "w",
        &QTensor::quantize(&t, dtype)?,
    )?)
}

/// Best GB/s of `reps` passes of `f`, which reads `bytes` of weights.
fn best_gbps(reps: usize, bytes: usize, mut f: impl FnMut()) -> f64 {
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            bytes as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0f64, f64::max)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dtype = parse_quant_type(&args.dtype)?;
    anyhow::ensure!(
        BlockMatrix::supports(dtype),
        "--dtype {}: the block kernels take q8_0, q4_0, q4_k and (with AVX-512) q6_k",
        args.dtype
    );
    let (rows, cols) = (args.rows.max(1), args.cols);
    let one = matrix(rows, cols, dtype)?;
    let count = ((args.mib << 20) / one.size_in_bytes().max(1)).max(1);
    let small: Vec<BlockMatrix> = (0..count)
        .map(|_| matrix(rows, cols, dtype))
        .collect::<Result<_>>()?;
    let large = matrix(rows * count, cols, dtype)?;
    // The same small matrices for the decode step's helpers, which take shared ones.
    let shared: Vec<std::sync::Arc<BlockMatrix>> =
        small.into_iter().map(std::sync::Arc::new).collect();
    let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0f32; rows * count];
    // Run on the pool, as the model does: the caller's thread takes part in the work.
    let (cached, streamed, single, stepped) = rayon::scope(|_| {
        let cached = best_gbps(args.reps, one.size_in_bytes() * 20, || {
            for _ in 0..20 {
                one.matmul(&x, 1, &mut y[..rows]);
            }
        });
        let total: usize = shared.iter().map(|m| m.size_in_bytes()).sum();
        let streamed = best_gbps(args.reps, total, || {
            for m in &shared {
                m.matmul(&x, 1, &mut y[..rows]);
            }
        });
        let single = best_gbps(args.reps, large.size_in_bytes(), || {
            large.matmul(&x, 1, &mut y);
        });
        let stepped = decode_products(&shared, &x, args.reps)
            .0
            .iter()
            .map(|t| total as f64 / t.as_secs_f64() / 1e9)
            .fold(0f64, f64::max);
        (cached, streamed, single, stepped)
    });
    println!(
        "{} {rows}x{cols}, {} threads: in cache {cached:.1} GB/s; {count} matrices from memory {streamed:.1} GB/s ({:.1} us per call); one {}x{cols} matrix {single:.1} GB/s; the small ones through the decode helpers {stepped:.1} GB/s ({:.1} us per product)",
        args.dtype,
        rayon::current_num_threads(),
        one.size_in_bytes() as f64 / streamed / 1e3,
        rows * count,
        one.size_in_bytes() as f64 / stepped / 1e3
    );
    if args.prompt > 0 {
        let m = args.prompt;
        let xm: Vec<f32> = (0..m * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut ym = vec![0f32; m * rows];
        let passes = 4;
        // GB/s of weights per activation row: rows per second times the matrix's bytes.
        let per_row = rayon::scope(|_| {
            best_gbps(args.reps, one.size_in_bytes() * m * passes, || {
                for _ in 0..passes {
                    one.matmul(&xm, m, &mut ym);
                }
            })
        });
        println!(
            "prompt of {m} rows, in cache: {:.0} rows/s ({per_row:.0} GB/s of weights per row)",
            per_row * 1e9 / one.size_in_bytes() as f64
        );
    }
    Ok(())
}
