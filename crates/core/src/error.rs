//! The one error type every elmroute crate returns.
//!
//! Like `reqwest::Error`, it is opaque: the kind is private so it can grow, and callers ask
//! questions of it (`is_retryable()`, `is_offline()`, `no_route()`) instead of matching.

use std::time::Duration;

use crate::route::{NoRoute, Target};

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An elmroute error.
#[derive(thiserror::Error)]
#[error("{kind}")]
pub struct Error {
    kind: Kind,
    #[source]
    source: Option<Source>,
}

#[derive(Debug, thiserror::Error)]
enum Kind {
    #[error("{0}")]
    NoRoute(Box<NoRoute>),
    #[error("offline: {0}")]
    Offline(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
        code: Option<String>,
    },
    #[error("bad reply from the provider: {0}")]
    Protocol(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error(
        "request needs {needed} tokens but the model's context holds {limit}; shorten it or allow left truncation"
    )]
    ContextOverflow { needed: usize, limit: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("backend not ready: {0}")]
    NotReady(String),
    #[error("cancelled")]
    Cancelled,
    #[error("blocked: {0}")]
    PrivacyBlocked(String),
    #[error("{0}")]
    Backend(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

/// A `Result` with elmroute's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn new(kind: Kind) -> Self {
        Self { kind, source: None }
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// No backend may serve the request.
    pub fn no_route(no_route: NoRoute) -> Self {
        Self::new(Kind::NoRoute(Box::new(no_route)))
    }

    /// The provider could not be reached at all (DNS, connection refused, no network).
    pub fn offline(detail: impl Into<String>) -> Self {
        Self::new(Kind::Offline(detail.into()))
    }

    /// A deadline passed.
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(Kind::Timeout(detail.into()))
    }

    /// The provider answered with an HTTP error status.
    pub fn status(status: u16, message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self::new(Kind::Status {
            status,
            message: message.into(),
            retry_after,
            code: None,
        })
    }

    /// Like [`status`](Error::status), also keeping the provider's machine-readable error
    /// code (OpenAI's `error.code` or `error.type`, such as `"context_length_exceeded"`).
    pub fn status_with_code(
        status: u16,
        message: impl Into<String>,
        retry_after: Option<Duration>,
        code: Option<String>,
    ) -> Self {
        Self::new(Kind::Status {
            status,
            message: message.into(),
            retry_after,
            code,
        })
    }

    /// The provider's reply could not be understood; `detail` names the field and what was
    /// expected.
    pub fn protocol(detail: impl Into<String>) -> Self {
        Self::new(Kind::Protocol(detail.into()))
    }

    /// The backend's queue is full; try again later or elsewhere.
    pub fn busy(detail: impl Into<String>) -> Self {
        Self::new(Kind::Busy(detail.into()))
    }

    /// The request does not fit the model's context.
    pub fn context_overflow(needed: usize, limit: usize) -> Self {
        Self::new(Kind::ContextOverflow { needed, limit })
    }

