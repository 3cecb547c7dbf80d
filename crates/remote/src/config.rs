//! Where the provider is and how patiently to talk to it.

use std::fmt;
use std::time::Duration;

use reqwest::Url;

/// The base URL [`OpenAiConfig::from_env`] uses when `OPENAI_BASE_URL` is not set.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Why a provider configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The base URL does not parse or is not `http(s)`.
    #[error(
        "remote base URL {url:?} is not usable: {reason} (expected e.g. \"http://127.0.0.1:8000/v1\")"
    )]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The model name is empty.
    #[error("remote model name is empty (expected the provider's model id, e.g. \"gpt-4o-mini\")")]
    EmptyModel,
    /// An extra header's name or value is not valid in HTTP.
    #[error("remote header {name:?} is not valid: {reason}")]
    InvalidHeader {
        /// The header name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A timeout is zero.
    #[error("remote timeout `{which}` must be above zero")]
    ZeroTimeout {
        /// Which timeout.
        which: &'static str,
    },
    /// The HTTP client could not be built (for example, no TLS back-end could start).
    #[error("the HTTP client could not be built: {0}")]
    Client(String),
}

/// A secret value (an API key, an auth header): it never shows in `Debug` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// How long to wait, at each stage of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening the TCP (and TLS) connection. A failure here means the provider is out of
    /// reach, which the router treats as being offline.
    pub connect: Duration,
    /// From sending the request to the first byte of the answer. For a stream that is the
    /// time to the first token; a one-piece completion sends nothing until the whole answer
    /// is ready, so keep this above the longest generation you expect, or stream.
    pub first_byte: Duration,
    /// The longest silence between two pieces of a stream once it has started (servers'
    /// keep-alive comments count as activity).
    pub idle: Duration,
    /// The whole call, retries and waits included.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(300),
        }
    }
}

/// When and how often to try again. Retries happen only before the first token: once text
/// has reached the caller, a failure is reported (and the router may continue elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries after the first one (0 turns retries off).
    pub max_retries: u32,
    /// The first back-off; each later one doubles, up to `max_delay`, with jitter.
    pub base_delay: Duration,
    /// The longest back-off between two tries.
    pub max_delay: Duration,
    /// The longest `Retry-After` the client waits out itself. A provider asking for more
    /// gets the error back at once, carrying the wait, so the router can go elsewhere and
    /// cool the cloud down instead of blocking the app.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(20),
        }
    }
}

/// An OpenAI-compatible provider: OpenAI, vLLM, Ollama, llama.cpp's server, TGI, or a LiteLLM
/// proxy in front of anything.
///
/// ```
/// use elmroute_remote::OpenAiConfig;
///
/// // Ollama on this machine: no API key.
/// let config = OpenAiConfig::new("http://127.0.0.1:11434/v1", "llama3.2")
///     .with_context_window(8192);
/// assert_eq!(config.chat_url()?.path(), "/v1/chat/completions");
/// # Ok::<(), elmroute_remote::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct OpenAiConfig {
    base_url: String,
    model: String,
    api_key: Option<Secret>,
    headers: Vec<(String, Secret)>,
    /// Deadlines for each stage of a call.
    pub timeouts: Timeouts,
    /// Retries before the first token.
    pub retry: RetryPolicy,
    /// The model's context window in tokens, when known (the router uses it to keep requests
    /// that do not fit away from the provider).
    pub context_window: Option<usize>,
    /// The name in routes and logs; defaults to `openai:<model>`.
    pub name: Option<String>,
    /// Whether streams ask for a final usage chunk (`stream_options.include_usage`). Some
    /// older servers reject the field; turn it off for them.
    pub stream_usage: bool,
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key)
            .field("headers", &header_names)
            .field("timeouts", &self.timeouts)
            .field("retry", &self.retry)
            .field("context_window", &self.context_window)
            .field("name", &self.name)
            .field("stream_usage", &self.stream_usage)
            .finish()
    }
}

