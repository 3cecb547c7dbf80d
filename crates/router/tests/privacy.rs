//! Private prompts and what the remote backend receives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestBackend, policy};
use elmroute_core::{ChatRequest, Mode, Rule, Sensitivity, Target};
use elmroute_router::Router;

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
            let router = Router::builder()
                .policy(policy("privacy-first"))
                .local(local.clone())
                .remote(remote.clone())
                .build()
                .unwrap();
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
    let router = Router::builder()
        .policy(policy("cloud-first"))
        .local(local.clone())
        .remote(remote.clone())
        .build()
        .unwrap();
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
    let router = Router::builder()
        .policy(policy("cloud-first"))
        .local(local)
        .remote(remote.clone())
        .build()
        .unwrap();
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
    let router = Router::builder()
        .policy(policy("balanced"))
        .local(local)
        .remote(remote.clone())
        .build()
        .unwrap();
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
