//! Speed of one of the published OpenELM sizes on this machine, with random weights of the
//! real shapes (no download), or of a GGUF file: prompt tokens/s, generated tokens/s, peak
//! memory, and the weight bytes one generated token reads.
//!
//! ```sh
//! cargo run -p elmroute-openelm --release --example bench -- --size 270M --dtype f32 --prompt 128 --gen 64
//! cargo run -p elmroute-openelm --release --example bench -- --size 270M --quant q8_0
//! cargo run -p elmroute-openelm --release --example bench -- --gguf /tmp/openelm270m-q4_0.gguf --bandwidth-mib 512
//! ```

use std::time::Instant;

#[path = "common/bandwidth.rs"]
mod bandwidth;

use anyhow::Result;
use clap::Parser;
use elmroute_openelm::{
    Checkpoint, Config, DType, Device, Gguf, Model, OfficialSize, Tensor, argmax, parse_quant_type,
    random_tensors,
};

#[derive(Debug, Parser)]
#[command(about = "Benchmark OpenELM prompt and generation speed on random weights")]
struct Args {
    /// Model size: 270M, 450M, 1_1B or 3B.
    #[arg(long, default_value = "270M")]
    size: String,
    /// Run dtype: f32, f16 or bf16 (activations, and weights that are not quantized).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Quantize the random weights at load: q8_0, q4_0, q4_k, q6_k, ... (as a safetensors
    /// checkpoint would be with `LoadOptions::quantize`).
    #[arg(long, conflicts_with = "gguf")]
    quant: Option<String>,
    /// Benchmark this OpenELM GGUF file instead of random weights (`--size` is ignored).
    #[arg(long)]
    gguf: Option<std::path::PathBuf>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Tokens to generate.
    #[arg(long = "gen", default_value_t = 64)]
    gen_tokens: usize,
    /// Timed repetitions (each: prompt, then generation from an empty cache); the best is
    /// reported.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// After the timed runs (and after reading peak memory), measure this machine's memory
    /// read bandwidth with the same number of threads on a buffer of this many MiB, and
    /// report the generated tokens' weight traffic as a fraction of it. 0: off.
    #[arg(long, default_value_t = 0)]
    bandwidth_mib: usize,
    /// KV cache dtype: f32 or f16 (default: the model's own choice, f16 for quantized
    /// weights in f32 on the CPU).
    #[arg(long)]
    kv_cache: Option<String>,
}

