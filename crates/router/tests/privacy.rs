//! Private prompts and what the remote backend receives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestBackend, policy};
use elmroute_core::{ChatRequest, Mode, Rule, Sensitivity, Target};

fn pair() -> (TestBackend, TestBackend) {
    (
        TestBackend::local("local answer"),
        TestBackend::remote("cloud answer"),
    )
}

#[tokio::test]
async fn private_prompt_under_privacy_first_never_reaches_the_remote() {
    let prompts = [
        "Email my landlord at jane.doe@example.com about the broken heater",
        "Call me on +44 20 7946 0958 when the parcel arrives",
        "My card 5555 5555 5555 4444 was charged twice",
        "I have been taking antidepressants and feel worse",
        "password: Tr0ub4dor&3 stopped working",
    ];
    for prompt in prompts {
        for mode in Mode::ALL {
            let (local, remote) = pair();
            let router = common::router(policy("privacy-first"), &local, &remote);
            let _ = router
                .complete(ChatRequest::user(prompt).with_mode(mode))
                .await;
            let _ = router
                .stream(ChatRequest::user(prompt).with_mode(mode))
                .await;
            assert_eq!(remote.calls(), 0, "{prompt} in {mode} reached the remote");
        }
    }
}

#[tokio::test]
async fn confidential_label_keeps_even_bland_text_local() {
    let (local, remote) = pair();
    let router = common::router(policy("cloud-first"), &local, &remote);
    let c = router
        .complete(
            ChatRequest::user("Summarise the quarterly plan")
                .with_sensitivity(Sensitivity::Confidential),
        )
        .await
        .unwrap();
    assert_eq!(c.route.target, Target::Local);
    assert!(c.route.fired(Rule::PrivacyBar));
    assert_eq!(remote.calls(), 0);
}

#[tokio::test]
async fn redacted_values_never_reach_the_remote_and_come_back_in_the_answer() {
    let local = TestBackend::local("unused");
    let remote = TestBackend::remote("Done: [PHONE_1] will get a text.");
    let router = common::router(policy("cloud-first"), &local, &remote);
    let c = router
        .complete(ChatRequest::user("Text +1 415 555 0134 that I'm late"))
        .await
        .unwrap();
    assert_eq!(c.route.target, Target::Cloud);
    assert!(c.route.fired(Rule::Redact));
    assert!(!remote.all_text().contains("555"), "{}", remote.all_text());
    assert_eq!(c.text, "Done: +1 415 555 0134 will get a text.");
}

#[tokio::test]
async fn history_counts_too() {
    let (local, remote) = pair();
    let router = common::router(policy("balanced"), &local, &remote);
    let req = ChatRequest::new(vec![
        elmroute_core::Message::user("My card is 4111 1111 1111 1111"),
        elmroute_core::Message::assistant("Noted."),
        elmroute_core::Message::user(
            "Now explain step by step how to derive the chain rule and prove it",
        ),
    ]);
    let c = router.complete(req).await.unwrap();
    assert_eq!(c.route.target, Target::Local);
    assert_eq!(remote.calls(), 0);
}

#[tokio::test]
async fn block_refuses_private_requests_with_a_typed_error_before_any_backend() {
    let mut p = policy("balanced");
    p.privacy.action = elmroute_core::PrivacyAction::Block;
    let (local, remote) = pair();
    let router = common::router(p, &local, &remote);
    let prompt = "Email jane.doe@example.com the card 4111 1111 1111 1111";
    let err = router
        .complete(ChatRequest::user(prompt))
        .await
        .unwrap_err();
    assert!(err.is_privacy_blocked(), "{err}");
    assert!(!err.is_no_route() && !err.is_retryable());
    let msg = err.to_string();
    assert!(msg.contains("card x1") && msg.contains("email x1"), "{msg}");
    assert!(!msg.contains("jane") && !msg.contains("4111"), "{msg}");
    let Err(err) = router.stream(ChatRequest::user(prompt)).await else {
        panic!("the stream was opened");
    };
    assert!(err.is_privacy_blocked());
    assert_eq!(local.calls() + remote.calls(), 0);
    // The decision alone says so too.
    let route = router.decide(&ChatRequest::user(prompt)).unwrap();
    assert_eq!(route.target, Target::None);
    assert!(route.fired(Rule::PrivacyBlock));
    // Nothing private: answered as usual.
    let c = router
        .complete(ChatRequest::user("What is the capital of Peru?"))
        .await
        .unwrap();
    assert_ne!(c.route.target, Target::None);
}

#[tokio::test]
async fn a_request_may_ask_to_block_but_not_undo_a_policy_block() {
    let (local, remote) = pair();
    let router = common::router(policy("balanced"), &local, &remote);
    let prompt = "My SSN is 219-09-9999";
    let err = router
        .complete(
            ChatRequest::user(prompt).with_privacy_action(elmroute_core::PrivacyAction::Block),
        )
        .await
        .unwrap_err();
    assert!(err.is_privacy_blocked());
    assert!(err.to_string().contains("the request blocks"), "{err}");
    assert!(router.complete(ChatRequest::user(prompt)).await.is_ok());

    let mut p = policy("balanced");
    p.privacy.action = elmroute_core::PrivacyAction::Block;
    let router = common::router(p, &local, &remote);
    let err = router
        .complete(
            ChatRequest::user(prompt).with_privacy_action(elmroute_core::PrivacyAction::Redact),
        )
        .await
        .unwrap_err();
    assert!(err.is_privacy_blocked());
}

