//! Every mode against {online, offline} x {local ready, not ready}, through `complete()`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestBackend, policy};
use elmroute_core::{
    Availability, ChatRequest, DeviceState, FallbackKind, Mode, Network, Target, ThermalLevel,
};
use elmroute_router::{Policy, Router};

const SIMPLE: &str = "What is the capital of France?";
const HARD: &str = "Explain step by step how to derive the closed-form solution of least squares \
    regression, prove the estimator is unbiased, compare it with gradient descent, then implement \
    both in Rust with unit tests and analyse their complexity.";

struct Case {
    local: TestBackend,
    remote: TestBackend,
    router: Router,
}

fn setup(policy: Policy, online: bool, local_ready: bool) -> Case {
    let local = TestBackend::local("local answer");
    let remote = TestBackend::remote("cloud answer");
    if !local_ready {
        local.set_availability(Availability::Loading { progress: 0.4 });
    }
    let device = DeviceState {
        network: if online {
            Network::Online
        } else {
            Network::Offline
        },
        ..DeviceState::default()
    };
    let router = Router::builder()
        .policy(policy)
        .local(local.clone())
        .remote(remote.clone())
        .device(device)
        .build()
        .unwrap();
    Case {
        local,
        remote,
        router,
    }
}

/// Runs one request and returns where it was answered (`None` for a NoRoute error), after
/// checking that only that backend was called.
async fn run(case: &Case, prompt: &str, mode: Mode) -> Target {
    let req = ChatRequest::user(prompt).with_mode(mode);
    match case.router.complete(req).await {
        Ok(c) => {
            let (expected_text, called, idle) = match c.route.target {
                Target::Local => ("local answer", &case.local, &case.remote),
                Target::Cloud => ("cloud answer", &case.remote, &case.local),
                Target::None => panic!("a completion never has target none"),
            };
            assert_eq!(c.text, expected_text);
            assert_eq!(called.calls(), 1);
            assert_eq!(idle.calls(), 0);
            assert_eq!(c.route.mode, mode);
            c.route.target
        }
        Err(e) => {
            let details = e
                .no_route_details()
                .unwrap_or_else(|| panic!("unexpected error {e}"));
            assert!(e.refused(Target::Local) && e.refused(Target::Cloud), "{e}");
            assert_eq!(details.route.target, Target::None);
            assert_eq!(case.local.calls() + case.remote.calls(), 0);
            Target::None
        }
    }
}

#[tokio::test]
async fn every_mode_against_network_and_local_readiness() {
    use Target::{Cloud, Local, None};
    // (mode, online, local ready, expected for a simple prompt, expected for a hard prompt)
    let table = [
        (Mode::Auto, true, true, Local, Cloud),
        (Mode::Auto, true, false, Cloud, Cloud),
        (Mode::Auto, false, true, Local, Local),
        (Mode::Auto, false, false, None, None),
        (Mode::PreferLocal, true, true, Local, Local),
        (Mode::PreferLocal, true, false, Cloud, Cloud),
        (Mode::PreferLocal, false, true, Local, Local),
        (Mode::PreferLocal, false, false, None, None),
        (Mode::LocalOnly, true, true, Local, Local),
        (Mode::LocalOnly, true, false, None, None),
        (Mode::LocalOnly, false, true, Local, Local),
        (Mode::LocalOnly, false, false, None, None),
        (Mode::PreferCloud, true, true, Cloud, Cloud),
        (Mode::PreferCloud, true, false, Cloud, Cloud),
        (Mode::PreferCloud, false, true, Local, Local),
        (Mode::PreferCloud, false, false, None, None),
        (Mode::CloudOnly, true, true, Cloud, Cloud),
        (Mode::CloudOnly, true, false, Cloud, Cloud),
        (Mode::CloudOnly, false, true, None, None),
        (Mode::CloudOnly, false, false, None, None),
    ];
    for (mode, online, ready, simple, hard) in table {
        for (prompt, expected) in [(SIMPLE, simple), (HARD, hard)] {
            let case = setup(Policy::default(), online, ready);
            let got = run(&case, prompt, mode).await;
            assert_eq!(
                got, expected,
                "mode {mode}, online {online}, local ready {ready}, prompt {prompt:.20}"
            );
        }
    }
}

