//! The elmroute assistant.
//!
//! `--explain` prints where a prompt would be answered and why, as one JSON object, with no
//! model and no network:
//!
//! ```text
//! cargo run --release --example assistant -- --policy policies/balanced.toml --explain \
//!     --battery 0.15 --thermal serious "Summarise my notes from today"
//! ```
//!
//! `--explain-jsonl FILE` reads one JSON object per line (`{"prompt": "..."}`, with optional
//! `"max_tokens"`, `"mode"` and `"sensitivity"`) and prints one decision per line.
//!
//! With `--model DIR` (an OpenELM checkpoint in Hugging Face layout with a `tokenizer.json`)
//! and no `--explain`, it answers the prompt on the device, streaming the text to stdout and
//! the route to stderr.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use elmroute::{
    Battery, ChatRequest, DeclaredBackend, DeviceState, LoadOptions, Mode, Network, OpenElm,
    Policy, Route, Router, Sensitivity, StreamEvent, ThermalLevel,
};
use futures::StreamExt;
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "assistant",
    about = "elmroute's assistant: route prompts between OpenELM on this device and a cloud provider"
)]
struct Args {
    /// Policy file (TOML).
    #[arg(long, default_value = "policies/balanced.toml")]
    policy: PathBuf,
    /// Print the routing decision for PROMPT as one JSON object; generate nothing.
    #[arg(long)]
    explain: bool,
    /// Print one decision per line of FILE (`{"prompt": "..."}` per line).
    #[arg(long, value_name = "FILE")]
    explain_jsonl: Option<PathBuf>,
    /// Battery level, 0..=1 (default: no battery, mains power).
    #[arg(long, value_parser = parse_unit)]
    battery: Option<f32>,
    /// The battery is charging.
    #[arg(long)]
    charging: bool,
    /// Low-power mode is on.
    #[arg(long)]
    low_power: bool,
    /// Thermal level: nominal, fair, serious or critical.
    #[arg(long, default_value = "nominal")]
    thermal: ThermalLevel,
    /// The network is offline.
    #[arg(long)]
    offline: bool,
    /// The network is metered.
    #[arg(long, conflicts_with = "offline")]
    metered: bool,
    /// Overrides the policy's mode.
    #[arg(long, value_parser = parse_mode)]
    mode: Option<Mode>,
    /// Context window of the on-device model, in tokens (when no --model is given).
    #[arg(long, default_value_t = 2048)]
    local_context: usize,
    /// An OpenELM model directory (config.json, model.safetensors or shards, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The dtype the model runs in: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: elmroute::openelm::DType,
    /// Most tokens to generate.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling temperature (0 is greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Sampling seed.
    #[arg(long)]
    seed: Option<u64>,
    /// The prompt.
    prompt: Vec<String>,
}

fn parse_unit(s: &str) -> Result<f32, String> {
    let v: f32 = s
        .parse()
        .map_err(|_| format!("expected a number from 0 to 1, found `{s}`"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("expected a number from 0 to 1, found {v}"))
    }
}

fn parse_dtype(s: &str) -> Result<elmroute::openelm::DType, String> {
    use elmroute::openelm::DType;
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(format!(
            "unknown dtype `{other}`: expected f32, bf16 or f16"
        )),
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::ALL
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| format!("unknown mode `{s}`: expected auto, prefer_local, local_only, prefer_cloud or cloud_only"))
}

/// One line of `--explain-jsonl` input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    prompt: String,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    sensitivity: Option<Sensitivity>,
}

fn device(args: &Args) -> DeviceState {
    DeviceState {
        battery: args.battery.map(|level| Battery {
            level,
            charging: args.charging,
        }),
        low_power: args.low_power,
        thermal: args.thermal,
        network: if args.offline {
            Network::Offline
        } else if args.metered {
            Network::Metered
        } else {
            Network::Online
        },
    }
}

fn explain_json(route: &Route) -> anyhow::Result<String> {
    Ok(serde_json::to_string(route)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let policy = Policy::from_file(&args.policy)?;
    // Without a model, declared backends: the decision needs to know what the device and the
    // cloud could do, not to run them, so explain works with no model and no network.
    let mut builder = Router::builder().policy(policy).device(device(&args));
    let generating = args.model.is_some() && !args.explain && args.explain_jsonl.is_none();
    match &args.model {
        Some(dir) => {
            eprintln!("loading {} ...", dir.display());
            let started = std::time::Instant::now();
            let engine = OpenElm::from_dir(dir, LoadOptions::default().with_dtype(args.dtype))
                .with_context(|| format!("cannot load the model in {}", dir.display()))?;
            eprintln!("loaded in {:.1} s", started.elapsed().as_secs_f32());
            builder = builder.local(engine);
        }
        None => builder = builder.local(DeclaredBackend::local("openelm", args.local_context)),
    }
    if !generating {
        builder = builder.remote(DeclaredBackend::remote("cloud"));
    }
    let router = builder.build()?;

    if let Some(path) = &args.explain_jsonl {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut failures = 0usize;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line =
                line.with_context(|| format!("{}: cannot read line {}", path.display(), i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let decided = serde_json::from_str::<Line>(&line)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{}:{}: expected {{\"prompt\": \"...\"}}: {e}",
                        path.display(),
                        i + 1
                    )
                })
                .and_then(|l| {
                    let mut req = ChatRequest::user(l.prompt);
                    req.max_tokens = l.max_tokens;
                    req.mode = l.mode.or(args.mode);
                    req.sensitivity = l.sensitivity.unwrap_or_default();
                    Ok(router.decide(&req)?)
                });
            match decided {
                Ok(route) => writeln!(out, "{}", explain_json(&route)?)?,
                Err(e) => {
                    // Keep one output line per input line so outputs stay aligned.
                    failures += 1;
                    eprintln!("{e:#}");
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({ "line": i + 1, "error": format!("{e:#}") })
                    )?;
                }
            }
        }
        if failures > 0 {
            eprintln!("{failures} line(s) could not be decided");
        }
        return Ok(());
    }

    let prompt = args.prompt.join(" ");
    if prompt.trim().is_empty() {
        bail!("give a PROMPT (or --explain-jsonl FILE); see --help");
    }
    let mut request = ChatRequest::user(prompt);
    request.mode = args.mode;
    request.max_tokens = args.max_tokens;
    request.temperature = args.temperature;
    request.seed = args.seed;
    if args.explain {
        let route = router.decide(&request)?;
        println!("{}", explain_json(&route)?);
        return Ok(());
    }
    if !generating {
        let route = router.decide(&request)?;
        println!("{}", route.explain());
        bail!(
            "nothing can answer: give --model DIR to answer on the device (no cloud provider is wired into this build yet), or --explain for the JSON decision"
        );
    }
    let mut stream = router.stream(request).await?;
    let stdout = std::io::stdout();
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Delta(text) => {
                let mut out = stdout.lock();
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            StreamEvent::Done {
                usage,
                finish_reason,
                route,
                ..
            } => {
                println!();
                eprintln!(
                    "[{} tokens in, {} out, {:?}; {}]",
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    finish_reason,
                    route.explain()
                );
            }
        }
    }
    Ok(())
}
