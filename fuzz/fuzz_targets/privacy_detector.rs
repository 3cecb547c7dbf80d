//! The privacy detector on any text: it must not panic, its spans must lie on character
//! boundaries inside the message, and redacting then restoring must give the text back,
//! whole and streamed in chunks.
#![no_main]

use elmroute_core::{ChatRequest, Message};
use elmroute_router::PrivacyDetector;
use elmroute_router::redact::redact;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static DETECTOR: std::sync::OnceLock<PrivacyDetector> = std::sync::OnceLock::new();
    let detector = DETECTOR.get_or_init(PrivacyDetector::new);
    let text = String::from_utf8_lossy(data);
    // The first byte picks where the text splits into a user and an assistant message.
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) * text.len() / 256);
    let cut = (0..=cut)
        .rev()
        .find(|c| text.is_char_boundary(*c))
        .unwrap_or(0);
    let (a, b) = text.split_at(cut);
    let request = ChatRequest::new(vec![Message::user(a), Message::assistant(b)]);
    let report = detector.scan(&request);
    assert!((0.0..=1.0).contains(&report.score));
    assert!(report.residual <= report.score);
    for f in &report.findings {
        let content = &request.messages[f.message].content;
        assert!(f.start < f.end && f.end <= content.len());
        assert!(content.is_char_boundary(f.start) && content.is_char_boundary(f.end));
    }
    let redacted = redact(&request, &report.findings);
    for (sent, original) in redacted.request.messages.iter().zip(&request.messages) {
        let restored = redacted.restorer.restore(&sent.content);
        assert_eq!(restored, original.content);
        // Streamed in chunks of a size the last byte picks.
        let step = usize::from(data.last().copied().unwrap_or(1)).max(1);
        let mut restorer = redacted.restorer.clone();
        let mut out = String::new();
        let mut at = 0;
        while at < sent.content.len() {
            let mut next = (at + step).min(sent.content.len());
            while !sent.content.is_char_boundary(next) {
                next += 1;
            }
            out.push_str(&restorer.push(&sent.content[at..next]));
            at = next;
        }
        out.push_str(&restorer.finish());
        assert_eq!(out, original.content);
    }
});
