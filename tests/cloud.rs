//! The router with a real OpenAI-compatible provider on loopback (wiremock) and an in-process
//! device backend: what an app sees when the cloud answers, fails, or is out of reach.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use elmroute::{
    Availability, Backend, BackendKind, ChatRequest, Chunk, ChunkStream, DeviceState, FallbackKind,
    FinishReason, Network, OpenAi, OpenAiConfig, Policy, Reply, Router, Rule, StreamEvent, Target,
    Usage,
};
use futures::StreamExt;
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const HARD: &str = "Derive step by step the closed form of the recurrence T(n) = 2T(n/2) + n log n, \
    prove it by induction, then compare it with the master theorem and analyse the edge cases \
    in a detailed essay with worked examples.";
const PRIVATE: &str = "My name is Dana Whitfield, my card 4111 1111 1111 1111 was charged twice \
    and my IBAN is GB82 WEST 1234 5698 7654 32; please prove step by step what went wrong.";

/// A device model that answers with a fixed text and counts its calls.
#[derive(Clone, Default)]
struct Device(Arc<AtomicUsize>);

#[async_trait::async_trait]
impl Backend for Device {
    fn name(&self) -> &str {
        "device"
    }
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }
    fn availability(&self) -> Availability {
        Availability::Ready
    }
    fn context_window(&self) -> Option<usize> {
        Some(4096)
    }
    async fn complete(&self, _: &ChatRequest) -> elmroute::Result<Reply> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Reply {
            text: "device answer".into(),
            usage: Usage::default(),
            finish_reason: FinishReason::Stop,
            model: "device".into(),
        })
    }
    async fn stream(&self, _: &ChatRequest) -> elmroute::Result<ChunkStream> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Box::pin(futures::stream::iter([
            Ok(Chunk::Text("device ".into())),
            Ok(Chunk::Text("answer".into())),
            Ok(Chunk::Done {
                usage: Usage::default(),
                finish_reason: FinishReason::Stop,
                model: "device".into(),
            }),
        ])))
    }
}

fn cloud_answer(text: &str) -> serde_json::Value {
    json!({
        "model": "cloud-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 4}
    })
}

/// A provider on loopback that answers every request with "cloud answer".
async fn answering_cloud() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(cloud_answer("cloud answer")))
        .mount(&server)
        .await;
    server
}

fn cloud(base: String) -> OpenAi {
    let mut config = OpenAiConfig::new(base, "cloud-model").with_api_key("sk-test-router");
    config.retry.base_delay = Duration::from_millis(10);
    config.retry.max_delay = Duration::from_millis(20);
    OpenAi::new(config).unwrap()
}

fn router(server_url: String, device: &Device, network: Network) -> Router {
    let state = DeviceState {
        network,
        ..DeviceState::default()
    };
    Router::builder()
        .policy(
            Policy::from_file(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/policies/balanced.toml"
            ))
            .unwrap(),
        )
        .local(device.clone())
        .remote(cloud(format!("{server_url}/v1")))
        .device(state)
        .build()
        .unwrap()
}

/// Streams `prompt` through `router`: the text and the route of its `Done` event.
async fn streamed(router: &Router, prompt: &str) -> (String, Box<elmroute::Route>) {
    let mut stream = router.stream(ChatRequest::user(prompt)).await.unwrap();
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Delta(d) => text.push_str(&d),
            StreamEvent::Done { route, .. } => return (text, route),
        }
    }
    panic!("the stream ended without a route; text so far: {text}");
}

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.unwrap_or_default().len()
}

