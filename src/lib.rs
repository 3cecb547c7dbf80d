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

/// The routing internals, for apps that want the signals or the decision alone.
pub mod router {
    pub use elmroute_router::{decision, policy, redact, signals};
}
