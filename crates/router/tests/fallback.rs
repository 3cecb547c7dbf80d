//! Fallback between backends on errors, with the policy's switches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Script, TestBackend, policy, router};
use elmroute_core::{Availability, ChatRequest, Error, FallbackKind, Mode, Target};
use elmroute_router::Policy;
use std::time::Duration;

const HARD: &str = "Explain step by step how to derive the closed-form solution of least squares \
    regression, prove the estimator is unbiased, then implement it in Rust with unit tests.";

#[tokio::test]
async fn remote_failure_falls_back_to_local_when_allowed() {
    let local = TestBackend::local("local answer");
    let remote = TestBackend::remote("unused");
    remote.set_script(Script::Fail(|| Error::status(503, "overloaded", None)));
    let c = router(Policy::default(), &local, &remote)
        .complete(ChatRequest::user(HARD))
        .await
        .unwrap();
    assert_eq!(c.text, "local answer");
    assert_eq!(c.route.target, Target::Local);
    let fb = c.route.fallback.unwrap();
    assert_eq!(fb.kind, FallbackKind::RemoteErrorToLocal);
    assert_eq!(fb.from, Target::Cloud);
    assert!(fb.reason.contains("503"), "{}", fb.reason);
    assert_eq!(remote.calls(), 1);
    assert_eq!(local.calls(), 1);
}

#[tokio::test]
async fn remote_failure_is_a_typed_error_when_fallback_is_off() {
    let local = TestBackend::local("local answer");
    let remote = TestBackend::remote("unused");
    remote.set_script(Script::Fail(|| {
        Error::status(429, "rate limited", Some(Duration::from_secs(7)))
    }));
    let mut p = Policy::default();
    p.fallback.remote_error_to_local = false;
    let err = router(p, &local, &remote)
        .complete(ChatRequest::user(HARD))
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(429));
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(local.calls(), 0);
}

#[tokio::test]
async fn cloud_only_never_falls_back_to_local() {
    let local = TestBackend::local("local answer");
    let remote = TestBackend::remote("unused");
    remote.set_script(Script::Fail(|| Error::offline("dns failure")));
    let err = router(Policy::default(), &local, &remote)
        .complete(ChatRequest::user("hi").with_mode(Mode::CloudOnly))
        .await
        .unwrap_err();
    assert!(err.is_offline());
    assert_eq!(local.calls(), 0);
}

#[tokio::test]
async fn local_failure_falls_back_to_cloud() {
    let local = TestBackend::local("unused");
    local.set_script(Script::Fail(|| Error::busy("queue full")));
    let remote = TestBackend::remote("cloud answer");
    let c = router(Policy::default(), &local, &remote)
        .complete(ChatRequest::user("hi there"))
        .await
        .unwrap();
    assert_eq!(c.text, "cloud answer");
    assert_eq!(
        c.route.fallback.unwrap().kind,
        FallbackKind::LocalErrorToCloud
    );
}