/// Peak resident memory of this process in MiB (VmHWM), when the OS reports it.
fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dtype: DType = args
        .dtype
        .parse()
        .map_err(|e| anyhow::anyhow!("--dtype {}: {e:?}", args.dtype))?;
    let quant = args.quant.as_deref().map(parse_quant_type).transpose()?;
    anyhow::ensure!(
        args.prompt > 0 && args.gen_tokens > 0 && args.reps > 0,
        "--prompt, --gen and --reps must be positive"
    );
    let device = Device::Cpu;

    let t0 = Instant::now();
    let (mut model, label) = match &args.gguf {
        Some(path) => {
            let mut gguf = Gguf::open(path)?;
            let model = gguf.load_model(dtype, &device, |_| {})?;
            (model, format!("GGUF {}", path.display()))
        }
        None => {
            let size: OfficialSize = args.size.parse()?;
            let config = Config::official(size);
            let model = match quant {
                None => {
                    let tensors = random_tensors(&config, dtype, &device)?;
                    Model::from_tensors(&config, tensors, dtype, &device)?
                }
                Some(q) => {
                    // Through a safetensors file, as a user's checkpoint would load.
                    let dir = tempdir()?;
                    let tensors = random_tensors(&config, DType::F32, &device)?;
                    let file = dir.join("model.safetensors");
                    candle_core::safetensors::save(&tensors, &file)?;
                    drop(tensors);
                    let ckpt = Checkpoint::open(&[file])?;
                    let m = Model::load_quantized(&config, &ckpt, Some(q), dtype, &device, |_| {})?;
                    drop(ckpt);
                    let _ = std::fs::remove_dir_all(&dir);
                    m
                }
            };
            (model, format!("OpenELM-{size} random"))
        }
    };
    let build_s = t0.elapsed().as_secs_f64();
    if let Some(kv) = &args.kv_cache {
        let kv: DType = kv
            .parse()
            .map_err(|e| anyhow::anyhow!("--kv-cache {kv}: {e:?}"))?;
        model.set_kv_cache_dtype(kv)?;
    }
    let kv_dtype = format!("{:?}", model.kv_cache_dtype()).to_lowercase();
    let config = model.config().clone();
    anyhow::ensure!(
        args.prompt + args.gen_tokens <= config.max_context_length,
        "prompt + gen exceed the context of {}",
        config.max_context_length
    );

    // Deterministic pseudo-random prompt ids (BOS first).
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let prompt: Vec<u32> = std::iter::once(1)
        .chain((1..args.prompt).map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            3 + (state % (config.vocab_size as u64 - 3)) as u32
        }))
        .collect();

    // Warm-up: one short pass so one-time allocations (and weight repacking) are not timed.
    model.forward_tokens(&prompt[..prompt.len().min(4)])?;
    model.forward_tokens(&[prompt[0]])?;
    model.clear_kv_cache();

    let mut best = (0f64, 0f64);
    for _ in 0..args.reps {
        model.clear_kv_cache();
        let t = Instant::now();
        let ids = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
        let logits = model.forward_last(&ids, 0)?;
        let prompt_s = t.elapsed().as_secs_f64();
        let mut next = argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);

        let t = Instant::now();
        // On a pool thread, as `generate` runs its loop: each token's pass then starts at
        // once, with the decode helpers still serving from the token before.
        rayon::scope(|_| -> Result<()> {
            for _ in 0..args.gen_tokens {
                let logits = model.forward_tokens(&[next])?;
                next = argmax(&logits);
            }
            Ok(())
        })?;
        let gen_s = t.elapsed().as_secs_f64();
        best.0 = best.0.max(args.prompt as f64 / prompt_s);
        best.1 = best.1.max(args.gen_tokens as f64 / gen_s);
    }
    let (prompt_tps, gen_tps) = best;
    let peak = peak_mib();
    let gen_gbps = model.weight_bytes() as f64 * gen_tps / 1e9;
    let read_gbps = if args.bandwidth_mib > 0 {
        let pool = rayon::ThreadPoolBuilder::new().build()?;
        Some(bandwidth::read_gb_per_s(&pool, args.bandwidth_mib, 5))
    } else {
        None
    };
    let weight_bytes = model.weight_bytes();
    let types = model.weight_types();
    if args.json {
        let out = serde_json::json!({
            "model": label, "dtype": args.dtype, "quant": args.quant, "weight_types": types,
            "params": config.num_parameters(), "weight_bytes": weight_bytes,
            "prompt_tokens": args.prompt, "gen_tokens": args.gen_tokens,
            "prompt_tokens_per_s": prompt_tps, "gen_tokens_per_s": gen_tps,
            "gen_weight_gb_per_s": gen_gbps,
            "read_gb_per_s": read_gbps, "bound_fraction": read_gbps.map(|r| gen_gbps / r),
            "peak_rss_mib": peak, "build_s": build_s, "kv_cache": kv_dtype,
        });
        println!("{out}");
    } else {
        println!(
            "{label} {} ({:.1} M params, weights {types:?}, {:.1} MiB read per token, KV cache {kv_dtype}, built in {build_s:.1} s)",
            args.dtype,
            config.num_parameters() as f64 / 1e6,
            weight_bytes as f64 / (1 << 20) as f64
        );
        println!(
            "prompt:    {} tokens = {prompt_tps:.1} tokens/s (best of {})",
            args.prompt, args.reps
        );
        println!(
            "generated: {} tokens = {gen_tps:.2} tokens/s ({:.1} GB/s of weights)",
            args.gen_tokens, gen_gbps
        );
        match peak {
            Some(mib) => println!("peak memory: {mib:.0} MiB (VmHWM)"),
            None => println!("peak memory: unknown (no /proc/self/status)"),
        }
        if let Some(read) = read_gbps {
            println!(
                "memory read bandwidth: {read:.1} GB/s ({} threads, best of 5, after the runs); generation reads weights at {:.0}% of it",
                rayon::current_num_threads(),
                100.0 * gen_gbps / read
            );
        }
    }
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("openelm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
