//! The sample routing corpus (`tests/corpus/routing.jsonl`) under the balanced policy.
//!
//! The corpus is a sample of the kinds of prompt the router must get right, not a target to
//! fit: simple asks stay on the device, demanding ones go to the cloud, clearly private ones
//! stay on the device whatever their complexity. Each line says where balanced should send it
//! (`expect`) and whether it is clearly private (`private`), independently of what the
//! detector thinks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use elmroute::{ChatRequest, DeclaredBackend, DeviceState, Policy, PrivacyDetector, Router};

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    expect: String,
    private: bool,
}

fn router(policy: &str) -> Router {
    Router::builder()
        .policy(
            Policy::from_file(format!(
                "{}/policies/{policy}.toml",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .local(DeclaredBackend::local("openelm", 2048))
        .remote(DeclaredBackend::remote("cloud"))
        .device(DeviceState::default())
        .build()
        .unwrap()
}

fn corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/routing.jsonl"
    ))
    .unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_privacy_detector_compiles_in_the_shipped_feature_set() {
    // Regression: with the regex crate's `unicode-case` feature off, the case-insensitive
    // secret pattern failed to compile and secrets went undetected outside the test build.
    assert_eq!(PrivacyDetector::new().detector_count(), 6);
}

#[test]
fn balanced_routes_the_sample_corpus_as_expected() {
    let router = router("balanced");
    let mut wrong = Vec::new();
    let cases = corpus();
    assert!(cases.len() >= 40);
    for case in &cases {
        let route = router
            .decide(&ChatRequest::user(case.prompt.clone()))
            .unwrap();
        if route.target.as_str() != case.expect {
            wrong.push(format!(
                "{} (got {}): {}",
                case.expect,
                route.target,
                route.explain()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} misrouted:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn private_corpus_prompts_stay_local_under_every_shipped_policy() {
    let cases = corpus();
    let private: Vec<&Case> = cases.iter().filter(|c| c.private).collect();
    assert!(private.len() >= 10, "{}", private.len());
    // Lines not labelled private score below the default bar (0.7, balanced's), so no
    // harmless prompt is refused the cloud for privacy.
    let detector = PrivacyDetector::new();
    for case in cases.iter().filter(|c| !c.private) {
        let score = detector.scan(&ChatRequest::user(case.prompt.clone())).score;
        assert!(score < 0.7, "score {score:.2}: {}", case.prompt);
    }
    for policy in [
        "balanced",
        "privacy-first",
        "battery-saver",
        "cloud-first",
        "offline-only",
    ] {
        let router = router(policy);
        for case in &private {
            let route = router
                .decide(&ChatRequest::user(case.prompt.clone()))
                .unwrap();
            assert_ne!(
                route.target.as_str(),
                "cloud",
                "{policy}: {}\n{}",
                case.prompt,
                route.explain()
            );
        }
    }
}
