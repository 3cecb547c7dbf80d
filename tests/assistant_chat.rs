//! The assistant binary end to end: `--demo` (a tiny random on-device model) with a wiremock
//! cloud, driven through its chat on stdin, and its one-shot modes and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Output, Stdio};

use serde_json::Value;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

mod common;
use common::assistant;

const PRIVATE: &str = "My card 4111 1111 1111 1111 was charged twice and my IBAN is GB82 WEST 1234 5698 7654 32; explain step by step what the bank did wrong.";
const HARD: &str = "Derive step by step the closed form of T(n) = 2T(n/2) + n log n, prove it by induction, then compare it with the master theorem in a detailed essay with worked examples.";

/// Runs the chat with `lines` on stdin; returns its output once stdin is exhausted.
async fn chat(args: Vec<String>, lines: &[&str]) -> Output {
    let input = lines.join("\n") + "\n";
    tokio::task::spawn_blocking(move || {
        let mut child = assistant()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn badges(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("── "))
        .map(str::to_owned)
        .collect()
}

async fn cloud() -> MockServer {
    let server = MockServer::start().await;
    let body = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"Answer from \"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"the mock cloud.\"},\"finish_reason\":\"stop\"}]}\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":6}}\n\n\
        data: [DONE]\n\n";
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(serde_json::json!({"stream": true})))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(body),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(serde_json::json!({"stream": false})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "model": "mock-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Answer from the mock cloud."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 6}
        })))
        .mount(&server)
        .await;
    server
}

fn demo_args(server: &MockServer, history: &std::path::Path) -> Vec<String> {
    [
        "--demo",
        "--policy",
        "policies/balanced.toml",
        "--remote-url",
        &format!("{}/v1", server.uri()),
        "--remote-model",
        "mock-model",
        "--history",
        history.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_chat_keeps_private_local_sends_hard_to_the_cloud_and_goes_local_offline() {
    let server = cloud().await;
    let tmp = tempfile::tempdir().unwrap();
    let history = tmp.path().join("history");
    let out = chat(
        demo_args(&server, &history),
        &[PRIVATE, "/reset", HARD, "/offline", "/reset", HARD, "/why"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("DEMO MODE"),
        "the demo says its answers are noise: {stdout}"
    );
    assert!(stdout.contains("cloud:  openai:mock-model"), "{stdout}");

    let b = badges(&out);
    assert_eq!(b.len(), 3, "one badge per answer: {stdout}");
    assert!(b[0].starts_with("── local · openelm-demo"), "{}", b[0]);
    assert!(
        b[0].contains("privacy"),
        "the badge names the reason: {}",
        b[0]
    );
    assert!(
        b[0].contains("tok/s") || b[0].contains("first token"),
        "{}",
        b[0]
    );
    assert!(b[1].starts_with("── cloud · openai:mock-model"), "{}", b[1]);
    assert!(stdout.contains("Answer from the mock cloud."), "{stdout}");
    assert!(b[2].starts_with("── local"), "{}", b[2]);
    assert!(b[2].contains("offline"), "{}", b[2]);
    // /why prints the full explanation of the last route.
    assert!(
        stdout.contains("local (mode auto)") && stdout.contains("rules:"),
        "{stdout}"
    );

    // The cloud saw exactly the one hard prompt, and nothing of the private one.
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    let body = String::from_utf8_lossy(&received[0].body);
    assert!(
        body.contains("master theorem") && !body.contains("4111"),
        "{body}"
    );
    // The history file was written.
    assert!(
        std::fs::read_to_string(&history)
            .unwrap()
            .contains("/offline")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_cloud_the_chat_says_not_configured_and_routing_explains_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = chat(
        vec![
            "--demo".into(),
            "--history".into(),
            tmp.path().join("h").to_str().unwrap().into(),
        ],
        &[HARD],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("cloud:  not configured"), "{stdout}");
    let b = badges(&out);
    assert_eq!(b.len(), 1, "{stdout}");
    assert!(
        b[0].starts_with("── local") && b[0].contains("no remote backend is configured"),
        "{}",
        b[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_shot_json_and_exit_codes() {
    let server = cloud().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut args = demo_args(&server, &tmp.path().join("h"));
    args.extend(["--json".into(), "--prompt".into(), HARD.into()]);
    let out = tokio::task::spawn_blocking(move || assistant().args(&args).output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["text"], "Answer from the mock cloud.");
    assert_eq!(v["route"]["target"], "cloud");
    assert_eq!(v["usage"]["completion_tokens"], 6);

    // No route: cloud_only with no cloud configured.
    let out = assistant()
        .args(["--demo", "--mode", "cloud_only", "--prompt", "hello"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad input: a policy file that does not exist, a flag out of range, an empty prompt.
    for args in [
        vec!["--demo", "--policy", "policies/nope.toml", "--prompt", "hi"],
        vec!["--demo", "--battery", "7", "--prompt", "hi"],
        vec!["--demo", "--prompt", "   "],
        vec!["--demo", "--remote-model", "m", "--prompt", "hi"],
    ] {
        let out = assistant().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn no_model_and_no_hub_gives_one_clear_message() {
    let cache = tempfile::tempdir().unwrap();
    let out = assistant()
        .args(["--model", "apple/OpenELM-270M-Instruct", "--prompt", "hi"])
        .env("HF_HOME", cache.path())
        .env("HF_HUB_CACHE", cache.path().join("hub"))
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--model-dir") && stderr.contains("--demo"),
        "{stderr}"
    );
    assert!(stderr.contains("apple/OpenELM-270M-Instruct"), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{stderr}"
    );

    let out = assistant()
        .args(["--model-dir", "/nonexistent/openelm", "--prompt", "hi"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/openelm"), "{stderr}");
}
