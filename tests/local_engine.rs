//! The router with the real OpenELM engine on a tiny fixture checkpoint: completion,
//! streaming, fallback from a failing cloud, and the assistant binary generating on-device.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(feature = "local")]

mod common;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use elmroute::openelm::GenerationConfig;
use elmroute::{
    Availability, Backend, BackendKind, ChatRequest, ChunkStream, Error, FallbackKind, LoadOptions,
    Mode, OpenElm, Reply, Router, StreamEvent, Target,
};
use futures::StreamExt;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/openelm/tests/fixtures")
}

/// A model directory: a fixture checkpoint plus the fixture tokenizer.
fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny-gqa").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(
        fixtures().join("tokenizer/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    dir
}

fn engine(dir: &Path) -> OpenElm {
    OpenElm::from_dir(
        dir,
        LoadOptions::default().with_defaults(GenerationConfig::greedy(16)),
    )
    .unwrap()
}

/// A cloud that is down.
struct DownCloud;

#[async_trait]
impl Backend for DownCloud {
    fn name(&self) -> &str {
        "down-cloud"
    }
    fn kind(&self) -> BackendKind {
        BackendKind::Remote
    }
    fn availability(&self) -> Availability {
        Availability::Ready
    }
    async fn complete(&self, _: &ChatRequest) -> elmroute::Result<Reply> {
        Err(Error::offline("connection refused"))
    }
    async fn stream(&self, _: &ChatRequest) -> elmroute::Result<ChunkStream> {
        Err(Error::offline("connection refused"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_completes_and_streams_on_the_real_engine() {
    let dir = model_dir();
    let router = Router::builder().local(engine(dir.path())).build().unwrap();
    let req = ChatRequest::user("the router")
        .with_max_tokens(8)
        .with_temperature(0.0);
    let c = router.complete(req.clone()).await.unwrap();
    assert_eq!(c.route.target, Target::Local);
    assert_eq!(c.usage.completion_tokens, 8);
    assert!(!c.text.is_empty());

    let mut s = router.stream(req).await.unwrap();
    let mut text = String::new();
    let mut done = None;
    while let Some(ev) = s.next().await {
        match ev.unwrap() {
            StreamEvent::Delta(d) => text.push_str(&d),
            StreamEvent::Done { usage, route, .. } => done = Some((usage, route)),
        }
    }
    let (usage, route) = done.unwrap();
    assert_eq!(text, c.text, "greedy stream equals greedy completion");
    assert_eq!(usage.completion_tokens, 8);
    assert!(route.backend.unwrap().starts_with("openelm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_cloud_falls_back_to_the_real_engine() {
    let dir = model_dir();
    let router = Router::builder()
        .local(engine(dir.path()))
        .remote(DownCloud)
        .build()
        .unwrap();
    let req = ChatRequest::user("the router")
        .with_max_tokens(6)
        .with_mode(Mode::PreferCloud);
    let c = router.complete(req).await.unwrap();
    assert_eq!(c.route.target, Target::Local);
    assert_eq!(
        c.route.fallback.unwrap().kind,
        FallbackKind::RemoteErrorToLocal
    );
    assert_eq!(c.usage.completion_tokens, 6);
}

/// Runs the assistant on the device with `model_args`, five greedy tokens; checks that it
/// answered locally and returns its badge line (stderr).
fn assistant_answers_locally(model_args: &[&str]) -> String {
    let out = common::assistant()
        .args(model_args)
        .args([
            "--max-tokens",
            "5",
            "--temperature",
            "0",
            "--prompt",
            "the router",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    assert!(
        stderr.contains("── local · ") && stderr.contains(" · 5 tokens"),
        "{stderr}"
    );
    stderr
}

#[test]
fn assistant_answers_on_the_device_with_a_model() {
    let dir = model_dir();
    assistant_answers_locally(&["--model-dir", dir.path().to_str().unwrap()]);
}

#[test]
fn assistant_answers_from_a_gguf_file_with_its_own_tokenizer() {
    let gguf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/openelm/tests/fixtures/tiny-gqa/model-q8_0.gguf"
    );
    let badge = assistant_answers_locally(&["--gguf", gguf]);
    assert!(
        badge.contains("── local · openelm:model-q8_0 · "),
        "{badge}"
    );
}
