//! The cloud side of [elmroute]: any OpenAI-compatible chat completions endpoint (OpenAI,
//! vLLM, Ollama, llama.cpp's server, TGI, a LiteLLM proxy) behind core's
//! [`Backend`](elmroute_core::Backend) trait.
//!
//! - One-piece JSON replies and SSE streams, with the quirks real servers send: keep-alive
//!   comments, multi-line data, a role-only first chunk, empty deltas, `finish_reason` in a
//!   chunk of its own, and the final usage chunk of `stream_options.include_usage`.
//! - Timeouts for connecting, the first byte, silence inside a stream, and the whole call.
//! - Retries only before the first token, with exponential back-off and jitter, honouring
//!   `Retry-After`: connect failures, 408, 409, 429 and 5xx are retried; 400, 401, 403, 404
//!   and 422 never are.
//! - Typed errors keeping the status, the provider's message and code, answering
//!   `is_retryable()`, `is_offline()`, `is_auth()`, `is_rate_limited()` and
//!   `is_context_length()`. A connection that cannot be opened reads as offline, so the
//!   router goes to the device at once.
//! - The API key and extra headers are secrets: never in `Debug`, never logged.
//!
//! ```no_run
//! use elmroute_core::{Backend, ChatRequest};
//! use elmroute_remote::{OpenAi, OpenAiConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // llama.cpp's server on this machine (`llama-server -m model.gguf --port 8080`).
//! let cloud = OpenAi::new(OpenAiConfig::new("http://127.0.0.1:8080/v1", "local"))?;
//! let reply = cloud.complete(&ChatRequest::user("Say hi").with_max_tokens(16)).await?;
//! println!("{} ({} tokens)", reply.text, reply.usage.completion_tokens);
//! # Ok(())
//! # }
//! ```
//!
//! [elmroute]: https://example.invalid/elmroute

mod config;
mod provider;
pub mod sse;
mod wire;

pub use config::{ConfigError, OPENAI_BASE_URL, OpenAiConfig, RetryPolicy, Secret, Timeouts};
pub use provider::OpenAi;
