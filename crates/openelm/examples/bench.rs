//! Speed of one of the published OpenELM sizes on this machine, with random weights of the
//! real shapes (no download): prompt tokens/s, generated tokens/s and peak memory.
//!
//! ```sh
//! cargo run -p elmroute-openelm --release --example bench -- --size 270M --dtype f32 --prompt 128 --gen 64
//! ```

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use elmroute_openelm::{Config, DType, Device, Model, OfficialSize, Tensor, random_tensors};

#[derive(Debug, Parser)]
#[command(about = "Benchmark OpenELM prompt and generation speed on random weights")]
struct Args {
    /// Model size: 270M, 450M, 1_1B or 3B.
    #[arg(long, default_value = "270M")]
    size: String,
    /// Run dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Tokens to generate.
    #[arg(long = "gen", default_value_t = 64)]
    gen_tokens: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
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
    let size: OfficialSize = args.size.parse()?;
    let dtype: DType = args
        .dtype
        .parse()
        .map_err(|e| anyhow::anyhow!("--dtype {}: {e:?}", args.dtype))?;
    anyhow::ensure!(
        args.prompt > 0 && args.gen_tokens > 0,
        "--prompt and --gen must be positive"
    );
    let device = Device::Cpu;
    let config = Config::official(size);
    anyhow::ensure!(
        args.prompt + args.gen_tokens <= config.max_context_length,
        "prompt + gen exceed the context of {}",
        config.max_context_length
    );

    let t0 = Instant::now();
    let tensors = random_tensors(&config, dtype, &device)?;
    let mut model = Model::from_tensors(&config, tensors, dtype, &device)?;
    let build_s = t0.elapsed().as_secs_f64();

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

    // Warm-up: one short pass so one-time allocations are not timed.
    model.forward_tokens(&prompt[..prompt.len().min(4)])?;
    model.clear_kv_cache();

    let t = Instant::now();
    let ids = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
    let logits = model.forward_last(&ids, 0)?;
    let prompt_s = t.elapsed().as_secs_f64();
    let mut next = argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);

    let t = Instant::now();
    for _ in 0..args.gen_tokens {
        let logits = model.forward_tokens(&[next])?;
        next = argmax(&logits);
    }
    let gen_s = t.elapsed().as_secs_f64();

    let prompt_tps = args.prompt as f64 / prompt_s;
    let gen_tps = args.gen_tokens as f64 / gen_s;
    let peak = peak_mib();
    if args.json {
        let out = serde_json::json!({
            "size": size.as_str(), "dtype": args.dtype, "params": config.num_parameters(),
            "prompt_tokens": args.prompt, "gen_tokens": args.gen_tokens,
            "prompt_tokens_per_s": prompt_tps, "gen_tokens_per_s": gen_tps,
            "peak_rss_mib": peak, "build_s": build_s,
        });
        println!("{out}");
    } else {
        println!(
            "OpenELM-{} {} ({:.1} M params, random weights built in {build_s:.1} s)",
            size,
            args.dtype,
            config.num_parameters() as f64 / 1e6
        );
        println!(
            "prompt:    {} tokens in {prompt_s:.3} s = {prompt_tps:.1} tokens/s",
            args.prompt
        );
        println!(
            "generated: {} tokens in {gen_s:.3} s = {gen_tps:.2} tokens/s",
            args.gen_tokens
        );
        match peak {
            Some(mib) => println!("peak memory: {mib:.0} MiB (VmHWM)"),
            None => println!("peak memory: unknown (no /proc/self/status)"),
        }
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}