#[tokio::test]
async fn routes_carry_categories_and_counts_never_values() {
    let (local, remote) = pair();
    let router = common::router(policy("balanced"), &local, &remote);
    let prompt = "Write to bob@example.com and ann@example.org, I was diagnosed with diabetes";
    let c = router.complete(ChatRequest::user(prompt)).await.unwrap();
    let found: Vec<(&str, usize)> = c
        .route
        .findings
        .iter()
        .map(|f| (f.category.as_str(), f.count))
        .collect();
    assert_eq!(found, vec![("email", 2), ("health", 2)]);
    let json = serde_json::to_string(&c.route).unwrap();
    assert!(json.contains("\"findings\""), "{json}");
    assert!(
        !json.contains("bob@") && !json.contains("diabetes"),
        "{json}"
    );
    assert!(
        c.route.explain().contains("email x2"),
        "{}",
        c.route.explain()
    );
}

#[tokio::test]
async fn a_message_label_raises_privacy_like_the_request_label() {
    let (local, remote) = pair();
    let router = common::router(policy("cloud-first"), &local, &remote);
    let req = ChatRequest::new(vec![
        elmroute_core::Message::user("Here is the merger memo: the plan is to close in May")
            .with_sensitivity(Sensitivity::Confidential),
        elmroute_core::Message::user("Summarise it in two lines"),
    ]);
    let c = router.complete(req).await.unwrap();
    assert_eq!(c.route.target, Target::Local);
    assert!(c.route.fired(Rule::PrivacyBar));
    assert_eq!(remote.calls(), 0);
}

#[tokio::test]
async fn custom_patterns_are_found_redacted_and_restored() {
    let p = elmroute_router::Policy::from_toml(
        "mode = \"prefer_cloud\"\n[privacy]\nbar = 0.9\nredact_above = 0.2\n[[privacy.patterns]]\nregex = 'EMP-\\d{6}'\ncategory = \"employee_id\"\nweight = 0.5\n",
        "custom.toml",
    )
    .unwrap();
    let local = TestBackend::local("unused");
    let remote = TestBackend::remote("Filed the leave for [PRIVATE_1].");
    let router = common::router(p, &local, &remote);
    let c = router
        .complete(ChatRequest::user(
            "File annual leave for EMP-204311 next week",
        ))
        .await
        .unwrap();
    assert_eq!(c.route.target, Target::Cloud);
    assert!(c.route.fired(Rule::Redact));
    assert_eq!(c.route.findings[0].category, "employee_id");
    assert!(
        !remote.all_text().contains("204311"),
        "{}",
        remote.all_text()
    );
    assert_eq!(c.text, "Filed the leave for EMP-204311.");
}

#[tokio::test]
async fn policy_topic_words_count_like_built_in_ones() {
    let p = elmroute_router::Policy::from_toml(
        "mode = \"prefer_cloud\"\n[privacy.topics]\nhealth = [\"long covid\"]\n",
        "topics.toml",
    )
    .unwrap();
    let (local, remote) = pair();
    let router = common::router(p, &local, &remote);
    let c = router
        .complete(ChatRequest::user(
            "I have had long covid since March and can't work",
        ))
        .await
        .unwrap();
    assert!(c.route.findings.iter().any(|f| f.category == "health"));
    assert_eq!(c.route.target, Target::Local);
    assert_eq!(remote.calls(), 0);
}

/// Every shipped policy, in every mode, keeps clearly private values away from the cloud:
/// either the device answers, no backend does, or the cloud gets placeholders.
#[tokio::test]
async fn no_shipped_policy_sends_clearly_private_values_raw() {
    let values = [
        (
            "Email my landlord at jane.doe@example.com about the heater",
            "jane.doe@example.com",
        ),
        ("Call me on +44 20 7946 0958 tomorrow", "7946 0958"),
        (
            "My card 5555 5555 5555 4444 was charged twice",
            "5555 5555 5555 4444",
        ),
        ("Wire it to DE89 3704 0044 0532 0130 00", "0532 0130"),
        ("my SSN is 219-09-9999", "219-09-9999"),
        (
            "api key sk-proj-4fG7hJ2kL9mN3pQ8rS1tV6wX0yZ5aB broke",
            "4fG7hJ2kL9mN3pQ8",
        ),
        ("DOB: 03/04/1985, what's my age?", "03/04/1985"),
        ("whitelist my MAC 00:1A:2B:3C:4D:5E", "00:1A:2B:3C:4D:5E"),
        (
            "my home IP 2001:db8:85a3::8a2e:370:7334 is blocked",
            "8a2e:370:7334",
        ),
        ("the password is Tr0ub4dor&3", "Tr0ub4dor&3"),
    ];
    for name in [
        "balanced",
        "privacy-first",
        "battery-saver",
        "cloud-first",
        "offline-only",
    ] {
        let (local, remote) = pair();
        let router = common::router(policy(name), &local, &remote);
        for mode in Mode::ALL {
            for (prompt, value) in values {
                let _ = router
                    .complete(ChatRequest::user(prompt).with_mode(mode))
                    .await;
                assert!(
                    !remote.all_text().contains(value),
                    "{name} in {mode} sent {value} raw"
                );
            }
        }
        assert!(
            remote.calls() > 0 || name == "offline-only",
            "{name} never used the cloud"
        );
    }
}
