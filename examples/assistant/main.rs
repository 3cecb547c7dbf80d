//! The elmroute assistant: chat with a model that answers on this device or in the cloud,
//! and see, under every answer, where it ran and why.
//!
//! ```text
//! # Try it with no download and no API key: a tiny random on-device model (noise answers).
//! cargo run --release --example assistant -- --demo
//! # The real OpenELM-270M-Instruct (from the Hugging Face cache, or downloaded), and a cloud:
//! OPENAI_API_KEY=... cargo run --release --example assistant -- \
//!     --remote-url https://api.openai.com/v1 --remote-model gpt-4o-mini
//! # A local OpenAI-compatible server as the "cloud" (Ollama, vLLM, llama.cpp's server):
//! cargo run --release --example assistant -- --model-dir models/OpenELM-270M-Instruct \
//!     --remote-url http://127.0.0.1:11434/v1 --remote-model llama3.2
//! ```
//!
//! Scripts: `--prompt "..."` answers once (text on stdout, route badge on stderr); `--json`
//! prints the completion and its route as one JSON object. `--explain` and `--explain-jsonl`
//! print routing decisions without running any model.
//!
//! Exit codes: 0 answered, 1 failed (a backend error, no model available), 2 bad input
//! (flags, policy file, empty prompt), 3 no route (every backend refused the request).

mod chat;
mod explain;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use elmroute::{ChatRequest, ManualDevice, Mode, ThermalLevel};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "assistant",
    about = "elmroute's assistant: chat with OpenELM on this device or an OpenAI-compatible cloud, routed per request",
    after_help = "Exit codes: 0 answered, 1 failed, 2 bad input, 3 no route."
)]
/// The command line.
pub struct Args {
    /// Policy file (TOML).
    #[arg(long, default_value = "policies/balanced.toml")]
    policy: PathBuf,
    /// An OpenELM model directory (config.json, model.safetensors or shards, tokenizer.json).
    /// Wins over --model.
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// The model to find in the Hugging Face cache, or download.
    #[arg(
        long,
        value_name = "HUB_ID",
        default_value = "apple/OpenELM-270M-Instruct"
    )]
    model: String,
    /// Where the tokenizer comes from when the model repository has none (OpenELM's have none).
    #[arg(long, value_name = "HUB_ID", default_value = elmroute::openelm::hub::DEFAULT_TOKENIZER_REPO)]
    tokenizer_repo: String,
    /// Run with a tiny random-weight OpenELM and a project-made tokenizer: noise answers, real
    /// routing, streaming and fallback, no download.
    #[arg(long, conflicts_with = "model_dir")]
    demo: bool,
    /// The dtype the on-device model runs in: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: elmroute::openelm::DType,
    /// Quantize the on-device model's weights as it loads: q8_0, q4_0, q4_k, ... (smaller
    /// and faster; q8_0 stays closest to the float model).
    #[arg(long, value_name = "TYPE", value_parser = parse_quant)]
    quant: Option<elmroute::openelm::GgmlDType>,
    /// An OpenELM GGUF file (as llama.cpp writes them) for the on-device model; its own
    /// tokenizer is used unless --tokenizer is given. Wins over --model-dir and --model.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["demo", "model_dir"])]
    gguf: Option<PathBuf>,
    /// A tokenizer.json for --gguf.
    #[arg(long, value_name = "FILE", requires = "gguf")]
    tokenizer: Option<PathBuf>,
    /// An OpenAI-compatible base URL for the cloud side (e.g. http://127.0.0.1:8000/v1).
    /// Default: the policy's [remote] table; none means no cloud.
    #[arg(long, value_name = "URL")]
    remote_url: Option<String>,
    /// The cloud model id (with --remote-url).
    #[arg(long, value_name = "NAME")]
    remote_model: Option<String>,
    /// The environment variable holding the cloud API key (with --remote-url).
    #[arg(long, value_name = "VAR", default_value = "OPENAI_API_KEY")]
    remote_key_env: String,
    /// Answer this prompt once and exit.
    #[arg(long = "prompt", value_name = "TEXT")]
    prompt_flag: Option<String>,
    /// With a one-shot prompt: print the completion and its route as one JSON object.
    #[arg(long)]
    json: bool,
    /// Print the routing decision for the prompt as one JSON object; run nothing.
    #[arg(long)]
    explain: bool,
    /// Print one decision per line of FILE (`{"prompt": "..."}` per line); run nothing.
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
    /// Context window assumed for the on-device model by --explain, in tokens.
    #[arg(long, default_value_t = 2048)]
    local_context: usize,
    /// Most tokens to generate (default 256; 48 with --demo).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling temperature (0 is greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Sampling seed.
    #[arg(long)]
    seed: Option<u64>,
    /// The chat's history file (default ~/.elmroute_history).
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// The prompt (same as --prompt).
    prompt: Vec<String>,
}

/// Input the user has to fix: exit code 2.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

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

fn parse_quant(s: &str) -> Result<elmroute::openelm::GgmlDType, String> {
    elmroute::openelm::parse_quant_type(s).map_err(|e| e.to_string())
}

/// A mode by its policy-file name.
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::ALL
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| format!("unknown mode `{s}`: expected auto, prefer_local, local_only, prefer_cloud or cloud_only"))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let policy = setup::load_policy(&args.policy)?;
    let device = ManualDevice::new(setup::device_state(&args));
    let cloud = setup::cloud(&args, &policy)?;
    let prompt = chat::prompt_of(&args)?;

    if args.explain || args.explain_jsonl.is_some() {
        let cloud_name = cloud
            .as_ref()
            .map(|c| elmroute::Backend::name(c).to_owned());
        let router = explain::router(policy, &device, args.local_context, cloud_name)?;
        if let Some(path) = &args.explain_jsonl {
            explain::jsonl(&router, path, args.mode)?;
            return Ok(());
        }
        let Some(prompt) = prompt else {
            return Err(BadInput("--explain needs a PROMPT".into()).into());
        };
        let mut request = ChatRequest::user(prompt);
        request.mode = args.mode;
        request.max_tokens = args.max_tokens;
        return explain::one(&router, &request);
    }
    if args.json && prompt.is_none() {
        return Err(BadInput("--json needs a prompt (--prompt TEXT)".into()).into());
    }

    let local = setup::local_model(&args)?;
    let cloud: Option<std::sync::Arc<dyn elmroute::Backend>> =
        cloud.map(|c| std::sync::Arc::new(c) as _);
    let router = setup::router(policy, &local.engine, cloud.as_ref(), &device)?;
    let mut session = chat::Session {
        policy_path: args.policy.clone(),
        mode: args.mode,
        args,
        router,
        device,
        local,
        cloud,
        history: Vec::new(),
        last_route: None,
    };
    match prompt {
        None => session.repl().await,
        Some(p) if session.args.json => {
            let completion = session.complete(p).await?;
            println!("{}", serde_json::to_string(&completion)?);
            Ok(())
        }
        Some(p) => session.answer_once(p).await,
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<BadInput>().is_some() {
            return 2;
        }
        if let Some(err) = cause.downcast_ref::<elmroute::Error>() {
            if err.is_no_route() {
                return 3;
            }
            if err.is_invalid_request() {
                return 2;
            }
        }
    }
    1
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
