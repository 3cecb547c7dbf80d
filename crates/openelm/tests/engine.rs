//! The engine through core's `Backend` trait on a tokio runtime: complete, stream, the bounded
//! queue, cancellation by dropping a stream, and availability.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use elmroute_core::{Availability, Backend, BackendKind, ChatRequest, Chunk, FinishReason};
use elmroute_openelm::{GenerationConfig, LoadOptions, OpenElm};
use futures::StreamExt;

fn greedy_opts() -> LoadOptions {
    LoadOptions::default()
        .with_name("openelm-test")
        .with_defaults(GenerationConfig::greedy(64))
}

/// Copies a fixture checkpoint and the fixture tokenizer into one model directory.
fn model_dir(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tmp");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(common::fixture(name).join(f), tmp.path().join(f)).expect("copy");
    }
    std::fs::copy(
        common::fixture("tokenizer/tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .expect("copy tokenizer");
    tmp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_and_stream_give_the_same_answer() {
    let dir = model_dir("tiny-gqa");
    let engine = OpenElm::from_dir(dir.path(), greedy_opts()).expect("engine");
    assert_eq!(engine.availability(), Availability::Ready);
    assert_eq!(engine.kind(), BackendKind::Local);
    assert_eq!(engine.name(), "openelm-test");
    assert_eq!(engine.context_window(), Some(128));

    let req = ChatRequest::user("the request").with_max_tokens(12);
    let reply = engine.complete(&req).await.expect("complete");
    assert_eq!(reply.model, "openelm-test");
    assert_eq!(reply.usage.completion_tokens, 12);
    assert_eq!(reply.finish_reason, FinishReason::Length);
    let tok = engine.tokenizer().expect("loaded");
    assert_eq!(
        reply.usage.prompt_tokens as usize,
        tok.encode("the request", true).expect("encode").len()
    );

    let mut stream = engine.stream(&req).await.expect("stream");
    let mut text = String::new();
    let mut done = None;
    while let Some(item) = stream.next().await {
        match item.expect("chunk") {
            Chunk::Text(t) => {
                assert!(!t.is_empty(), "text chunks are never empty");
                assert!(done.is_none(), "nothing after Done");
                text.push_str(&t);
            }
            Chunk::Done {
                usage,
                finish_reason,
                ..
            } => done = Some((usage, finish_reason)),
        }
    }
    assert_eq!(text, reply.text);
    assert_eq!(done, Some((reply.usage, reply.finish_reason)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_requests_repeat_and_estimate_uses_the_tokenizer() {
    let engine = common::engine(common::model("tiny-gqa"), LoadOptions::default());
    let req = ChatRequest::user("the router")
        .with_max_tokens(16)
        .with_temperature(1.0)
        .with_seed(11);
    let a = engine.complete(&req).await.expect("a");
    let b = engine.complete(&req).await.expect("b");
    assert_eq!(a, b);
    let text = "the router decides where the request should go";
    let exact = common::tokenizer()
        .encode(text, false)
        .expect("encode")
        .len();
    assert_eq!(engine.estimate_tokens(text), exact);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_busy() {
    let engine = common::engine(common::long_model(), greedy_opts().with_queue_capacity(1));
    let long = ChatRequest::user("the request").with_max_tokens(3000);
    // The first request runs (its first chunk proves the worker took it) ...
    let mut running = engine.stream(&long).await.expect("first");
    assert!(running.next().await.is_some());
    // ... the second waits in the queue of one ...
    let _queued = engine.stream(&long).await.expect("second waits");
    // ... and the third finds the queue full.
    let err = engine.stream(&long).await.err().expect("busy");
    assert!(err.is_busy(), "{err}");
    assert!(err.is_retryable());
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_stops_generation_within_one_token() {
    let engine = common::engine(common::long_model(), greedy_opts());
    let req = ChatRequest::user("the request").with_max_tokens(3000);
    let mut stream = engine.stream(&req).await.expect("stream");
    let mut seen = 0;
    while seen < 3 {
        match stream.next().await {
            Some(Ok(Chunk::Text(_))) => seen += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(stream);
    let after_drop = engine.generated_tokens();
    // Wait until the worker has stopped counting tokens.
    let mut last = after_drop;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = engine.generated_tokens();
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let at_drop = engine.generated_tokens();
    // At most the token in flight when the stream was dropped.
    assert!(
        at_drop <= after_drop + 1,
        "{} tokens generated after the drop",
        at_drop - after_drop
    );
    // The worker is free again: a new request completes.
    let reply = engine
        .complete(&ChatRequest::user("the").with_max_tokens(4))
        .await
        .expect("after cancel");
    assert_eq!(reply.usage.completion_tokens, 4);
    assert_eq!(engine.generated_tokens(), at_drop + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_goes_from_not_loaded_through_loading_to_ready() {
    let dir = model_dir("hd128");
    let engine = OpenElm::lazy(dir.path(), greedy_opts());
    assert_eq!(engine.availability(), Availability::NotLoaded);
    assert_eq!(engine.context_window(), None);
    let err = engine
        .complete(&ChatRequest::user("hi"))
        .await
        .expect_err("not loaded");
    assert!(err.is_not_ready(), "{err}");
    engine.start_loading();
    let first = engine.availability();
    assert!(
        matches!(first, Availability::Loading { .. } | Availability::Ready),
        "{first:?}"
    );
    assert_eq!(engine.wait_loaded(), Availability::Ready);
    let reply = engine
        .complete(&ChatRequest::user("hi").with_max_tokens(3))
        .await
        .expect("ready");
    assert_eq!(reply.usage.completion_tokens, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_checkpoint_reports_failed_with_the_reason() {
    let dir = model_dir("tiny-gqa");
    let bytes = std::fs::read(dir.path().join("model.safetensors")).expect("read");
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 3],
    )
    .expect("cut");
    let engine = OpenElm::spawn(dir.path(), greedy_opts());
    match engine.wait_loaded() {
        Availability::Failed { reason } => {
            assert!(reason.contains("model.safetensors"), "{reason}")
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let err = engine
        .complete(&ChatRequest::user("hi"))
        .await
        .expect_err("failed");
    assert!(err.is_not_ready(), "{err}");

    let missing = OpenElm::spawn(dir.path().join("nowhere"), greedy_opts());
    assert!(matches!(missing.wait_loaded(), Availability::Failed { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_overflow_is_typed_and_left_truncation_serves_it() {
    let long = ["the router decides where the request should go"; 6].join(" ");
    let req = ChatRequest::user(long).with_max_tokens(40);
    let strict = common::engine(common::model("tiny-gqa"), greedy_opts());
    let err = strict.complete(&req).await.expect_err("overflow");
    assert!(err.is_context_overflow(), "{err}");

    let lenient = common::engine(
        common::model("tiny-gqa"),
        greedy_opts().with_truncate_left(true),
    );
    let reply = lenient.complete(&req).await.expect("truncated");
    assert_eq!(reply.usage.prompt_tokens, 128 - 40);

    // Without max_tokens, a truncated prompt still leaves the default answer length (not
    // whatever room the uncut prompt left).
    let open_ended =
        ChatRequest::user(["the router decides where the request should go"; 6].join(" "))
            .with_truncation(elmroute_core::Truncation::Left);
    let reply = strict
        .complete(&open_ended)
        .await
        .expect("open-ended truncated");
    let n = reply.usage.completion_tokens;
    assert!(n > 1 && n <= 64, "{:?}", reply.usage);

    // The request itself may ask for left truncation, on an engine that does not default to it.
    let per_request = req.clone().with_truncation(elmroute_core::Truncation::Left);
    let reply = strict
        .complete(&per_request)
        .await
        .expect("truncated per request");
    assert_eq!(reply.usage.prompt_tokens, 128 - 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_top_k_one_is_greedy_whatever_the_temperature() {
    let engine = common::engine(common::model("tiny-gqa"), greedy_opts());
    let greedy = engine
        .complete(
            &ChatRequest::user("the router")
                .with_max_tokens(12)
                .with_temperature(0.0),
        )
        .await
        .expect("greedy");
    for seed in [1u64, 2, 3] {
        let req = ChatRequest::user("the router")
            .with_max_tokens(12)
            .with_temperature(1.5)
            .with_top_k(1)
            .with_seed(seed);
        let reply = engine.complete(&req).await.expect("top-k 1");
        assert_eq!(reply.text, greedy.text, "seed {seed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_served_in_order() {
    let engine = common::engine(common::long_model(), greedy_opts());
    let mut streams = Vec::new();
    for n in [5u32, 6, 7] {
        let req = ChatRequest::user("the").with_max_tokens(n);
        streams.push(engine.stream(&req).await.expect("queued"));
    }
    let mut finished = Vec::new();
    let mut futs: futures::stream::FuturesUnordered<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| async move {
            let items: Vec<_> = s.collect().await;
            (i, items.len())
        })
        .collect();
    while let Some((i, _)) = futs.next().await {
        finished.push(i);
    }
    assert_eq!(finished, vec![0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_reports_progress_while_it_runs() {
    use std::sync::{Arc, Mutex};
    let dir = model_dir("bf16");
    let reported = Arc::new(Mutex::new(Vec::<f32>::new()));
    let sink = Arc::clone(&reported);
    let engine = OpenElm::spawn(
        dir.path(),
        greedy_opts().with_progress(move |p| sink.lock().expect("lock").push(p)),
    );
    // Whatever availability is seen while loading carries a fraction in 0..=1.
    loop {
        match engine.availability() {
            Availability::Loading { progress } => assert!((0.0..=1.0).contains(&progress)),
            Availability::Ready => break,
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seen = reported.lock().expect("lock").clone();
    assert!(seen.len() > 10, "one report per tensor: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "monotonic: {seen:?}");
    assert!(seen[0] > 0.0 && seen[0] < 1.0);
    assert_eq!(seen.last().copied(), Some(1.0));
}
