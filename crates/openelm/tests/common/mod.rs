//! Shared test helpers: fixture paths and small engines.
#![allow(dead_code)]

use std::path::PathBuf;

use elmroute_openelm::{Config, DType, Device, LoadOptions, Model, OpenElm, Tokenizer};

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// The checkpoints with reference logits.
pub const CHECKPOINTS: [&str; 4] = ["tiny-gqa", "hd128", "bf16", "derived"];

/// The fixture tokenizer (vocab 384, like every fixture checkpoint).
pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(fixture("tokenizer/tokenizer.json")).expect("fixture tokenizer loads")
}

/// A fixture checkpoint loaded in f32.
pub fn model(name: &str) -> Model {
    let dir = fixture(name);
    let config = Config::from_file(dir.join("config.json")).expect("fixture config");
    let ckpt = elmroute_openelm::Checkpoint::from_dir(&dir).expect("fixture checkpoint");
    Model::load(&config, &ckpt, DType::F32, &Device::Cpu, |_| {}).expect("fixture model")
}

/// A random model with the fixture vocabulary and a long context, for engine tests that need
/// many tokens.
pub fn long_model() -> Model {
    let config = Config::from_json(
        r#"{"vocab_size": 384, "model_dim": 64, "head_dim": 16, "num_transformer_layers": 2,
            "num_query_heads": [4, 4], "num_kv_heads": [2, 2], "ffn_multipliers": [1.0, 2.0],
            "ffn_dim_divisor": 16, "max_context_length": 4096, "bos_token_id": 1, "eos_token_id": 2}"#,
    )
    .expect("config");
    let tensors =
        elmroute_openelm::random_tensors(&config, DType::F32, &Device::Cpu).expect("tensors");
    Model::from_tensors(&config, tensors, DType::F32, &Device::Cpu).expect("model")
}

/// A ready engine around `model` with the fixture tokenizer.
pub fn engine(model: Model, opts: LoadOptions) -> OpenElm {
    OpenElm::from_model(model, tokenizer(), opts)
}
