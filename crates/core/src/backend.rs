//! The trait every backend implements.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::completion::{Chunk, Reply};
use crate::error::Result;
use crate::request::ChatRequest;

/// A stream of answer chunks from a backend.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk>> + Send + 'static>>;

/// Where a backend runs, which decides the rules that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// On this device: private, offline-capable, costs battery and heat.
    Local,
    /// Across the network: needs a connection, sees the (redacted) prompt.
    Remote,
}

/// Whether a backend can take a request now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Availability {
    /// Ready to serve.
    Ready,
    /// Nothing loaded yet.
    NotLoaded,
    /// Loading; `progress` runs 0..=1.
    Loading {
        /// Fraction done.
        progress: f32,
    },
    /// Recent failures: the backend asks not to be called until the cool-down ends.
    CoolingDown {
        /// Time left.
        remaining: Duration,
    },
    /// It cannot serve; `reason` says why.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

impl Availability {
    /// Whether a request may be sent now.
    pub fn is_ready(&self) -> bool {
        matches!(self, Availability::Ready)
    }
}

/// A model that answers chat requests: the on-device OpenELM engine, an OpenAI-compatible
/// provider, or an in-process stand-in in tests.
///
/// The trait is deliberately small. The router owns every decision about *where* a request
/// goes, so a backend only has to answer three questions: can you serve now
/// ([`availability`](Backend::availability)), how much can you take
/// ([`context_window`](Backend::context_window)), and what is your answer
/// ([`complete`](Backend::complete) / [`stream`](Backend::stream)). Anything richer (retries,
/// cool-downs, queues) stays inside the backend, which reports its effect through
/// `availability` and through typed errors whose predicates (`is_retryable()`,
/// `is_offline()`, `is_busy()`) let the router choose a fallback without knowing the
/// backend's internals.
///
/// Both `complete` and `stream` are required because providers differ in what they do well:
/// a local engine streams naturally and builds `complete` from it, a cloud provider has a
/// cheaper non-streaming call. A stream yields whole-UTF-8 [`Chunk::Text`] deltas and ends
/// with exactly one [`Chunk::Done`]; dropping it must stop the work behind it, which is how
/// an app cancels.
///
/// `availability` and `context_window` are called on every routing decision and must not
/// block: answer from state the backend already holds.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for routes and logs (`"openelm-270m"`, `"openai:gpt-4o-mini"`).
    fn name(&self) -> &str;

    /// Whether this backend runs on the device or across the network.
    fn kind(&self) -> BackendKind;

    /// Whether it can take a request now.
    fn availability(&self) -> Availability;

    /// The most tokens (prompt plus answer) it can hold, when known.
    fn context_window(&self) -> Option<usize> {
        None
    }

    /// An estimate of how many tokens `text` takes for this backend. The default assumes
    /// about four bytes per token, which errs high for English under Llama-2's tokenizer.
    fn estimate_tokens(&self, text: &str) -> usize {
        text.len().div_ceil(4)
    }

    /// Checks cheaply whether the backend can be reached now, without spending tokens: a
    /// remote provider opens a connection to its own host (never a third-party one). The
    /// router calls it, when its policy allows, before it tries the cloud again after a
    /// connection failure. The default says yes.
    async fn probe(&self) -> Result<()> {
        Ok(())
    }

    /// Answers the request in one piece.
    async fn complete(&self, request: &ChatRequest) -> Result<Reply>;

    /// Answers the request as a stream of chunks.
    async fn stream(&self, request: &ChatRequest) -> Result<ChunkStream>;
}