#[tokio::test]
async fn offline_fallback_is_recorded_in_the_route() {
    let case = setup(Policy::default(), false, true);
    let c = case.router.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!(c.route.target, Target::Local);
    let fb = c.route.fallback.unwrap();
    assert_eq!(fb.kind, FallbackKind::OfflineToLocal);
    assert_eq!(fb.from, Target::Cloud);
}

#[tokio::test]
async fn offline_fallback_can_be_switched_off() {
    let mut p = Policy::default();
    p.fallback.offline_to_local = false;
    let case = setup(p.clone(), false, true);
    let err = case
        .router
        .complete(ChatRequest::user(HARD))
        .await
        .unwrap_err();
    assert!(err.is_no_route());
    assert!(err.refused(Target::Cloud) && err.refused(Target::Local));
    assert!(err.to_string().contains("offline"), "{err}");
    // A request the score keeps local anyway is not a fallback and still works.
    let case = setup(p, false, true);
    assert_eq!(run(&case, SIMPLE, Mode::Auto).await, Target::Local);
}

#[tokio::test]
async fn thermal_critical_never_runs_local_in_any_mode_or_policy() {
    for name in [
        "balanced",
        "privacy-first",
        "battery-saver",
        "cloud-first",
        "offline-only",
    ] {
        for mode in Mode::ALL {
            for prompt in [SIMPLE, HARD, "my card is 4111 1111 1111 1111"] {
                let local = TestBackend::local("local answer");
                let remote = TestBackend::remote("cloud answer");
                let router = Router::builder()
                    .policy(policy(name))
                    .local(local.clone())
                    .remote(remote.clone())
                    .device(DeviceState {
                        thermal: ThermalLevel::Critical,
                        ..DeviceState::default()
                    })
                    .build()
                    .unwrap();
                let _ = router
                    .complete(ChatRequest::user(prompt).with_mode(mode))
                    .await;
                assert_eq!(local.calls(), 0, "policy {name}, mode {mode}");
                let route = router
                    .decide(&ChatRequest::user(prompt).with_mode(mode))
                    .unwrap();
                assert_ne!(route.target, Target::Local);
                assert!(route.fired(elmroute_core::Rule::ThermalCritical));
            }
        }
    }
}

#[tokio::test]
async fn request_mode_overrides_policy_mode() {
    let case = setup(policy("balanced"), true, true);
    assert_eq!(run(&case, SIMPLE, Mode::CloudOnly).await, Target::Cloud);
}

#[tokio::test]
async fn offline_only_refuses_a_request_asking_for_the_cloud() {
    let case = setup(policy("offline-only"), true, true);
    let c = case
        .router
        .complete(ChatRequest::user(SIMPLE).with_mode(Mode::CloudOnly))
        .await
        .unwrap();
    assert_eq!(c.route.target, Target::Local);
    assert_eq!(c.route.mode, Mode::LocalOnly);
    assert!(c.route.fired(elmroute_core::Rule::ModeOverrideRefused));
    assert_eq!(case.remote.calls(), 0);
}

#[tokio::test]
async fn context_too_long_for_local_goes_to_cloud() {
    let case = setup(Policy::default(), true, true);
    let long = "word ".repeat(3000); // ~3750 tokens by the default estimate, context 2048
    let c = case
        .router
        .complete(ChatRequest::user(long).with_mode(Mode::PreferLocal))
        .await
        .unwrap();
    assert_eq!(c.route.target, Target::Cloud);
    assert!(c.route.fired(elmroute_core::Rule::ContextTooLong));
    // A request that allows left truncation may stay on the device.
    let req = ChatRequest::user("word ".repeat(3000))
        .with_mode(Mode::PreferLocal)
        .with_truncation(elmroute_core::Truncation::Left);
    let c = case.router.complete(req).await.unwrap();
    assert_eq!(c.route.target, Target::Local);
    assert!(c.route.scores.capability >= 1.0);
}

#[tokio::test]
async fn invalid_requests_are_typed_errors() {
    let case = setup(Policy::default(), true, true);
    let empty = ChatRequest::default();
    assert!(
        case.router
            .complete(empty)
            .await
            .unwrap_err()
            .is_invalid_request()
    );
    let hot = ChatRequest::user("hi").with_temperature(f32::NAN);
    assert!(
        case.router
            .complete(hot)
            .await
            .unwrap_err()
            .is_invalid_request()
    );
}
