//! The provider itself: one HTTP call per attempt, retries before the first token, the stream
//! reader, and the mapping of every failure onto elmroute's typed errors.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use elmroute_core::{
    Availability, Backend, BackendKind, ChatRequest, Chunk, ChunkStream, Error, FinishReason,
    Reply, Result, Usage,
};
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};
use reqwest::{StatusCode, Url};
use tokio::time::{Instant, sleep, timeout};

use crate::config::{ConfigError, OpenAiConfig};
use crate::sse::{SseEvent, SseParser};
use crate::wire::{self, ChatBody};

/// The body of a streaming reply, piece by piece.
type BodyStream = Pin<Box<dyn futures::Stream<Item = reqwest::Result<Vec<u8>>> + Send + 'static>>;

fn body_stream(response: reqwest::Response) -> BodyStream {
    use futures::StreamExt;
    Box::pin(response.bytes_stream().map(|r| r.map(|b| b.to_vec())))
}

/// Bodies of error replies are read up to this size; the rest is not needed.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// One-piece replies larger than this are refused rather than held in memory.
const MAX_REPLY_BODY: usize = 32 * 1024 * 1024;

/// A chat completions provider speaking OpenAI's protocol. Implements [`Backend`], so it
/// plugs into the router as its cloud side. Cheap to clone.
///
/// ```no_run
/// use elmroute_remote::{OpenAi, OpenAiConfig};
///
/// # fn main() -> Result<(), elmroute_remote::ConfigError> {
/// // A vLLM server on the local network.
/// let vllm = OpenAi::new(OpenAiConfig::new("http://10.0.0.5:8000/v1", "Qwen/Qwen2.5-7B-Instruct"))?;
/// // OpenAI, with the key from OPENAI_API_KEY.
/// let openai = OpenAi::new(OpenAiConfig::from_env("gpt-4o-mini"))?;
/// # let _ = (vllm, openai);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct OpenAi {
    inner: Arc<Inner>,
}

