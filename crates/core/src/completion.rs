//! What comes back: the answer, its usage and its route.

use serde::{Deserialize, Serialize};

use crate::route::Route;

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Usage {
    /// Tokens in the prompt as the backend saw it.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

impl Usage {
    /// Prompt plus completion tokens.
    pub fn total(&self) -> u32 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its answer or produced a stop string.
    #[default]
    Stop,
    /// The token limit was reached.
    Length,
    /// The provider filtered the answer.
    ContentFilter,
    /// The caller stopped it.
    Cancelled,
}

/// A backend's answer before the router adds its route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Reply {
    /// The answer text.
    pub text: String,
    /// Token counts.
    pub usage: Usage,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// The model that answered, as the backend names it.
    pub model: String,
}

/// One item of a backend's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Chunk {
    /// More answer text: whole UTF-8 characters, never empty.
    Text(String),
    /// The answer is complete. Nothing follows it.
    Done {
        /// Token counts.
        usage: Usage,
        /// Why generation stopped.
        finish_reason: FinishReason,
        /// The model that answered.
        model: String,
    },
}

/// The router's answer: the text, its usage and the route that explains it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The answer text, with any redacted spans restored.
    pub text: String,
    /// Token counts, added up over every backend that finished its part (a stream that
    /// broke before reporting usage adds nothing).
    pub usage: Usage,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// The model that answered.
    pub model: String,
    /// Where it was answered and why.
    pub route: Route,
}

/// One item of the router's stream: text deltas, then the route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamEvent {
    /// More answer text.
    Delta(String),
    /// The answer is complete; the last item.
    Done {
        /// Token counts.
        usage: Usage,
        /// Why generation stopped.
        finish_reason: FinishReason,
        /// The model that answered (the last one, after a fallback).
        model: String,
        /// Where it was answered and why.
        route: Box<Route>,
    },
}
