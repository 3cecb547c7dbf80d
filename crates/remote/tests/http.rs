//! The provider against real HTTP servers on loopback: wiremock for replies, a raw TCP server
//! where a reply must stall half-way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elmroute_core::{Backend, ChatRequest, Chunk, FinishReason, Message};
use elmroute_remote::{OpenAi, OpenAiConfig, RetryPolicy};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-test-DO-NOT-LOG-7f3a9c";

fn config(server: &MockServer) -> OpenAiConfig {
    OpenAiConfig::new(format!("{}/v1", server.uri()), "test-model")
        .with_api_key(KEY)
        .with_retry(RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(5),
        })
}

fn answer(text: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "test-model-0125",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    })
}

fn request() -> ChatRequest {
    let mut r = ChatRequest::new(vec![
        Message::system("Be brief."),
        Message::user("Explain TCP slow start."),
    ]);
    r.max_tokens = Some(64);
    r.temperature = Some(0.25);
    r.top_p = Some(0.75);
    r.stop = vec!["\n\n".into()];
    r
}

async fn bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn plain_json_answer_and_the_request_schema() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer("Slow start doubles cwnd.")))
        .mount(&server)
        .await;
    let cloud = OpenAi::new(config(&server)).unwrap();
    let reply = cloud.complete(&request()).await.unwrap();
    assert_eq!(reply.text, "Slow start doubles cwnd.");
    assert_eq!(reply.model, "test-model-0125");
    assert_eq!(reply.finish_reason, FinishReason::Stop);
    assert_eq!(
        (reply.usage.prompt_tokens, reply.usage.completion_tokens),
        (12, 5)
    );

    let sent = &bodies(&server).await[0];
    assert_eq!(sent["model"], "test-model");
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain TCP slow start."}])
    );
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["temperature"], 0.25);
    assert_eq!(sent["top_p"], 0.75);
    assert_eq!(sent["stop"], json!(["\n\n"]));
    assert_eq!(sent["stream"], false);
    assert!(sent.get("stream_options").is_none());
    // Fields the request leaves unset are not sent at all: the provider's defaults apply.
    cloud.complete(&ChatRequest::user("hi")).await.unwrap();
    let bare = &bodies(&server).await[1];
    for absent in ["max_tokens", "temperature", "top_p", "stop", "seed"] {
        assert!(bare.get(absent).is_none(), "{absent} sent: {bare}");
    }
}

fn sse(events: &[&str]) -> String {
    let mut body = String::from(": connected\n\n");
    for e in events {
        body.push_str("data: ");
        body.push_str(e);
        body.push_str("\n\n");
    }
    body
}

#[tokio::test]
async fn streams_with_server_quirks_keep_text_usage_and_finish_reason() {
    let server = MockServer::start().await;
    let body = sse(&[
        r#"{"model":"m","choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"Slow "}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":""}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"start."}}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}"#,
        "[DONE]",
    ]);
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(body),
        )
        .mount(&server)
        .await;
    let cloud = OpenAi::new(config(&server)).unwrap();
    let chunks: Vec<_> = cloud.stream(&request()).await.unwrap().collect().await;
    let chunks: Vec<Chunk> = chunks.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        chunks,
        vec![
            Chunk::Text("Slow ".into()),
            Chunk::Text("start.".into()),
            Chunk::Done {
                usage: elmroute_core::Usage {
                    prompt_tokens: 9,
                    completion_tokens: 2
                },
                finish_reason: FinishReason::Stop,
                model: "m".into()
            }
        ]
    );
    let sent = &bodies(&server).await[0];
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn rate_limit_with_retry_after_is_waited_out_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(
                    json!({"error": {"message": "Rate limit reached", "type": "requests"}}),
                ),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer("ok")))
        .mount(&server)
        .await;
    let cloud = OpenAi::new(config(&server)).unwrap();
    let started = Instant::now();
    let reply = cloud.complete(&request()).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(reply.text, "ok");
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After"
    );
    assert_eq!(bodies(&server).await.len(), 2);
}

#[tokio::test]
async fn a_retry_after_longer_than_the_client_waits_comes_back_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "120"))
        .mount(&server)
        .await;
    let cloud = OpenAi::new(config(&server)).unwrap();
    let err = cloud.complete(&request()).await.unwrap_err();
    assert_eq!(err.http_status(), Some(503));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert!(err.is_retryable());
    assert_eq!(bodies(&server).await.len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("upstream exploded"))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer("third time")))
        .mount(&server)
        .await;
    let cloud = OpenAi::new(config(&server)).unwrap();
    assert_eq!(cloud.complete(&request()).await.unwrap().text, "third time");
    assert_eq!(bodies(&server).await.len(), 3);
}

