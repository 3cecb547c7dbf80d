//! elmroute answers every LLM request either on the device, with Apple's OpenELM models, or
//! in the cloud, through any OpenAI-compatible provider. It decides per request from how
//! complex the request is, how private it is, the battery and the device's heat, falls back
//! to the device when the network is gone, and redacts private data before the cloud sees
//! it, restoring it in the answer.
//!
//! This crate is the facade: it re-exports the pieces an app needs.
//!
//! ```
//! use elmroute::{ChatRequest, DeclaredBackend, DeviceState, Policy, Router, Target};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/balanced.toml"))?;
//! let router = Router::builder()
//!     .policy(policy)
//!     .local(DeclaredBackend::local("openelm-270m-instruct", 2048))
//!     .remote(DeclaredBackend::remote("gpt-4o-mini"))
//!     .device(DeviceState::default())
//!     .build()?;
//!
//! // Where would these go, and why?
//! let easy = router.decide(&ChatRequest::user("What's the capital of Peru?"))?;
//! let card = router.decide(&ChatRequest::user("My card 4111 1111 1111 1111 was declined twice; \
//!     explain step by step why and derive what the bank's fraud model might be doing"))?;
//! assert_eq!(easy.target, Target::Local);
//! assert_eq!(card.target, Target::Local); // clearly private: never leaves the device
//! println!("{}", card.explain());
//! # Ok(()) }
//! ```
//!
//! With real backends, `router.complete(request).await?` returns a [`Completion`] with the
//! text and its [`Route`], and `router.stream(request).await?` a stream of
//! [`StreamEvent`]s: text deltas, then the route.
#![deny(missing_docs)]

pub use elmroute_core::{
    Availability, Backend, BackendKind, Battery, ChatRequest, Chunk, ChunkStream, Completion,
    DeviceSource, DeviceState, Error, Fallback, FallbackKind, FinishReason, Message, Mode, Network,
    NoRoute, Refusal, Reply, Result, Role, Route, Rule, Scores, Sensitivity, StreamEvent, Target,
    ThermalLevel, Timings, Truncation, Usage,
};
pub use elmroute_device::{ManualDevice, SysfsDevice, SystemDevice, ThermalThresholds};
pub use elmroute_router::{
    CompletionStream, ComplexityScorer, DeclaredBackend, HeuristicComplexity, Policy, PolicyError,
    PrivacyDetector, Router, RouterBuilder,
};

/// The on-device OpenELM engine (feature `local`, on by default).
#[cfg(feature = "local")]
pub use elmroute_openelm::{LoadOptions, OpenElm};

/// Everything of the OpenELM crate: config, checkpoint, model, tokenizer, generation, and
/// with feature `hub` the model download.
#[cfg(feature = "local")]
pub mod openelm {
    pub use elmroute_openelm::*;
}

/// The cloud side: an OpenAI-compatible provider (feature `remote`, on by default).
#[cfg(feature = "remote")]
pub use elmroute_remote::{ConfigError, OpenAi, OpenAiConfig, RetryPolicy, Secret, Timeouts};

/// Everything of the remote crate, including the SSE parser.
#[cfg(feature = "remote")]
pub mod remote {
    pub use elmroute_remote::*;
}

/// The provider a policy's `[remote]` table names, or `None` when the policy names none.
/// The API key comes from the environment variable the table's `api_key_env` names; an
/// unset or empty variable sends no key (local servers need none).
///
/// ```
/// let policy = elmroute::Policy::from_toml(
///     "[remote]\nbase_url = \"http://127.0.0.1:8000/v1\"\nmodel = \"qwen2.5-7b\"\n",
///     "inline.toml",
/// )?;
/// let cloud = elmroute::cloud_from_policy(&policy)?.expect("the policy names a provider");
/// assert_eq!(elmroute::Backend::name(&cloud), "openai:qwen2.5-7b");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(feature = "remote")]
pub fn cloud_from_policy(policy: &Policy) -> std::result::Result<Option<OpenAi>, ConfigError> {
    let Some(r) = &policy.remote else {
        return Ok(None);
    };
    let secs = |s: elmroute_router::policy::Seconds| std::time::Duration::from_secs_f32(s.get());
    let mut config = OpenAiConfig::new(r.base_url.as_str(), r.model.as_str());
    if !r.api_key_env.is_empty()
        && let Ok(key) = std::env::var(&r.api_key_env)
        && !key.trim().is_empty()
    {
        config = config.with_api_key(key.trim());
    }
    for (name, value) in &r.headers {
        config = config.with_header(name, value.as_str());
    }
    config.timeouts = Timeouts {
        connect: secs(r.connect_timeout_secs),
        first_byte: secs(r.first_byte_timeout_secs),
        idle: secs(r.idle_timeout_secs),
        total: secs(r.total_timeout_secs),
    };
    config.retry.max_retries = r.max_retries;
    config.context_window = r.context_window.map(|c| c as usize);
    config.name = r.name.clone();
    config.stream_usage = r.stream_usage;
    OpenAi::new(config).map(Some)
}

/// The routing internals, for apps that want the signals or the decision alone.
pub mod router {
    pub use elmroute_router::{decision, policy, redact, signals};
}
