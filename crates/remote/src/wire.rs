//! The OpenAI chat completions wire format: the request body we send and the replies we
//! accept, with the variations real servers produce.

use elmroute_core::{ChatRequest, Error, FinishReason, Role, Usage};
use serde::{Deserialize, Serialize};

/// The request body, named as the OpenAI schema names its fields.
#[derive(Debug, Serialize)]
pub(crate) struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

impl std::fmt::Debug for WireMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({} bytes)", self.role, self.content.len())
    }
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

impl<'a> ChatBody<'a> {
    pub(crate) fn new(
        model: &'a str,
        request: &'a ChatRequest,
        stream: bool,
        stream_usage: bool,
    ) -> Self {
        let messages = request
            .messages
            .iter()
            .map(|m| WireMessage {
                role: match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                },
                content: &m.content,
            })
            .collect();
        Self {
            model,
            messages,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            stop: &request.stop,
            seed: request.seed,
            stream,
            stream_options: (stream && stream_usage).then_some(StreamOptions {
                include_usage: true,
            }),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl WireUsage {
    pub(crate) fn to_usage(&self) -> Usage {
        let clamp = |v: Option<u64>| u32::try_from(v.unwrap_or(0)).unwrap_or(u32::MAX);
        Usage {
            prompt_tokens: clamp(self.prompt_tokens),
            completion_tokens: clamp(self.completion_tokens),
        }
    }
}

/// A one-piece reply.
#[derive(Deserialize)]
pub(crate) struct ChatResponse {
    #[serde(default)]
    pub(crate) model: Option<String>,
    pub(crate) choices: Vec<Choice>,
    #[serde(default)]
    pub(crate) usage: Option<WireUsage>,
}

#[derive(Deserialize)]
pub(crate) struct Choice {
    #[serde(default)]
    pub(crate) message: Option<ReplyMessage>,
    #[serde(default)]
    pub(crate) finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct ReplyMessage {
    #[serde(default)]
    pub(crate) content: Option<String>,
    /// OpenAI's refusal text, sent instead of content when the model declines.
    #[serde(default)]
    pub(crate) refusal: Option<String>,
}

/// One `data:` object of a stream.
#[derive(Deserialize)]
pub(crate) struct StreamChunk {
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) choices: Vec<StreamChoice>,
    #[serde(default)]
    pub(crate) usage: Option<WireUsage>,
    /// Some servers report a failure inside the stream instead of with a status.
    #[serde(default)]
    pub(crate) error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(crate) struct StreamChoice {
    #[serde(default)]
    pub(crate) delta: Option<Delta>,
    #[serde(default)]
    pub(crate) finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct Delta {
    #[serde(default)]
    pub(crate) content: Option<String>,
    #[serde(default)]
    pub(crate) refusal: Option<String>,
}

/// Maps the provider's `finish_reason`.
pub(crate) fn finish_reason(raw: Option<&str>) -> FinishReason {
    match raw {
        Some("length") | Some("max_tokens") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// Parses a one-piece reply, or says which part of it was not as expected.
pub(crate) fn parse_response(body: &[u8]) -> Result<ChatResponse, Error> {
    let response: ChatResponse = serde_json::from_slice(body).map_err(|e| {
        Error::protocol(format!(
            "the chat completion reply is not the expected JSON ({e}); expected an object with `choices[0].message.content`"
        ))
    })?;
    if response.choices.is_empty() {
        return Err(Error::protocol(
            "the chat completion reply has an empty `choices` array; expected one choice",
        ));
    }
    Ok(response)
}

/// Parses one stream event's data.
pub(crate) fn parse_chunk(data: &str, index: usize) -> Result<StreamChunk, Error> {
    serde_json::from_str(data).map_err(|e| {
        Error::protocol(format!(
            "stream event {index} is not a chat completion chunk ({e}); expected JSON with `choices[0].delta`"
        ))
    })
}

/// The longest provider message kept in an error.
const MAX_MESSAGE_CHARS: usize = 500;

/// What a provider said about a failure: its message and machine-readable code, from the
/// shapes OpenAI (`{"error":{"message","type","code"}}`), Ollama and TGI (`{"error":"..."}`,
/// `error_type`) and FastAPI servers such as vLLM (`{"detail": ...}` or `{"message"}`) use.
/// A body that is not JSON is kept as text, shortened.
pub(crate) fn provider_error(body: &[u8]) -> (String, Option<String>) {
    let shorten = |s: &str| -> String {
        let s = s.trim();
        match s.char_indices().nth(MAX_MESSAGE_CHARS) {
            Some((cut, _)) => format!("{}…", &s[..cut]),
            None => s.to_owned(),
        }
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(body);
        return if text.trim().is_empty() {
            ("(no message)".into(), None)
        } else {
            (shorten(&text), None)
        };
    };
    error_value(&v, &shorten)
}

/// Like [`provider_error`] for an already parsed value (a stream's `error` field).
pub(crate) fn error_value(
    v: &serde_json::Value,
    shorten: &dyn Fn(&str) -> String,
) -> (String, Option<String>) {
    let as_code = |c: &serde_json::Value| match c {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let err = v.get("error").unwrap_or(v);
    let message = match err {
        serde_json::Value::String(s) => Some(s.clone()),
        _ => err
            .get("message")
            .and_then(|m| m.as_str().map(str::to_owned))
            .or_else(|| {
                v.get("detail").map(|d| match d {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            })
            .or_else(|| v.get("message").and_then(|m| m.as_str().map(str::to_owned))),
    };
    let code = err
        .get("code")
        .and_then(as_code)
        .or_else(|| err.get("type").and_then(as_code))
        .or_else(|| v.get("error_type").and_then(as_code));
    let message = message.map_or_else(|| shorten(&v.to_string()), |m| shorten(&m));
    (message, code)
}

/// A short message for an error inside a stream.
pub(crate) fn stream_error(v: &serde_json::Value) -> (String, Option<String>) {
    let shorten = |s: &str| -> String {
        match s.char_indices().nth(MAX_MESSAGE_CHARS) {
            Some((cut, _)) => format!("{}…", &s[..cut]),
            None => s.to_owned(),
        }
    };
    error_value(v, &shorten)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn provider_error_shapes() {
        let (m, c) = provider_error(
            br#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        );
        assert_eq!(m, "Incorrect API key");
        assert_eq!(c.as_deref(), Some("invalid_api_key"));
        let (m, c) = provider_error(br#"{"error":"model not found","error_type":"not_found"}"#);
        assert_eq!(
            (m.as_str(), c.as_deref()),
            ("model not found", Some("not_found"))
        );
        let (m, _) =
            provider_error(br#"{"detail":[{"loc":["body","messages"],"msg":"field required"}]}"#);
        assert!(m.contains("field required"), "{m}");
        let (m, c) = provider_error(b"<html>Bad Gateway</html>");
        assert_eq!((m.as_str(), c), ("<html>Bad Gateway</html>", None));
        let (m, _) = provider_error(b"");
        assert_eq!(m, "(no message)");
        let long = "x".repeat(2000);
        let (m, _) = provider_error(long.as_bytes());
        assert_eq!(m.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn finish_reasons_map() {
        assert_eq!(finish_reason(Some("length")), FinishReason::Length);
        assert_eq!(
            finish_reason(Some("content_filter")),
            FinishReason::ContentFilter
        );
        assert_eq!(finish_reason(Some("stop")), FinishReason::Stop);
        assert_eq!(finish_reason(Some("tool_calls")), FinishReason::Stop);
        assert_eq!(finish_reason(None), FinishReason::Stop);
    }

    #[test]
    fn replies_without_choices_are_protocol_errors() {
        let e = parse_response(br#"{"choices":[]}"#).err().unwrap();
        assert!(e.is_protocol());
        let e = parse_response(br#"{"id":"x"}"#).err().unwrap();
        assert!(e.to_string().contains("choices"), "{e}");
        let e = parse_response(b"not json").err().unwrap();
        assert!(e.is_protocol());
    }
}