impl OpenAiConfig {
    /// A provider at `base_url` (the part before `/chat/completions`, usually ending in
    /// `/v1`) serving `model`, with no API key.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            headers: Vec::new(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            context_window: None,
            name: None,
            stream_usage: true,
        }
    }

    /// OpenAI's conventions: the key from `OPENAI_API_KEY` (none when unset, as local servers
    /// need none) and the base URL from `OPENAI_BASE_URL`, defaulting to OpenAI's own.
    pub fn from_env(model: impl Into<String>) -> Self {
        Self::from_env_vars(model, "OPENAI_API_KEY", "OPENAI_BASE_URL")
    }

    /// Like [`from_env`](OpenAiConfig::from_env) with other variable names.
    pub fn from_env_vars(model: impl Into<String>, key_var: &str, base_url_var: &str) -> Self {
        let base = std::env::var(base_url_var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| OPENAI_BASE_URL.to_owned());
        let mut config = Self::new(base, model);
        config.api_key = std::env::var(key_var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| Secret::new(v.trim()));
        config
    }

    /// Sends `Authorization: Bearer <key>`.
    #[must_use]
    pub fn with_api_key(mut self, key: impl Into<Secret>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Adds a header to every request (an organisation id, a proxy's auth). Its value is
    /// treated as a secret.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Secret>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the timeouts.
    #[must_use]
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Declares the model's context window in tokens.
    #[must_use]
    pub fn with_context_window(mut self, tokens: usize) -> Self {
        self.context_window = Some(tokens);
        self
    }

    /// Sets the name shown in routes and logs.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The base URL as given.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The model id sent to the provider.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Whether an API key is set.
    pub fn has_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    pub(crate) fn api_key(&self) -> Option<&Secret> {
        self.api_key.as_ref()
    }

    pub(crate) fn headers(&self) -> &[(String, Secret)] {
        &self.headers
    }

    /// The chat completions endpoint, `{base}/chat/completions`, or why the base URL is not
    /// usable.
    pub fn chat_url(&self) -> Result<Url, ConfigError> {
        self.parsed_chat_url()
    }

    pub(crate) fn parsed_chat_url(&self) -> Result<Url, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidUrl {
            url: self.base_url.clone(),
            reason,
        };
        let trimmed = self.base_url.trim().trim_end_matches('/');
        let mut url = Url::parse(trimmed).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "the scheme is {:?}, not http or https",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("it has no host".into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("it has a query or fragment".into()));
        }
        let path = url.path().trim_end_matches('/').to_owned();
        let path = if path.ends_with("/chat/completions") {
            path
        } else {
            format!("{path}/chat/completions")
        };
        url.set_path(&path);
        Ok(url)
    }

    /// Checks everything that can be checked without the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.parsed_chat_url()?;
        if self.model.trim().is_empty() {
            return Err(ConfigError::EmptyModel);
        }
        for (name, value) in &self.headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                ConfigError::InvalidHeader {
                    name: name.clone(),
                    reason: e.to_string(),
                }
            })?;
            reqwest::header::HeaderValue::from_str(value.expose()).map_err(|_| {
                ConfigError::InvalidHeader {
                    name: name.clone(),
                    reason: "the value holds characters HTTP headers cannot carry".into(),
                }
            })?;
        }
        if let Some(key) = &self.api_key
            && reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.expose())).is_err()
        {
            return Err(ConfigError::InvalidHeader {
                name: "Authorization".into(),
                reason: "the API key holds characters HTTP headers cannot carry".into(),
            });
        }
        let t = &self.timeouts;
        for (which, d) in [
            ("connect", t.connect),
            ("first_byte", t.first_byte),
            ("idle", t.idle),
            ("total", t.total),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroTimeout { which });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chat_url_appends_the_endpoint_once() {
        for base in [
            "http://127.0.0.1:8000/v1",
            "http://127.0.0.1:8000/v1/",
            "http://127.0.0.1:8000/v1/chat/completions",
        ] {
            let c = OpenAiConfig::new(base, "m");
            assert_eq!(
                c.parsed_chat_url().unwrap().as_str(),
                "http://127.0.0.1:8000/v1/chat/completions"
            );
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let e = OpenAiConfig::new("ftp://host/v1", "m")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("not http or https"), "{e}");
        let e = OpenAiConfig::new("not a url", "m").validate().unwrap_err();
        assert!(e.to_string().contains("\"not a url\""), "{e}");
        let e = OpenAiConfig::new("http://h/v1", " ")
            .validate()
            .unwrap_err();
        assert!(matches!(e, ConfigError::EmptyModel));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = OpenAiConfig::new("http://h/v1", "m")
            .with_api_key("sk-test-1234567890abcdef")
            .with_header("X-Proxy-Auth", "hunter2-secret");
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk-test"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("X-Proxy-Auth"), "{shown}");
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let c = OpenAiConfig::new("http://h/v1", "m").with_timeouts(Timeouts {
            idle: Duration::ZERO,
            ..Timeouts::default()
        });
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ZeroTimeout { which: "idle" })
        ));
    }
}
