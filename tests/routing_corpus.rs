//! The sample routing corpus (`tests/corpus/routing.jsonl`) under the balanced policy.
//!
//! The corpus is a sample of the kinds of prompt the router must get right, not a target to
//! fit: simple asks stay on the device, demanding ones go to the cloud, clearly private ones
//! stay on the device whatever their complexity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use elmroute::{ChatRequest, DeclaredBackend, DeviceState, Policy, PrivacyDetector, Router};

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    expect: String,
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
    assert_eq!(PrivacyDetector::new().detector_count(), 8);
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
    for policy in [
        "balanced",
        "privacy-first",
        "battery-saver",
        "cloud-first",
        "offline-only",
    ] {
        let router = router(policy);
        let detector = PrivacyDetector::new();
        let private = corpus()
            .into_iter()
            .filter(|c| detector.scan(&ChatRequest::user(c.prompt.clone())).score >= 0.7);
        let mut n = 0;
        for case in private {
            n += 1;
            let route = router
                .decide(&ChatRequest::user(case.prompt.clone()))
                .unwrap();
            assert_ne!(route.target.as_str(), "cloud", "{policy}: {}", case.prompt);
        }
        assert!(n >= 7, "{n}");
    }
}