#[tokio::test]
async fn local_failure_never_sends_private_text_to_the_cloud() {
    let local = TestBackend::local("unused");
    local.set_script(Script::Fail(|| Error::backend("model crashed")));
    let remote = TestBackend::remote("cloud answer");
    let err = router(Policy::default(), &local, &remote)
        .complete(ChatRequest::user(
            "my card is 4111 1111 1111 1111, is it expired?",
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("model crashed"));
    assert_eq!(remote.calls(), 0);
}

#[tokio::test]
async fn local_failure_redacts_before_falling_back_to_the_cloud() {
    let local = TestBackend::local("unused");
    local.set_script(Script::Fail(|| Error::backend("model crashed")));
    let remote = TestBackend::remote("I wrote to [EMAIL_1] for you.");
    let c = router(Policy::default(), &local, &remote)
        .complete(ChatRequest::user(
            "Draft a short note to jane.doe@example.com saying hi",
        ))
        .await
        .unwrap();
    assert!(!remote.all_text().contains("jane.doe@example.com"));
    assert!(remote.all_text().contains("[EMAIL_1]"));
    assert_eq!(c.text, "I wrote to jane.doe@example.com for you.");
    assert_eq!(c.route.redactions, 1);
}

#[tokio::test]
async fn remote_cooling_down_routes_local_as_a_fallback() {
    let local = TestBackend::local("local answer");
    let remote = TestBackend::remote("unused");
    remote.set_availability(Availability::CoolingDown {
        remaining: Duration::from_secs(30),
    });
    let c = router(Policy::default(), &local, &remote)
        .complete(ChatRequest::user(HARD))
        .await
        .unwrap();
    assert_eq!(c.route.target, Target::Local);
    assert_eq!(
        c.route.fallback.unwrap().kind,
        FallbackKind::RemoteErrorToLocal
    );
    assert_eq!(remote.calls(), 0);
}

#[tokio::test]
async fn offline_only_policy_never_touches_the_network() {
    let local = TestBackend::local("unused");
    local.set_script(Script::Fail(|| Error::backend("model crashed")));
    let remote = TestBackend::remote("cloud answer");
    let r = router(policy("offline-only"), &local, &remote);
    assert!(r.complete(ChatRequest::user(HARD)).await.is_err());
    local.set_availability(Availability::Failed {
        reason: "weights missing".into(),
    });
    let err = r.complete(ChatRequest::user("hi")).await.unwrap_err();
    assert!(err.is_no_route());
    assert!(err.to_string().contains("weights missing"), "{err}");
    assert!(err.to_string().contains("local_only"), "{err}");
    assert_eq!(remote.calls(), 0);
}

#[tokio::test]
async fn repeated_cloud_failures_open_a_cool_down_and_success_closes_it() {
    let local = TestBackend::local("local answer");
    let remote = TestBackend::remote("cloud answer");
    remote.set_script(Script::Fail(|| Error::status(503, "overloaded", None)));
    let mut p = Policy::default();
    p.network.cooldown_after = 2;
    p.network.cooldown_secs = 3600;
    let r = router(p, &local, &remote);
    for _ in 0..2 {
        let c = r.complete(ChatRequest::user(HARD)).await.unwrap();
        assert_eq!(
            c.route.fallback.unwrap().kind,
            FallbackKind::RemoteErrorToLocal
        );
    }
    assert_eq!(remote.calls(), 2);
    // Cooling down: the cloud is not even tried.
    let c = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!(remote.calls(), 2);
    assert_eq!(c.route.target, Target::Local);
    assert!(c.route.fired(elmroute_core::Rule::RemoteCoolingDown));
    // cloud_only gets a typed NoRoute naming the cool-down instead of a wait.
    let err = r
        .complete(ChatRequest::user(HARD).with_mode(Mode::CloudOnly))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cooling down"), "{err}");
    assert!(
        err.to_string().contains("overloaded"),
        "the last failure is named: {err}"
    );
}

#[tokio::test]
async fn an_unreachable_provider_marks_the_network_offline_until_a_probe_succeeds() {
    let local = TestBackend::local("local answer");
    let remote = TestBackend::remote("cloud answer");
    remote.set_script(Script::Fail(|| Error::offline("dns error: no such host")));
    let mut p = Policy::default();
    p.network.offline_recheck_secs = 1;
    let r = router(p, &local, &remote);
    // The first request pays for the failed connection and falls back.
    let c = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!(c.route.target, Target::Local);
    assert_eq!(remote.calls(), 1);
    // The next ones go local at once: the network counts as offline, with the reason.
    let c = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!(remote.calls(), 1);
    assert!(c.route.fired(elmroute_core::Rule::Offline));
    assert_eq!(
        c.route.fallback.as_ref().map(|f| f.kind),
        Some(FallbackKind::OfflineToLocal),
        "routed around the cloud, not a failed call"
    );
    let why = c.route.explain();
    assert!(
        why.contains("could not be reached") && why.contains("no such host"),
        "{why}"
    );
    // When the window has passed, a failing probe renews it without sending the request.
    remote.set_probe_fails(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!((remote.probes(), remote.calls()), (1, 1));
    assert_eq!(c.route.target, Target::Local);
    // A successful probe clears it: the cloud is tried again.
    remote.set_probe_fails(false);
    remote.set_script(Script::Answer("cloud answer".into()));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!((remote.probes(), remote.calls()), (2, 2));
    assert_eq!(c.route.target, Target::Cloud);
    assert_eq!(c.text, "cloud answer");
}

#[tokio::test]
async fn without_probes_the_offline_mark_simply_expires() {
    let local = TestBackend::local("local answer");
    let remote = TestBackend::remote("cloud answer");
    remote.set_script(Script::Fail(|| Error::offline("connection refused")));
    let mut p = Policy::default();
    p.network.offline_recheck_secs = 1;
    p.network.probe = false;
    let r = router(p, &local, &remote);
    r.complete(ChatRequest::user(HARD)).await.unwrap();
    remote.set_script(Script::Answer("cloud answer".into()));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!(c.route.target, Target::Cloud);
    assert_eq!(remote.probes(), 0);
}

#[tokio::test]
async fn retry_after_starts_a_cool_down_at_once() {
    let local = TestBackend::local("local answer");
    let remote = TestBackend::remote("unused");
    remote.set_script(Script::Fail(|| {
        Error::status(429, "slow down", Some(Duration::from_secs(600)))
    }));
    let r = router(Policy::default(), &local, &remote);
    let _ = r.complete(ChatRequest::user(HARD)).await.unwrap();
    let _ = r.complete(ChatRequest::user(HARD)).await.unwrap();
    assert_eq!(remote.calls(), 1);
}

#[tokio::test]
async fn a_success_resets_the_failure_count() {
    let local = TestBackend::local("local answer");
    let remote = TestBackend::remote("cloud answer");
    let mut p = Policy::default();
    p.network.cooldown_after = 2;
    let r = router(p, &local, &remote);
    for _ in 0..3 {
        remote.set_script(Script::Fail(|| Error::timeout("read")));
        let _ = r.complete(ChatRequest::user(HARD)).await.unwrap();
        remote.set_script(Script::Answer("cloud answer".into()));
        let c = r.complete(ChatRequest::user(HARD)).await.unwrap();
        assert_eq!(c.route.target, Target::Cloud);
    }
    assert_eq!(remote.calls(), 6);
}