#[tokio::test]
async fn server_errors_past_the_retry_budget_keep_the_status_and_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502).set_body_string("bad gateway"))
        .mount(&server)
        .await;
    let cloud = OpenAi::new(config(&server)).unwrap();
    let err = cloud.complete(&request()).await.unwrap_err();
    assert_eq!(err.http_status(), Some(502));
    assert!(err.to_string().contains("bad gateway"), "{err}");
    assert_eq!(bodies(&server).await.len(), 3, "one try plus two retries");
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    for (status, body) in [
        (
            401,
            json!({"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}),
        ),
        (
            400,
            json!({"error": {"message": "too long", "code": "context_length_exceeded"}}),
        ),
        (403, json!({"error": "forbidden"})),
        (404, json!({"error": {"message": "model not found"}})),
        (422, json!({"detail": "field required"})),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .mount(&server)
            .await;
        let cloud = OpenAi::new(config(&server)).unwrap();
        let err = cloud.complete(&request()).await.unwrap_err();
        assert_eq!(err.http_status(), Some(status));
        assert!(!err.is_retryable(), "{status}");
        assert_eq!(bodies(&server).await.len(), 1, "{status} was retried");
        match status {
            401 => {
                assert!(err.is_auth());
                assert!(
                    err.to_string().contains("Incorrect API key provided"),
                    "{err}"
                );
                assert_eq!(err.provider_code(), Some("invalid_api_key"));
            }
            400 => assert!(err.is_context_length()),
            403 => assert!(err.is_auth()),
            _ => assert!(!err.is_auth() && !err.is_context_length()),
        }
    }
}

#[tokio::test]
async fn a_401_without_a_key_says_how_to_set_one() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "no key"}})),
        )
        .mount(&server)
        .await;
    let cloud = OpenAi::new(OpenAiConfig::new(format!("{}/v1", server.uri()), "m")).unwrap();
    let err = cloud.complete(&request()).await.unwrap_err();
    assert!(err.to_string().contains("OPENAI_API_KEY"), "{err}");
    let sent = server.received_requests().await.unwrap();
    assert!(sent[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn first_byte_timeout_fires() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(answer("late"))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let mut c = config(&server);
    c.timeouts.first_byte = Duration::from_millis(300);
    let cloud = OpenAi::new(c).unwrap();
    let started = Instant::now();
    let err = cloud.complete(&request()).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited for the late reply"
    );
    // Timeouts are not retried: the wait has already been spent.
    assert_eq!(bodies(&server).await.len(), 1);
}

#[tokio::test]
async fn streams_are_retried_before_their_first_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string(sse(&[
            r#"{"choices":[{"delta":{"content":"back"},"finish_reason":"stop"}]}"#,
            "[DONE]",
        ])))
        .mount(&server)
        .await;
    let cloud = OpenAi::new(config(&server)).unwrap();
    let chunks: Vec<_> = cloud.stream(&request()).await.unwrap().collect().await;
    assert!(
        matches!(&chunks[0], Ok(Chunk::Text(t)) if t == "back"),
        "{chunks:?}"
    );
    assert_eq!(bodies(&server).await.len(), 2);
}

#[tokio::test]
async fn malformed_replies_are_protocol_errors() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"choices\": [{\"message\": "))
        .mount(&server)
        .await;
    let cloud = OpenAi::new(config(&server)).unwrap();
    let err = cloud.complete(&request()).await.unwrap_err();
    assert!(err.is_protocol(), "{err}");
    assert!(err.to_string().contains("choices"), "{err}");
    assert_eq!(bodies(&server).await.len(), 1, "garbage is not retried");

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("data: {\"choices\": oops}\n\n"))
        .mount(&server)
        .await;
    let cloud = OpenAi::new(config(&server)).unwrap();
    let err = match cloud.stream(&request()).await {
        Ok(_) => panic!("garbage stream accepted"),
        Err(e) => e,
    };
    assert!(err.is_protocol(), "{err}");
    assert!(err.to_string().contains("stream event 1"), "{err}");
}

#[tokio::test]
async fn connection_refused_reads_as_offline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut c = OpenAiConfig::new(format!("http://127.0.0.1:{port}/v1"), "m");
    c.retry.max_retries = 0;
    let cloud = OpenAi::new(c).unwrap();
    let err = cloud.complete(&request()).await.unwrap_err();
    assert!(err.is_offline(), "{err}");
    assert!(err.is_retryable());
    assert!(cloud.check_reachable().await.unwrap_err().is_offline());
    assert!(Backend::probe(&cloud).await.is_err());
}

#[tokio::test]
async fn probe_reaches_a_live_provider() {
    let server = MockServer::start().await;
    let cloud = OpenAi::new(config(&server)).unwrap();
    cloud.check_reachable().await.unwrap();
    assert!(bodies(&server).await.is_empty(), "a probe sends no request");
}

/// A server that sends `chunks` SSE events on a chunked reply, then goes silent.
async fn stalling_server(chunks: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let _ = socket.write_all(head.as_bytes()).await;
        for i in 0..chunks {
            let event =
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"part{i} \"}}}}]}}\n\n");
            let mut frame = Vec::new();
            write!(frame, "{:x}\r\n{event}\r\n", event.len()).unwrap();
            let _ = socket.write_all(&frame).await;
            let _ = socket.flush().await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn a_stream_that_stalls_reports_its_text_then_an_idle_timeout() {
    let base = stalling_server(3).await;
    let mut c = OpenAiConfig::new(base, "m");
    c.timeouts.idle = Duration::from_millis(400);
    let cloud = OpenAi::new(c).unwrap();
    let started = Instant::now();
    let items: Vec<_> = cloud.stream(&request()).await.unwrap().collect().await;
    let texts: Vec<&str> = items
        .iter()
        .filter_map(|i| match i {
            Ok(Chunk::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["part0 ", "part1 ", "part2 "]);
    let err = items.last().unwrap().as_ref().unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("after 3 text chunks"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Collects everything every tracing event writes, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn the_api_key_never_reaches_logs_or_debug() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer("fine")))
        .mount(&server)
        .await;
    let cloud = OpenAi::new(config(&server)).unwrap();
    cloud.complete(&request()).await.unwrap();
    let debug = format!("{cloud:?} {:?}", cloud.config());
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("retrying cloud request"),
        "the capture works: {logs}"
    );
    assert!(
        !logs.contains(KEY) && !logs.contains("7f3a9c"),
        "key in logs: {logs}"
    );
    assert!(!logs.contains("TCP slow start"), "prompt in logs: {logs}");
    assert!(!debug.contains(KEY), "key in Debug: {debug}");
}
