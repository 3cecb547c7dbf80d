//! What the router logs: the decision, never the prompt or the private data in it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{Script, TestBackend};
use elmroute_core::{ChatRequest, Error};
use elmroute_router::{Policy, Router};
use futures::StreamExt;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_carry_the_decision_but_no_prompt_text_or_pii_even_at_trace() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let local = TestBackend::local("fine");
    local.set_script(Script::Fail(|| Error::backend("model crashed")));
    let remote = TestBackend::remote("ok [EMAIL_1]");
    let router = Router::builder()
        .policy(Policy::default())
        .local(local)
        .remote(remote)
        .build()
        .unwrap();
    let secret_words = "zanzibar-quokka";
    let prompt = format!("Write to jane.doe@example.com about {secret_words}");
    let c = router
        .complete(ChatRequest::user(prompt.clone()))
        .await
        .unwrap();
    assert!(c.text.contains("jane.doe@example.com"));
    let mut s = router
        .stream(ChatRequest::user(prompt.clone()))
        .await
        .unwrap();
    while s.next().await.is_some() {}
    let _ = router
        .complete(
            ChatRequest::user("my card 4111 1111 1111 1111")
                .with_mode(elmroute_core::Mode::CloudOnly),
        )
        .await;

    let blocked = router
        .complete(
            ChatRequest::user("my MAC 00:1A:2B:3C:4D:5E, DOB 03/04/1985")
                .with_privacy_action(elmroute_core::PrivacyAction::Block),
        )
        .await
        .unwrap_err();
    assert!(blocked.is_privacy_blocked());

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("private=email:1"), "{logs}");
    assert!(logs.contains("blocked"), "{logs}");
    assert!(logs.contains("elmroute.request"), "{logs}");
    assert!(
        logs.contains("target=") && logs.contains("privacy="),
        "{logs}"
    );
    assert!(logs.contains("falling back"), "{logs}");
    for private in [
        "jane.doe",
        "example.com",
        secret_words,
        "4111",
        "Write to",
        "00:1A",
        "03/04/1985",
    ] {
        assert!(
            !logs.contains(private),
            "`{private}` leaked into logs:\n{logs}"
        );
    }
}

#[test]
fn debug_output_of_requests_hides_message_text() {
    let req = ChatRequest::user("my card 4111 1111 1111 1111");
    let dbg = format!("{req:?}");
    assert!(!dbg.contains("4111"), "{dbg}");
    assert!(dbg.contains("bytes"), "{dbg}");
}