    /// The request itself is wrong (empty, out-of-range settings).
    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(Kind::InvalidRequest(detail.into()))
    }

    /// The backend cannot serve yet (model not loaded, failed to load).
    pub fn not_ready(detail: impl Into<String>) -> Self {
        Self::new(Kind::NotReady(detail.into()))
    }

    /// The caller stopped the request.
    pub fn cancelled() -> Self {
        Self::new(Kind::Cancelled)
    }

    /// The request holds private data and the policy or the request asks to block such
    /// requests. `detail` names categories and counts, never the values.
    pub fn privacy_blocked(detail: impl Into<String>) -> Self {
        Self::new(Kind::PrivacyBlocked(detail.into()))
    }

    /// Any other backend failure.
    pub fn backend(detail: impl Into<String>) -> Self {
        Self::new(Kind::Backend(detail.into()))
    }

    /// Whether trying the same call again later may succeed (offline, timeouts, 408, 429, 5xx,
    /// busy).
    pub fn is_retryable(&self) -> bool {
        match &self.kind {
            Kind::Offline(_) | Kind::Timeout(_) | Kind::Busy(_) => true,
            Kind::Status { status, .. } => matches!(status, 408 | 409 | 425 | 429 | 500..=599),
            _ => false,
        }
    }

    /// Whether the provider could not be reached at all.
    pub fn is_offline(&self) -> bool {
        matches!(self.kind, Kind::Offline(_))
    }

    /// Whether a deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout(_))
    }

    /// Whether the backend's queue was full.
    pub fn is_busy(&self) -> bool {
        matches!(self.kind, Kind::Busy(_))
    }

    /// Whether the request did not fit the model's context.
    pub fn is_context_overflow(&self) -> bool {
        matches!(self.kind, Kind::ContextOverflow { .. })
    }

    /// Whether the request was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.kind, Kind::Cancelled)
    }

    /// Whether the request was invalid.
    pub fn is_invalid_request(&self) -> bool {
        matches!(self.kind, Kind::InvalidRequest(_))
    }

    /// Whether the request was refused because it holds private data and blocking was asked
    /// for (see `PrivacyAction::Block`). No backend saw it.
    pub fn is_privacy_blocked(&self) -> bool {
        matches!(self.kind, Kind::PrivacyBlocked(_))
    }

    /// Whether the reply could not be understood.
    pub fn is_protocol(&self) -> bool {
        matches!(self.kind, Kind::Protocol(_))
    }

    /// Whether the backend was not ready.
    pub fn is_not_ready(&self) -> bool {
        matches!(self.kind, Kind::NotReady(_))
    }

    /// Whether the provider refused the credentials (HTTP 401 or 403): retrying will not help,
    /// fixing the API key will.
    pub fn is_auth(&self) -> bool {
        matches!(
            self.kind,
            Kind::Status {
                status: 401 | 403,
                ..
            }
        )
    }

    /// Whether the provider asked us to slow down (HTTP 429); see
    /// [`retry_after`](Error::retry_after).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self.kind, Kind::Status { status: 429, .. })
    }

    /// Whether the request was too long for the model: a local context overflow, or a
    /// provider's refusal that says so (OpenAI's `context_length_exceeded` code, or a 400/413
    /// whose message speaks of the context length, as vLLM, llama.cpp's server and TGI word it).
    pub fn is_context_length(&self) -> bool {
        match &self.kind {
            Kind::ContextOverflow { .. } => true,
            Kind::Status {
                status,
                message,
                code,
                ..
            } => {
                let code_says = code.as_deref().is_some_and(|c| {
                    let c = c.to_ascii_lowercase();
                    c.contains("context_length") || c.contains("context_size")
                });
                let message_says = matches!(status, 400 | 413 | 422) && {
                    let m = message.to_ascii_lowercase();
                    [
                        "context length",
                        "context window",
                        "context size",
                        "maximum context",
                        "too many tokens",
                        "input is too long",
                        "prompt is too long",
                    ]
                    .iter()
                    .any(|p| m.contains(p))
                };
                code_says || message_says
            }
            _ => false,
        }
    }

    /// The provider's machine-readable error code, when it sent one.
    pub fn provider_code(&self) -> Option<&str> {
        match &self.kind {
            Kind::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status, when the provider answered with one.
    pub fn http_status(&self) -> Option<u16> {
        match &self.kind {
            Kind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the provider asked us to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.kind {
            Kind::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The refusals, when no backend could serve the request.
    pub fn no_route_details(&self) -> Option<&NoRoute> {
        match &self.kind {
            Kind::NoRoute(n) => Some(n),
            _ => None,
        }
    }

    /// Whether this is a [`NoRoute`] error.
    pub fn is_no_route(&self) -> bool {
        matches!(self.kind, Kind::NoRoute(_))
    }

    /// Whether the given backend was refused (only for [`NoRoute`] errors).
    pub fn refused(&self, target: Target) -> bool {
        self.no_route_details()
            .is_some_and(|n| n.route.refusals.iter().any(|r| r.target == target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses_are_the_transient_ones() {
        assert!(Error::status(429, "slow down", None).is_retryable());
        assert!(Error::status(503, "down", None).is_retryable());
        assert!(!Error::status(400, "bad", None).is_retryable());
        assert!(!Error::status(401, "key", None).is_retryable());
        assert!(Error::offline("dns").is_retryable());
        assert!(!Error::protocol("x").is_retryable());
    }

    #[test]
    fn provider_refusals_answer_their_predicates() {
        assert!(Error::status(401, "bad key", None).is_auth());
        assert!(Error::status(403, "forbidden", None).is_auth());
        assert!(!Error::status(429, "slow", None).is_auth());
        assert!(Error::status(429, "slow", None).is_rate_limited());
        assert!(!Error::status(503, "down", None).is_rate_limited());
        let openai = Error::status_with_code(
            400,
            "too long",
            None,
            Some("context_length_exceeded".into()),
        );
        assert!(openai.is_context_length());
        assert_eq!(openai.provider_code(), Some("context_length_exceeded"));
        let vllm = Error::status(
            400,
            "This model's maximum context length is 2048 tokens. However, you requested 4000",
            None,
        );
        assert!(vllm.is_context_length());
        assert!(!Error::status(400, "temperature must be <= 2", None).is_context_length());
        assert!(!Error::status(500, "maximum context length", None).is_context_length());
        assert!(Error::context_overflow(10, 5).is_context_length());
    }

    #[test]
    fn source_is_kept() {
        let io = std::io::Error::other("refused");
        let e = Error::offline("connect").with_source(io);
        let src = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(src.as_deref(), Some("refused"));
    }
}
