//! OpenELM on candle for elmroute.
//!
//! Apple's OpenELM models (270M, 450M, 1.1B, 3B and their `-Instruct` versions) in Hugging
//! Face layout — `config.json`, `model.safetensors` or shards with an index, `tokenizer.json` —
//! run on candle, CPU first (features `cuda`, `metal`, `accelerate`, `mkl` pass candle's
//! accelerators through).
//!
//! The layers, from the bottom:
//!
//! - [`Config`]: `config.json`, per-layer head counts and FFN widths read when present and
//!   derived (layer-wise scaling) when absent.
//! - [`Checkpoint`]: memory-mapped safetensors, one file or shards; every tensor's name,
//!   dtype and shape is checked against the config before anything is allocated.
//! - [`Model`]: the transformer with a KV cache; `forward(ids, offset)`,
//!   `clear_kv_cache()`. Its projections are [`Linear`]: dense, quantized with candle's
//!   kernels, or Q8_0/Q4_0/Q4_K/Q6_K [`BlockMatrix`] blocks on this crate's CPU kernels (8-bit
//!   activations, integer dot products, AVX-512 VNNI or AVX2 when the CPU has them, weights
//!   prefetched ahead of the reads; with AVX2 or AVX-512, Q4_0 rows stored in tiles of four,
//!   interleaved in 4-byte steps, that the kernels read as one stream, four rows per load). In f32 on the CPU, decoding one position runs the
//!   layers on plain vectors between the matrix products, with attention over the KV cache
//!   in one op per layer, instead of two dozen tensor ops per layer. With block-quantized
//!   weights the KV cache is kept in f16 ([`Model::kv_cache_dtype`],
//!   [`LoadOptions::kv_cache_dtype`]): half the memory and half the reads per token.
//! - Quantized models, one model type whatever the source: [`LoadOptions::quantize`] (or
//!   [`Model::load_quantized`]) quantizes a safetensors checkpoint while loading
//!   (`Q8_0`, `Q4_0`, `Q4K`, `Q6K`, ... as [`GgmlDType`]); [`Gguf`] reads OpenELM GGUF files
//!   as llama.cpp writes them, config and tokenizer included ([`OpenElm::from_gguf`]).
//! - [`Tokenizer`]: `tokenizer.json` through the `tokenizers` crate, Llama-2 BOS handling and a
//!   streaming detokeniser that never splits a UTF-8 character.
//! - [`generate`] with [`GenerationConfig`]: temperature, top-k, top-p, repeat penalty, seed,
//!   stop tokens and strings, usage and finish reason.
//! - [`OpenElm`]: elmroute's [`Backend`](elmroute_core::Backend) — the model on its own
//!   worker thread, a bounded request queue, streams that stop when dropped, and an
//!   availability that reports loading progress.
//! - `hub` (feature `hub`): find a model in the Hugging Face cache or download it.
//!
//! ```no_run
//! use elmroute_core::{Backend, ChatRequest};
//! use elmroute_openelm::{LoadOptions, OpenElm};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = OpenElm::from_dir("models/OpenELM-270M-Instruct", LoadOptions::default())?;
//! let reply = engine
//!     .complete(&ChatRequest::user("Name three colours.").with_max_tokens(32))
//!     .await?;
//! println!("{} ({} tokens)", reply.text, reply.usage.completion_tokens);
//! # Ok(())
//! # }
//! ```
//!
//! Lower down, without the engine (a tiny random model with the real layer structure):
//!
//! ```
//! use elmroute_openelm::{Config, DType, Device, Model, Tensor, random_tensors};
//!
//! # fn main() -> Result<(), elmroute_openelm::Error> {
//! let config = Config::from_json(
//!     r#"{"vocab_size": 64, "model_dim": 32, "head_dim": 8, "num_transformer_layers": 2,
//!         "num_query_heads": [4, 8], "num_kv_heads": [2, 2], "ffn_multipliers": [1.0, 2.0],
//!         "ffn_dim_divisor": 16, "max_context_length": 32}"#,
//! )?;
//! let tensors = random_tensors(&config, DType::F32, &Device::Cpu)?;
//! let mut model = Model::from_tensors(&config, tensors, DType::F32, &Device::Cpu)?;
//! let prompt = Tensor::new(&[1u32, 5, 9], &Device::Cpu)?;
//! let logits = model.forward(&prompt, 0)?; // [1, 3, 64]
//! assert_eq!(logits.dims(), &[1, 3, 64]);
//! let next = Tensor::new(&[7u32], &Device::Cpu)?;
//! let logits = model.forward(&next, 3)?; // one token through the KV cache
//! assert_eq!(logits.dims(), &[1, 1, 64]);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod attention;
mod chat_template;
mod config;
mod decode;
mod elementwise;
mod engine;
mod error;
mod generation;
mod gguf;
mod helper;
#[cfg(feature = "hub")]
pub mod hub;
mod kv_cache;
mod matvec;
mod model;
mod qmatvec;
mod simd;
mod source;
mod tokenizer;
mod weights;

pub use chat_template::ChatTemplate;
pub use config::{Config, OfficialSize, make_divisible};
pub use engine::{LoadOptions, ModelFiles, OpenElm, ProgressFn};
pub use error::{Error, Result};
pub use generation::{Generation, GenerationConfig, Sampler, fit_context, generate};
pub use gguf::{GGUF_ARCHITECTURE, Gguf};
#[doc(hidden)]
pub use helper::decode_products;
pub use model::{Linear, Model, argmax, random_tensors};
pub use qmatvec::BlockMatrix;
pub use source::{parse_quant_type, quant_type_for};
pub use tokenizer::{TextStream, Tokenizer};
pub use weights::{Checkpoint, SHARD_INDEX, SINGLE_FILE, TensorInfo};

/// candle's GGML weight types (`Q8_0`, `Q4_0`, `Q4K`, `Q6K`, ...), for quantized models.
pub use candle_core::quantized::GgmlDType;
/// candle's tensor types, re-exported so callers need no direct candle dependency.
pub use candle_core::{DType, Device, Tensor};
