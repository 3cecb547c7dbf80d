//! Redaction before the cloud and restoration after.
//!
//! Each redactable finding is replaced by a placeholder such as `[EMAIL_1]`; the same value
//! always gets the same placeholder, so the provider can still refer to "the address" and we
//! put the real one back in its answer. Originals never leave the [`Restorer`], and its
//! `Debug` shows only how many it holds.

use std::collections::HashMap;

use elmroute_core::ChatRequest;

use crate::signals::privacy::Finding;

/// A request with its private spans replaced.
#[derive(Debug)]
pub struct Redacted {
    /// The request to send.
    pub request: ChatRequest,
    /// Puts the originals back.
    pub restorer: Restorer,
}

/// Maps placeholders back to the original text.
#[derive(Clone, Default)]
pub struct Restorer {
    pairs: Vec<(String, String)>,
    pending: String,
}

impl std::fmt::Debug for Restorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restorer")
            .field("placeholders", &self.pairs.len())
            .finish()
    }
}

/// Replaces every redactable finding in `request` by a placeholder.
pub fn redact(request: &ChatRequest, findings: &[Finding]) -> Redacted {
    let mut out = request.clone();
    let mut by_value: HashMap<String, String> = HashMap::new();
    let mut counters: HashMap<&'static str, usize> = HashMap::new();
    let mut pairs = Vec::new();
    for (i, message) in out.messages.iter_mut().enumerate() {
        let mut spans: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.message == i && f.kind.redactable())
            .collect();
        spans.sort_by_key(|f| f.start);
        let text = &message.content;
        let mut redacted = String::with_capacity(text.len());
        let mut at = 0;
        for f in spans {
            let (Some(before), Some(value)) = (text.get(at..f.start), text.get(f.start..f.end))
            else {
                continue;
            };
            if f.start < at {
                continue;
            }
            redacted.push_str(before);
            let placeholder = by_value.entry(value.to_string()).or_insert_with(|| {
                let n = counters.entry(f.kind.label()).or_insert(0);
                *n += 1;
                let p = format!("[{}_{}]", f.kind.label(), n);
                pairs.push((p.clone(), value.to_string()));
                p
            });
            redacted.push_str(placeholder);
            at = f.end;
        }
        redacted.push_str(text.get(at..).unwrap_or(""));
        message.content = redacted;
    }
    // Longest placeholders first so `[EMAIL_10]` is not read as `[EMAIL_1]` + `0]`.
    pairs.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    Redacted {
        request: out,
        restorer: Restorer {
            pairs,
            pending: String::new(),
        },
    }
}

const MAX_PLACEHOLDER: usize = 24;

impl Restorer {
    /// How many distinct values were redacted.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether nothing was redacted.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Puts the originals back into a whole text.
    pub fn restore(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (placeholder, original) in &self.pairs {
            if out.contains(placeholder.as_str()) {
                out = out.replace(placeholder.as_str(), original);
            }
        }
        out
    }

    /// Feeds a streamed delta; returns the text that is safe to emit now. A possible
    /// placeholder cut between deltas is held back until it closes.
    pub fn push(&mut self, delta: &str) -> String {
        if self.pairs.is_empty() {
            return delta.to_string();
        }
        self.pending.push_str(delta);
        let hold_from = self.pending.rfind('[').filter(|&i| {
            !self.pending[i..].contains(']') && self.pending.len() - i < MAX_PLACEHOLDER
        });
        let ready = match hold_from {
            Some(i) => {
                let rest = self.pending.split_off(i);
                std::mem::replace(&mut self.pending, rest)
            }
            None => std::mem::take(&mut self.pending),
        };
        self.restore(&ready)
    }

    /// Flushes what was held back at the end of a stream.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.restore(&rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::privacy::PrivacyDetector;

    #[test]
    fn redacts_and_restores_the_same_value_with_one_placeholder() {
        let req =
            ChatRequest::user("Write to bob@example.com, cc bob@example.com and ann@example.org");
        let report = PrivacyDetector::new().scan(&req);
        let r = redact(&req, &report.findings);
        let sent = &r.request.messages[0].content;
        assert!(!sent.contains("@example"), "{sent}");
        assert_eq!(sent.matches("[EMAIL_1]").count(), 2);
        assert!(sent.contains("[EMAIL_2]"));
        assert_eq!(
            r.restorer.restore("Dear [EMAIL_1] and [EMAIL_2]"),
            "Dear bob@example.com and ann@example.org"
        );
    }

    #[test]
    fn streaming_restore_survives_placeholders_split_across_deltas() {
        let req = ChatRequest::user("mail a@b.io");
        let report = PrivacyDetector::new().scan(&req);
        let mut r = redact(&req, &report.findings).restorer;
        let mut out = String::new();
        for d in ["Sent to [EM", "AIL", "_1]", " ok [not a placeholder"] {
            out.push_str(&r.push(d));
        }
        out.push_str(&r.finish());
        assert_eq!(out, "Sent to a@b.io ok [not a placeholder");
    }
}