struct Inner {
    config: OpenAiConfig,
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    name: String,
    /// Set when the provider is known to need a key and none is configured: the router is
    /// told at once instead of each request collecting a 401.
    missing_key: Option<String>,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("name", &self.inner.name)
            .field("url", &self.inner.url.as_str())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl OpenAi {
    /// A provider with its own HTTP client, built with the configured connect timeout.
    pub fn new(config: OpenAiConfig) -> std::result::Result<Self, ConfigError> {
        config.validate()?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeouts.connect)
            .user_agent(concat!("elmroute/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        Self::with_client(config, client)
    }

    /// A provider that sends through the caller's client (its proxy, TLS and pool settings;
    /// its connect timeout replaces the configured one).
    pub fn with_client(
        config: OpenAiConfig,
        client: reqwest::Client,
    ) -> std::result::Result<Self, ConfigError> {
        config.validate()?;
        let url = config.parsed_chat_url()?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in config.headers() {
            let invalid = |reason: String| ConfigError::InvalidHeader {
                name: name.clone(),
                reason,
            };
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
                invalid("the value holds characters HTTP headers cannot carry".into())
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if let Some(key) = config.api_key() {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    ConfigError::InvalidHeader {
                        name: "Authorization".into(),
                        reason: "the API key holds characters HTTP headers cannot carry".into(),
                    }
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| format!("openai:{}", config.model()));
        let needs_key = url
            .host_str()
            .is_some_and(|h| h == "api.openai.com" || h.ends_with(".openai.azure.com"));
        let missing_key = (needs_key && !config.has_api_key()).then(|| {
            format!(
                "{} needs an API key and none is configured (set OPENAI_API_KEY, or the policy's remote.api_key_env)",
                url.host_str().unwrap_or_default()
            )
        });
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                url,
                headers,
                name,
                missing_key,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OpenAiConfig {
        &self.inner.config
    }

    /// Opens a TCP connection to the provider's own host, within the connect timeout: a cheap
    /// "is it reachable" check that spends no tokens and touches no other host.
    pub async fn check_reachable(&self) -> Result<()> {
        let url = &self.inner.url;
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let connect = tokio::net::TcpStream::connect((host.as_str(), port));
        match timeout(self.inner.config.timeouts.connect, connect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::offline(format!("cannot reach {host}:{port}: {e}"))),
            Err(_) => Err(Error::offline(format!(
                "cannot reach {host}:{port}: no answer within {:?}",
                self.inner.config.timeouts.connect
            ))),
        }
    }

    /// One attempt: send, wait for the status, and turn a failure status into an error.
    async fn send(&self, body: &[u8], deadline: Instant) -> Result<reqwest::Response> {
        let inner = &*self.inner;
        let request = inner
            .client
            .post(inner.url.clone())
            .headers(inner.headers.clone())
            .body(body.to_vec());
        let wait = inner.config.timeouts.first_byte.min(left(deadline));
        let response = match timeout(wait, request.send()).await {
            Err(_) => {
                return Err(Error::timeout(format!(
                    "no reply from {} within {wait:?}",
                    inner.name
                )));
            }
            Ok(Err(e)) => return Err(transport_error(&inner.name, &e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = read_limited(response, MAX_ERROR_BODY, left(deadline)).await;
        let (message, code) = wire::provider_error(&body);
        let hint = if status == StatusCode::UNAUTHORIZED && !inner.config.has_api_key() {
            " (no API key is configured: set OPENAI_API_KEY or the policy's remote.api_key_env)"
        } else {
            ""
        };
        Err(Error::status_with_code(
            status.as_u16(),
            format!("{message}{hint}"),
            retry_after,
            code,
        ))
    }

    /// How long to wait before retry number `attempt` (0-based) after `error`, or `None`
    /// when it must not be retried.
    fn backoff(&self, attempt: u32, error: &Error, deadline: Instant) -> Option<Duration> {
        let retry = &self.inner.config.retry;
        if attempt >= retry.max_retries || !should_retry(error) {
            return None;
        }
        let exp = retry
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(retry.max_delay);
        // Full jitter on the upper half: spreads clients that failed together.
        let jittered = exp.mul_f64(0.5 + 0.5 * jitter());
        let delay = match error.retry_after() {
            Some(asked) if asked > retry.max_retry_after => return None,
            Some(asked) => asked.max(jittered),
            None => jittered,
        };
        (delay < left(deadline)).then_some(delay)
    }

    /// Runs `attempt` until it succeeds, the failure is not worth another try, the retry
    /// budget is spent or the deadline would pass, waiting the back-off in between.
    async fn with_retries<T, F, Fut>(&self, deadline: Instant, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut tries = 0;
        loop {
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let Some(delay) = self.backoff(tries, &error, deadline) else {
                return Err(error);
            };
            tracing::debug!(
                backend = %self.inner.name,
                attempt = tries + 1,
                status = error.http_status(),
                delay_ms = delay.as_millis() as u64,
                "retrying cloud request"
            );
            sleep(delay).await;
            tries += 1;
        }
    }

    async fn complete_inner(&self, request: &ChatRequest) -> Result<Reply> {
        let inner = &*self.inner;
        let deadline = Instant::now() + inner.config.timeouts.total;
        let body = serde_json::to_vec(&ChatBody::new(inner.config.model(), request, false, false))
            .map_err(|e| Error::invalid_request(format!("the request cannot be encoded: {e}")))?;
        self.with_retries(deadline, || async {
            let response = self.send(&body, deadline).await?;
            self.read_reply(response, deadline).await
        })
        .await
    }

    async fn read_reply(&self, response: reqwest::Response, deadline: Instant) -> Result<Reply> {
        let inner = &*self.inner;
        let mut body = Vec::new();
        let mut stream = body_stream(response);
        loop {
            let wait = inner.config.timeouts.idle.min(left(deadline));
            match timeout(wait, futures::StreamExt::next(&mut stream)).await {
                Err(_) => {
                    return Err(Error::timeout(format!(
                        "the reply from {} stalled for {wait:?} after {} bytes",
                        inner.name,
                        body.len()
                    )));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(transport_error(&inner.name, &e)),
                Ok(Some(Ok(piece))) => {
                    body.extend_from_slice(&piece);
                    if body.len() > MAX_REPLY_BODY {
                        return Err(Error::protocol(format!(
                            "the reply from {} is larger than {MAX_REPLY_BODY} bytes",
                            inner.name
                        )));
                    }
                }
            }
        }
        let response = wire::parse_response(&body)?;
        let usage = response
            .usage
            .as_ref()
            .map(|u| u.to_usage())
            .unwrap_or_default();
        let model = response
            .model
            .clone()
            .unwrap_or_else(|| inner.config.model().to_owned());
        let choice = response.choices.into_iter().next();
        let (text, finish) = match choice {
            Some(c) => {
                let finish = wire::finish_reason(c.finish_reason.as_deref());
                let text = c
                    .message
                    .map(|m| m.content.or(m.refusal).unwrap_or_default())
                    .unwrap_or_default();
                (text, finish)
            }
            None => (String::new(), FinishReason::Stop),
        };
        Ok(Reply {
            text,
            usage,
            finish_reason: finish,
            model,
        })
    }

    async fn stream_inner(&self, request: &ChatRequest) -> Result<ChunkStream> {
        let inner = &*self.inner;
        let deadline = Instant::now() + inner.config.timeouts.total;
        let body = serde_json::to_vec(&ChatBody::new(
            inner.config.model(),
            request,
            true,
            inner.config.stream_usage,
        ))
        .map_err(|e| Error::invalid_request(format!("the request cannot be encoded: {e}")))?;
        let reader = self
            .with_retries(deadline, || async {
                let response = self.send(&body, deadline).await?;
                let mut reader = StreamReader::new(self.clone(), body_stream(response), deadline);
                // Wait for the first token (or the end): until then a failure is retried.
                match reader.next_chunk().await {
                    Some(Ok(first)) => {
                        reader.pending.push_front(first);
                        Ok(reader)
                    }
                    Some(Err(e)) => Err(e),
                    None => Err(Error::protocol("the stream ended before it began")),
                }
            })
            .await?;
        let stream = futures::stream::unfold(reader, |mut r| async move {
            r.next_chunk().await.map(|c| (c, r))
        });
        Ok(Box::pin(stream))
    }
}

/// Reads a streaming reply and turns its events into [`Chunk`]s.
struct StreamReader {
    provider: OpenAi,
    body: BodyStream,
    parser: SseParser,
    pending: VecDeque<Chunk>,
    deadline: Instant,
    received_any: bool,
    events: usize,
    text_chunks: usize,
    model: Option<String>,
    usage: Usage,
    finish: Option<FinishReason>,
    finished: bool,
}

impl StreamReader {
    fn new(provider: OpenAi, body: BodyStream, deadline: Instant) -> Self {
        Self {
            provider,
            body,
            parser: SseParser::new(),
            pending: VecDeque::new(),
            deadline,
            received_any: false,
            events: 0,
            text_chunks: 0,
            model: None,
            usage: Usage::default(),
            finish: None,
            finished: false,
        }
    }

    fn name(&self) -> &str {
        &self.provider.inner.name
    }

    /// The next chunk; `None` after `Done` or after an error.
    async fn next_chunk(&mut self) -> Option<Result<Chunk>> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(Ok(chunk));
            }
            if self.finished {
                return None;
            }
            match self.read_more().await {
                Ok(()) => {}
                Err(e) => {
                    self.finished = true;
                    self.pending.clear();
                    return Some(Err(e));
                }
            }
        }
    }

    async fn read_more(&mut self) -> Result<()> {
        let timeouts = self.provider.inner.config.timeouts;
        let (limit, stage) = if self.received_any {
            (timeouts.idle, "went silent")
        } else {
            (timeouts.first_byte, "sent nothing")
        };
        let wait = limit.min(left(self.deadline));
        let piece = match timeout(wait, futures::StreamExt::next(&mut self.body)).await {
            Err(_) => {
                return Err(Error::timeout(format!(
                    "the stream from {} {stage} for {wait:?} after {} text chunks",
                    self.name(),
                    self.text_chunks
                )));
            }
            Ok(Some(Err(e))) => {
                return Err(Error::backend(format!(
                    "the stream from {} broke after {} text chunks: {}",
                    self.name(),
                    self.text_chunks,
                    describe(&e)
                ))
                .with_source(e));
            }
            Ok(Some(Ok(piece))) => Some(piece),
            Ok(None) => None,
        };
        let mut events = Vec::new();
        let parsed = match &piece {
            Some(bytes) => {
                self.received_any = true;
                self.parser.feed(bytes, &mut events)
            }
            None => self.parser.finish(&mut events),
        };
        parsed.map_err(|e| {
            Error::protocol(format!("the stream from {} is malformed: {e}", self.name()))
        })?;
        for event in events {
            self.on_event(event)?;
            if self.finished {
                return Ok(());
            }
        }
        if piece.is_none() {
            // The connection closed without `[DONE]`. A finish reason already seen means the
            // answer was whole (some servers close without the marker); otherwise it was cut.
            match self.finish {
                Some(_) => self.end(),
                None => {
                    return Err(Error::backend(format!(
                        "the stream from {} ended after {} text chunks without a finish reason or [DONE]",
                        self.name(),
                        self.text_chunks
                    )));
                }
            }
        }
        Ok(())
    }

    fn on_event(&mut self, event: SseEvent) -> Result<()> {
        self.events += 1;
        let data = event.data.trim();
        if data == "[DONE]" {
            self.end();
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        if event.event.as_deref() == Some("error") && !data.starts_with('{') {
            return Err(Error::backend(format!(
                "{} reported an error mid-stream",
                self.name()
            )));
        }
        let chunk = wire::parse_chunk(data, self.events)?;
        if let Some(err) = &chunk.error {
            let (message, code) = wire::stream_error(err);
            let code = code.map(|c| format!(" [{c}]")).unwrap_or_default();
            return Err(Error::backend(format!(
                "{} reported an error mid-stream: {message}{code}",
                self.name()
            )));
        }
        if let Some(model) = chunk.model.filter(|m| !m.is_empty()) {
            self.model = Some(model);
        }
        if let Some(usage) = &chunk.usage {
            self.usage = usage.to_usage();
        }
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(delta) = choice.delta {
                let text = delta.content.or(delta.refusal).unwrap_or_default();
                if !text.is_empty() {
                    self.text_chunks += 1;
                    self.pending.push_back(Chunk::Text(text));
                }
            }
            if let Some(reason) = choice.finish_reason.as_deref() {
                self.finish = Some(wire::finish_reason(Some(reason)));
            }
        }
        Ok(())
    }

    fn end(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let model = self
            .model
            .take()
            .unwrap_or_else(|| self.provider.inner.config.model().to_owned());
        self.pending.push_back(Chunk::Done {
            usage: self.usage,
            finish_reason: self.finish.unwrap_or_default(),
            model,
        });
    }
}

#[async_trait::async_trait]
impl Backend for OpenAi {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Remote
    }

    fn availability(&self) -> Availability {
        match &self.inner.missing_key {
            Some(reason) => Availability::Failed {
                reason: reason.clone(),
            },
            None => Availability::Ready,
        }
    }

    fn context_window(&self) -> Option<usize> {
        self.inner.config.context_window
    }

    async fn probe(&self) -> Result<()> {
        self.check_reachable().await
    }

    async fn complete(&self, request: &ChatRequest) -> Result<Reply> {
        self.complete_inner(request).await
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChunkStream> {
        self.stream_inner(request).await
    }
}

/// Which failures are worth another try: the provider out of reach, and the statuses that
/// mean "not now" (408, 409, 429, 5xx). Never 400, 401, 403, 404 or 422: the same request
/// would fail the same way.
fn should_retry(error: &Error) -> bool {
    if error.is_offline() {
        return true;
    }
    match error.http_status() {
        Some(status) => matches!(status, 408 | 409 | 429 | 500..=599),
        // A stream that broke before its first token.
        None => !error.is_protocol() && !error.is_timeout() && !error.is_invalid_request(),
    }
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A number in `0..1` that differs between calls and processes, for back-off jitter.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` as seconds (the form providers use; an HTTP date is read as "no advice").
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    raw.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 86_400.0)
        .map(Duration::from_secs_f64)
}

async fn read_limited(response: reqwest::Response, limit: usize, wait: Duration) -> Vec<u8> {
    let mut body = Vec::new();
    let mut stream = body_stream(response);
    let read = async {
        while let Some(Ok(piece)) = futures::StreamExt::next(&mut stream).await {
            body.extend_from_slice(&piece);
            if body.len() >= limit {
                body.truncate(limit);
                break;
            }
        }
    };
    let _ = timeout(wait.min(Duration::from_secs(10)), read).await;
    body
}

/// Maps a failure to send (before any status) onto the router's vocabulary: a connection
/// that could not be opened means the provider is out of reach, which reads as offline.
fn transport_error(name: &str, e: &reqwest::Error) -> Error {
    let detail = describe(e);
    if e.is_connect() {
        Error::offline(format!("cannot connect to {name}: {detail}"))
    } else if e.is_timeout() {
        Error::timeout(format!("{name} timed out: {detail}"))
    } else {
        Error::backend(format!("the request to {name} failed: {detail}"))
    }
}

/// What went wrong, with its causes ("connection refused", "dns error"); never the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "reading the reply failed"
    } else if e.is_request() {
        "sending the request failed"
    } else {
        "HTTP error"
    }
    .to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("1.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        for s in [408, 409, 429, 500, 502, 503, 504] {
            assert!(should_retry(&Error::status(s, "x", None)), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!should_retry(&Error::status(s, "x", None)), "{s}");
        }
        assert!(should_retry(&Error::offline("refused")));
        assert!(!should_retry(&Error::protocol("garbage")));
        assert!(!should_retry(&Error::timeout("slow")));
    }

    /// A transcript with the quirks real servers send: a keep-alive comment, a role-only
    /// first chunk, an empty delta, multi-byte text, `finish_reason` on its own, CRLF line
    /// ends, the usage chunk, `[DONE]`.
    const TRANSCRIPT: &str = concat!(
        ": keep-alive\n\n",
        "data: {\"model\":\"m-1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Héllo\"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\", wörld 🌍\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n",
        "data: [DONE]\n\n",
    );

    fn provider() -> OpenAi {
        match OpenAi::new(crate::OpenAiConfig::new("http://127.0.0.1:9/v1", "m-0")) {
            Ok(p) => p,
            Err(e) => panic!("config: {e}"),
        }
    }

    fn read_all(pieces: Vec<Vec<u8>>) -> Vec<Result<Chunk>> {
        let body: BodyStream = Box::pin(futures::stream::iter(pieces.into_iter().map(Ok)));
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("runtime: {e}"),
        };
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut reader = StreamReader::new(provider(), body, deadline);
            let mut out = Vec::new();
            while let Some(c) = reader.next_chunk().await {
                out.push(c);
            }
            out
        })
    }

    fn cut(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for c in at.into_iter().chain([bytes.len()]) {
            pieces.push(bytes[from..c].to_vec());
            from = c;
        }
        pieces
    }

    fn text_and_done(chunks: &[Result<Chunk>]) -> (String, Option<Chunk>) {
        let mut text = String::new();
        let mut done = None;
        for c in chunks {
            match c {
                Ok(Chunk::Text(t)) => {
                    assert!(!t.is_empty(), "empty text chunk");
                    assert!(done.is_none(), "text after Done");
                    text.push_str(t);
                }
                Ok(d @ Chunk::Done { .. }) => done = Some(d.clone()),
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        (text, done)
    }

    #[test]
    fn whole_transcript_reads_as_text_then_done() {
        let (text, done) = text_and_done(&read_all(vec![TRANSCRIPT.as_bytes().to_vec()]));
        assert_eq!(text, "Héllo, wörld 🌍");
        assert_eq!(
            done,
            Some(Chunk::Done {
                usage: Usage {
                    prompt_tokens: 7,
                    completion_tokens: 3
                },
                finish_reason: FinishReason::Length,
                model: "m-1".into(),
            })
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        #[test]
        fn any_cutting_of_the_stream_reads_the_same(cuts in proptest::collection::vec(0usize..10_000, 0..40)) {
            let whole = text_and_done(&read_all(vec![TRANSCRIPT.as_bytes().to_vec()]));
            let pieces = cut(TRANSCRIPT.as_bytes(), &cuts);
            proptest::prop_assert_eq!(text_and_done(&read_all(pieces)), whole);
        }
    }

    #[test]
    fn a_stream_cut_before_its_end_reports_an_error_after_the_text() {
        let end = TRANSCRIPT
            .find("data: {\"choices\":[{\"index\":0,\"delta\":{},")
            .unwrap_or(0);
        let chunks = read_all(vec![TRANSCRIPT.as_bytes()[..end].to_vec()]);
        let texts: Vec<_> = chunks
            .iter()
            .filter_map(|c| match c {
                Ok(Chunk::Text(t)) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["Héllo", ", wörld 🌍"]);
        let last = chunks
            .last()
            .and_then(|c| c.as_ref().err())
            .map(|e| e.to_string());
        assert!(
            last.as_deref()
                .is_some_and(|m| m.contains("without a finish reason")),
            "{last:?}"
        );
    }

    #[test]
    fn finish_reason_then_close_without_done_is_a_whole_answer() {
        let end = TRANSCRIPT.find("data: {\"choices\":[],").unwrap_or(0);
        let (text, done) = text_and_done(&read_all(vec![TRANSCRIPT.as_bytes()[..end].to_vec()]));
        assert_eq!(text, "Héllo, wörld 🌍");
        assert!(matches!(
            done,
            Some(Chunk::Done {
                finish_reason: FinishReason::Length,
                ..
            })
        ));
    }

    #[test]
    fn garbage_events_are_protocol_errors() {
        let chunks = read_all(vec![b"data: {\"choices\": [tru\n\n".to_vec()]);
        assert!(
            matches!(&chunks[..], [Err(e)] if e.is_protocol()),
            "{chunks:?}"
        );
        let chunks = read_all(vec![b"data: \xff\xfe\n\n".to_vec()]);
        assert!(
            matches!(&chunks[..], [Err(e)] if e.is_protocol()),
            "{chunks:?}"
        );
        let chunks = read_all(vec![
            b"data: {\"error\":{\"message\":\"overloaded\",\"code\":\"busy\"}}\n\n".to_vec(),
        ]);
        let msg = chunks
            .first()
            .and_then(|c| c.as_ref().err())
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("overloaded") && msg.contains("busy"), "{msg}");
    }

    #[test]
    fn a_provider_that_needs_a_key_reports_its_absence() {
        let keyless = OpenAi::new(crate::OpenAiConfig::new(
            "https://api.openai.com/v1",
            "gpt-4o-mini",
        ))
        .unwrap();
        match keyless.availability() {
            Availability::Failed { reason } => {
                assert!(reason.contains("OPENAI_API_KEY"), "{reason}")
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        let keyed = OpenAi::new(
            crate::OpenAiConfig::new("https://api.openai.com/v1", "gpt-4o-mini")
                .with_api_key("sk-x"),
        )
        .unwrap();
        assert_eq!(keyed.availability(), Availability::Ready);
        assert_eq!(
            provider().availability(),
            Availability::Ready,
            "local servers need no key"
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
