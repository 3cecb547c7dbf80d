//! Prints the model's logits for given token ids, one row per position, as JSON:
//! `{"logits": [[...], ...]}`. With `--incremental` the tokens go through the KV cache one at
//! a time. This is how the model is checked against a reference implementation.
//!
//! ```sh
//! cargo run -p elmroute-openelm --release --example logits -- --model DIR --tokens 1,5,9
//! ```

use anyhow::{Context, Result};
use clap::Parser;
use elmroute_openelm::{Checkpoint, Config, DType, Device, Model, Tensor};

#[derive(Debug, Parser)]
#[command(about = "Print OpenELM logits for token ids as JSON")]
struct Args {
    /// Model directory (config.json + model.safetensors or shards).
    #[arg(long)]
    model: std::path::PathBuf,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    tokens: Vec<u32>,
    /// Feed the tokens one by one through the KV cache.
    #[arg(long)]
    incremental: bool,
    /// Run dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dtype: DType = args
        .dtype
        .parse()
        .map_err(|e| anyhow::anyhow!("--dtype {}: {e:?}", args.dtype))?;
    let device = Device::Cpu;
    let config = Config::from_file(args.model.join("config.json"))?;
    let checkpoint = Checkpoint::from_dir(&args.model)?;
    let mut model = Model::load(&config, &checkpoint, dtype, &device, |_| {})?;

    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(args.tokens.len());
    if args.incremental {
        for (pos, &t) in args.tokens.iter().enumerate() {
            let ids = Tensor::new(&[t], &device)?;
            let logits = model.forward(&ids, pos)?;
            rows.extend(logits.squeeze(0)?.to_vec2::<f32>()?);
        }
    } else {
        let ids = Tensor::new(args.tokens.as_slice(), &device)?;
        rows = model.forward(&ids, 0)?.squeeze(0)?.to_vec2::<f32>()?;
    }
    let out = serde_json::json!({ "logits": rows });
    println!("{}", serde_json::to_string(&out).context("serialise")?);
    Ok(())
}
