//! Streams: deltas then the route; fallback before the first token and in the middle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Script, TestBackend, router};
use elmroute_core::{ChatRequest, Error, FallbackKind, StreamEvent, Target};
use elmroute_router::{Policy, Router};
use futures::StreamExt;

/// Collects a stream: the text, the final route, and an error if it ended in one.
async fn collect(
    r: &Router,
    req: ChatRequest,
) -> (String, Option<elmroute_core::Route>, Option<Error>) {
    let mut s = r.stream(req).await.unwrap();
    let mut text = String::new();
    let mut route = None;
    while let Some(item) = s.next().await {
        match item {
            Ok(StreamEvent::Delta(d)) => {
                assert!(route.is_none(), "no delta after Done");
                text.push_str(&d)
            }
            Ok(StreamEvent::Done { route: r, .. }) => route = Some(*r),
            Err(e) => return (text, route, Some(e)),
        }
    }
    (text, route, None)
}

#[tokio::test]
async fn stream_yields_deltas_then_the_route() {
    let local = TestBackend::local("one two three");
    let remote = TestBackend::remote("unused");
    let (text, route, err) = collect(
        &router(Policy::default(), &local, &remote),
        ChatRequest::user("hi"),
    )
    .await;
    assert!(err.is_none());
    assert_eq!(text, "one two three");
    let route = route.unwrap();
    assert_eq!(route.target, Target::Local);
    assert_eq!(route.backend.as_deref(), Some("test-local"));
    assert!(route.timings.first_token_us.is_some());
}

#[tokio::test]
async fn broken_cloud_stream_continues_on_the_device_with_the_text_so_far() {
    let local = TestBackend::local("and the end.");
    let remote = TestBackend::new(
        "test-remote",
        elmroute_core::BackendKind::Remote,
        Script::BreakAfter("The beginning of a long answer".into(), 3),
    );
    let req = ChatRequest::user(
        "Explain step by step and prove, then implement in Rust, the derivation of the integral",
    );
    let (text, route, err) = collect(&router(Policy::default(), &local, &remote), req).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "The beginning of and the end.");
    let route = route.unwrap();
    assert_eq!(route.target, Target::Local);
    let fb = route.fallback.unwrap();
    assert_eq!(fb.kind, FallbackKind::MidStream);
    assert_eq!(fb.from, Target::Cloud);
    // The device saw the partial answer as context.
    let sent = local.received();
    assert_eq!(sent.len(), 1);
    let msgs = &sent[0].messages;
    assert_eq!(msgs[msgs.len() - 2].content, "The beginning of");
}

#[tokio::test]
async fn mid_stream_switch_can_be_disabled() {
    let local = TestBackend::local("unused");
    let remote = TestBackend::new(
        "test-remote",
        elmroute_core::BackendKind::Remote,
        Script::BreakAfter("The beginning of a long answer".into(), 2),
    );
    let mut p = Policy::default();
    p.fallback.mid_stream = false;
    let req = ChatRequest::user("hi").with_mode(elmroute_core::Mode::PreferCloud);
    let (text, route, err) = collect(&router(p, &local, &remote), req).await;
    assert_eq!(text, "The beginning");
    assert!(route.is_none());
    assert!(err.unwrap().is_offline());
    assert_eq!(local.calls(), 0);
}

#[tokio::test]
async fn broken_local_stream_does_not_move_private_text_to_the_cloud() {
    let local = TestBackend::new(
        "test-local",
        elmroute_core::BackendKind::Local,
        Script::BreakAfter("Your card 4111 1111 1111 1111 is valid".into(), 4),
    );
    let remote = TestBackend::remote("unused");
    let req = ChatRequest::user("is my card 4111 1111 1111 1111 valid?");
    let (_, _, err) = collect(&router(Policy::default(), &local, &remote), req).await;
    assert!(err.is_some());
    assert_eq!(remote.calls(), 0);
}

#[tokio::test]
async fn stream_restores_redacted_values() {
    let local = TestBackend::local("unused");
    let remote = TestBackend::remote("Sure, I emailed [EMAIL_1] today.");
    let req = ChatRequest::user("Email jane.doe@example.com a summary of the meeting")
        .with_mode(elmroute_core::Mode::PreferCloud);
    let (text, route, err) = collect(&router(Policy::default(), &local, &remote), req).await;
    assert!(err.is_none());
    assert_eq!(text, "Sure, I emailed jane.doe@example.com today.");
    assert_eq!(route.unwrap().redactions, 1);
    assert!(!remote.all_text().contains("jane.doe"));
}