#[tokio::test]
async fn an_online_complex_prompt_is_answered_by_the_cloud() {
    let server = answering_cloud().await;
    let device = Device::default();
    let r = router(server.uri(), &device, Network::Online);
    let c = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!(c.text, "cloud answer");
    assert_eq!(c.route.target, Target::Cloud);
    assert_eq!(c.route.backend.as_deref(), Some("openai:cloud-model"));
    assert_eq!(c.usage.prompt_tokens, 40);
    assert_eq!(device.0.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_cloud_stream_reaches_the_app_through_the_router() {
    let server = MockServer::start().await;
    let body = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"cloud \"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"stream\"},\"finish_reason\":\"stop\"}]}\n\n\
        data: [DONE]\n\n";
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string(body))
        .mount(&server)
        .await;
    let device = Device::default();
    let r = router(server.uri(), &device, Network::Online);
    let (text, route) = streamed(&r, HARD).await;
    assert_eq!(text, "cloud stream");
    assert_eq!(route.target, Target::Cloud);
}

#[tokio::test]
async fn a_cloud_503_falls_back_to_the_device() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(503).set_body_json(json!({"error": {"message": "overloaded"}})),
        )
        .mount(&server)
        .await;
    let device = Device::default();
    let r = router(server.uri(), &device, Network::Online);
    let c = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!(c.text, "device answer");
    assert_eq!(c.route.target, Target::Local);
    let fallback = c.route.fallback.as_ref().unwrap();
    assert_eq!(fallback.kind, FallbackKind::RemoteErrorToLocal);
    assert!(
        fallback.reason.contains("503") && fallback.reason.contains("overloaded"),
        "{}",
        fallback.reason
    );
    assert_eq!(
        requests(&server).await,
        3,
        "one try and two retries before giving up"
    );
}

#[tokio::test]
async fn offline_routes_to_the_device_without_touching_the_network() {
    let server = answering_cloud().await;
    let device = Device::default();
    let r = router(server.uri(), &device, Network::Offline);
    let c = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!(c.text, "device answer");
    assert!(c.route.fired(Rule::Offline));
    assert_eq!(requests(&server).await, 0);
}

#[tokio::test]
async fn a_provider_out_of_reach_costs_one_failed_connection_not_one_per_request() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let device = Device::default();
    let r = router(base, &device, Network::Online);
    let first = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!(
        first.route.fallback.unwrap().kind,
        FallbackKind::RemoteErrorToLocal
    );
    let second = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert!(
        second.route.fired(Rule::Offline),
        "{}",
        second.route.explain()
    );
    assert!(
        second.route.explain().contains("could not be reached"),
        "{}",
        second.route.explain()
    );
    assert_eq!(device.0.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn private_prompts_never_reach_the_cloud() {
    let server = answering_cloud().await;
    let device = Device::default();
    let r = router(server.uri(), &device, Network::Online);
    let c = r.complete(ChatRequest::user(PRIVATE)).await.unwrap();
    assert_eq!(c.route.target, Target::Local);
    assert_eq!(requests(&server).await, 0);
}

#[test]
fn a_policy_remote_table_builds_the_provider() {
    let policy = Policy::from_toml(
        "[remote]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\napi_key_env = \"ELMROUTE_TEST_UNSET_KEY\"\nname = \"lab-vllm\"\ncontext_window = 32768\n",
        "inline.toml",
    )
    .unwrap();
    let cloud = elmroute::cloud_from_policy(&policy).unwrap().unwrap();
    assert_eq!(cloud.name(), "lab-vllm");
    assert_eq!(cloud.context_window(), Some(32768));
    assert!(!cloud.config().has_api_key());
    assert!(
        elmroute::cloud_from_policy(&Policy::default())
            .unwrap()
            .is_none()
    );
}

/// A provider that streams `parts` and then drops the connection mid-answer.
async fn dropping_provider(parts: &'static [&'static str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        let _ = socket.read(&mut buf).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let _ = socket.write_all(head.as_bytes()).await;
        for part in parts {
            let event =
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{part}\"}}}}]}}\n\n");
            let frame = format!("{:x}\r\n{event}\r\n", event.len());
            let _ = socket.write_all(frame.as_bytes()).await;
            let _ = socket.flush().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The network goes: the socket closes without the chunked terminator or [DONE].
    });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn a_stream_cut_by_the_network_continues_on_the_device() {
    let base = dropping_provider(&["The recurrence ", "unrolls to "]).await;
    let device = Device::default();
    let state = DeviceState::default();
    let router = Router::builder()
        .policy(Policy::default())
        .local(device.clone())
        .remote(cloud(base))
        .device(state)
        .build()
        .unwrap();
    let (text, route) = streamed(&router, HARD).await;
    assert!(text.starts_with("The recurrence unrolls to "), "{text}");
    assert!(
        text.ends_with("device answer"),
        "the device continued: {text}"
    );
    assert_eq!(route.target, Target::Local);
    let fallback = route.fallback.as_ref().unwrap();
    assert_eq!(fallback.kind, FallbackKind::MidStream);
    assert_eq!(fallback.from, Target::Cloud);
    assert_eq!(device.0.load(Ordering::SeqCst), 1);
}