#[tokio::test]
async fn stream_error_before_first_token_falls_back() {
    let local = TestBackend::local("local words");
    let remote = TestBackend::remote("unused");
    remote.set_script(Script::Fail(|| Error::timeout("connect")));
    let req = ChatRequest::user("hi").with_mode(elmroute_core::Mode::PreferCloud);
    let (text, route, err) = collect(&router(Policy::default(), &local, &remote), req).await;
    assert!(err.is_none());
    assert_eq!(text, "local words");
    assert_eq!(
        route.unwrap().fallback.unwrap().kind,
        FallbackKind::RemoteErrorToLocal
    );
}

#[tokio::test]
async fn private_text_in_a_local_partial_answer_forbids_moving_to_the_cloud() {
    let local = TestBackend::new(
        "test-local",
        elmroute_core::BackendKind::Local,
        Script::BreakAfter(
            "Use 4111 1111 1111 1111 for tests and nothing else".into(),
            6,
        ),
    );
    let remote = TestBackend::remote("unused");
    let (text, _, err) = collect(
        &router(Policy::default(), &local, &remote),
        ChatRequest::user("Give me a test card number"),
    )
    .await;
    assert!(text.contains("4111"));
    assert!(err.is_some());
    assert_eq!(remote.calls(), 0);
}

#[tokio::test]
async fn a_local_partial_answer_is_redacted_before_the_cloud_continues_it() {
    let local = TestBackend::new(
        "test-local",
        elmroute_core::BackendKind::Local,
        Script::BreakAfter("Ask jane.doe@example.com about the plan".into(), 3),
    );
    let remote = TestBackend::remote("about it");
    let (text, route, err) = collect(
        &router(Policy::default(), &local, &remote),
        ChatRequest::user("Who should I ask?"),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "Ask jane.doe@example.com about about it");
    assert_eq!(
        route.unwrap().fallback.unwrap().kind,
        FallbackKind::MidStream
    );
    assert!(
        !remote.all_text().contains("jane.doe"),
        "{}",
        remote.all_text()
    );
    assert!(remote.all_text().contains("[EMAIL_1]"));
}

#[tokio::test]
async fn mid_stream_switch_to_the_cloud_respects_local_error_to_cloud() {
    let local = TestBackend::new(
        "test-local",
        elmroute_core::BackendKind::Local,
        Script::BreakAfter("one two three four".into(), 2),
    );
    let remote = TestBackend::remote("unused");
    let mut p = Policy::default();
    p.fallback.local_error_to_cloud = false;
    let (text, _, err) = collect(&router(p, &local, &remote), ChatRequest::user("hi")).await;
    assert_eq!(text, "one two");
    assert!(err.is_some());
    assert_eq!(remote.calls(), 0);
}

#[tokio::test]
async fn text_held_for_a_placeholder_is_not_lost_when_the_stream_breaks() {
    let local = TestBackend::local("then more");
    let remote = TestBackend::new(
        "test-remote",
        elmroute_core::BackendKind::Remote,
        Script::BreakAfter("Write to [EMAIL_1] and [EM never".into(), 5),
    );
    let req = ChatRequest::user("Email jane@example.org a summary")
        .with_mode(elmroute_core::Mode::PreferCloud);
    let (text, route, err) = collect(&router(Policy::default(), &local, &remote), req).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "Write to jane@example.org and [EM then more");
    assert_eq!(route.unwrap().target, Target::Local);
    let continued = &local.received()[0].messages;
    assert_eq!(
        continued[continued.len() - 2].content,
        "Write to jane@example.org and [EM"
    );
}

#[tokio::test]
async fn a_scorer_returning_nan_cannot_poison_the_route() {
    struct Broken;
    impl elmroute_router::ComplexityScorer for Broken {
        fn score(&self, _: &ChatRequest) -> f32 {
            f32::NAN
        }
    }
    let r = Router::builder()
        .local(TestBackend::local("x"))
        .remote(TestBackend::remote("y"))
        .complexity(Broken)
        .build()
        .unwrap();
    let route = r.decide(&ChatRequest::user("hi")).unwrap();
    assert_eq!(route.scores.complexity, 0.0);
    assert!(route.scores.total.is_finite());
    let json = serde_json::to_value(&route).unwrap();
    assert!(json["scores"]["complexity"].is_number());
}
