//! Redaction before the cloud and restoration after.
//!
//! Each redactable finding is replaced by a placeholder such as `[EMAIL_1]`; the same value
//! always gets the same placeholder, so the provider can still refer to "the address" and we
//! put the real one back in its answer. Placeholders never collide with text the request
//! already contains. Restoration is forgiving about what models do to placeholders
//! (`[email_1]`, `[EMAIL 1]`, a bare `EMAIL_1`). Originals never leave the [`Restorer`], and
//! its `Debug` shows only how many it holds.

use std::collections::HashMap;
use std::sync::LazyLock;

use elmroute_core::ChatRequest;
use regex::Regex;

use crate::signals::privacy::{Finding, PiiKind};

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
    /// (LABEL, number) -> original.
    originals: HashMap<(String, u32), String>,
    pending: String,
}

impl std::fmt::Debug for Restorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restorer")
            .field("placeholders", &self.originals.len())
            .finish()
    }
}

const LABELS: &str = "SECRET|CARD|IBAN|ID|EMAIL|PHONE|ADDRESS|IP|MAC|DOB|PRIVATE";

/// `[LABEL_n]` and the forms models turn it into: any case, a space for the underscore, or
/// no brackets (then only with the underscore, so "user ID 1" stays as it is). Numbers never
/// start with 0, so "phone_02" in the user's text is not read as `[PHONE_2]`.
static PLACEHOLDER: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\[\s*({LABELS})[_ ]([1-9]\d{{0,4}})\s*\]|\b({LABELS})_([1-9]\d{{0,4}})\b"
    ))
    .ok()
});

/// Replaces every redactable finding in `request` by a placeholder.
pub fn redact(request: &ChatRequest, findings: &[Finding]) -> Redacted {
    let mut out = request.clone();
    let mut by_value: HashMap<String, String> = HashMap::new();
    let mut counters: HashMap<&'static str, u32> = HashMap::new();
    let mut originals = HashMap::new();
    // A placeholder is taken when the request already holds anything restore would read as
    // it (`[EMAIL_1]`, `email_1`, `[Email 1]`), so restoring never rewrites the user's text.
    let lowered: Vec<String> = request
        .messages
        .iter()
        .map(|m| m.content.to_lowercase())
        .collect();
    let taken = |label: &str, n: u32| {
        let label = label.to_lowercase();
        let (under, spaced) = (format!("{label}_{n}"), format!("{label} {n}"));
        lowered
            .iter()
            .any(|m| m.contains(&under) || m.contains(&spaced))
    };
    for (i, message) in out.messages.iter_mut().enumerate() {
        // Sorted, overlapping spans merged, so no private byte is left between two findings.
        let mut spans: Vec<(usize, usize, PiiKind)> = findings
            .iter()
            .filter(|f| f.message == i && f.kind.redactable())
            .map(|f| (f.start, f.end, f.kind))
            .collect();
        spans.sort_by_key(|s| (s.0, std::cmp::Reverse(s.1)));
        let mut merged: Vec<(usize, usize, PiiKind)> = Vec::with_capacity(spans.len());
        for s in spans {
            match merged.last_mut() {
                Some(last) if s.0 < last.1 => last.1 = last.1.max(s.1),
                _ => merged.push(s),
            }
        }
        let text = &message.content;
        let mut redacted = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end, kind) in merged {
            let (Some(before), Some(value)) = (text.get(at..start), text.get(start..end)) else {
                continue;
            };
            redacted.push_str(before);
            let placeholder = by_value.entry(value.to_string()).or_insert_with(|| {
                let n = counters.entry(kind.label()).or_insert(0);
                loop {
                    *n += 1;
                    let p = format!("[{}_{}]", kind.label(), n);
                    if !taken(kind.label(), *n) {
                        originals.insert((kind.label().to_string(), *n), value.to_string());
                        return p;
                    }
                }
            });
            redacted.push_str(placeholder);
            at = end;
        }
        redacted.push_str(text.get(at..).unwrap_or(""));
        message.content = redacted;
    }
    Redacted {
        request: out,
        restorer: Restorer {
            originals,
            pending: String::new(),
        },
    }
}

/// Longest text a stream holds back while it may be the start of a placeholder.
const MAX_HELD: usize = 24;

impl Restorer {
    /// How many distinct values were redacted.
    pub fn len(&self) -> usize {
        self.originals.len()
    }

    /// Whether nothing was redacted.
    pub fn is_empty(&self) -> bool {
        self.originals.is_empty()
    }

    /// Puts the originals back into a whole text, in one pass (an original that itself looks
    /// like a placeholder is not replaced again).
    pub fn restore(&self, text: &str) -> String {
        let Some(re) = PLACEHOLDER.as_ref().filter(|_| !self.originals.is_empty()) else {
            return text.to_string();
        };
        re.replace_all(text, |caps: &regex::Captures<'_>| {
            let label = caps.get(1).or_else(|| caps.get(3));
            let number = caps.get(2).or_else(|| caps.get(4));
            let found = label.zip(number).and_then(|(l, n)| {
                let n: u32 = n.as_str().parse().ok()?;
                self.originals.get(&(l.as_str().to_ascii_uppercase(), n))
            });
            match found {
                Some(original) => original.clone(),
                None => caps
                    .get(0)
                    .map_or(String::new(), |m| m.as_str().to_string()),
            }
        })
        .into_owned()
    }

    /// Feeds a streamed delta; returns the text that is safe to emit now. The trailing
    /// partial word (which may be a placeholder cut between deltas) is held back until the
    /// next delta or [`finish`](Restorer::finish).
    pub fn push(&mut self, delta: &str) -> String {
        if self.originals.is_empty() {
            return delta.to_string();
        }
        self.pending.push_str(delta);
        let hold = held_tail(&self.pending);
        let rest = self.pending.split_off(self.pending.len() - hold);
        let ready = std::mem::replace(&mut self.pending, rest);
        self.restore(&ready)
    }

    /// Flushes what was held back at the end of a stream.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.restore(&rest)
    }
}

/// How many trailing bytes of `text` could still grow into a placeholder.
fn held_tail(text: &str) -> usize {
    // An unclosed bracket near the end.
    if let Some(i) = text.rfind('[')
        && !text[i..].contains(']')
        && text.len() - i <= MAX_HELD
    {
        return text.len() - i;
    }
    // A trailing word of label characters ("EMAIL_" waiting for its number).
    let word = text
        .bytes()
        .rev()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    if word > 0 && word <= MAX_HELD {
        word
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::privacy::PrivacyDetector;

    fn redacted(text: &str) -> Redacted {
        let req = ChatRequest::user(text);
        let report = PrivacyDetector::new().scan(&req);
        redact(&req, &report.findings)
    }

    #[test]
    fn redacts_and_restores_the_same_value_with_one_placeholder() {
        let r = redacted("Write to bob@example.com, cc bob@example.com and ann@example.org");
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
    fn placeholders_never_collide_with_text_already_in_the_request() {
        let r = redacted("Fill in the template \"Contact [EMAIL_1]\". My email is bob@x.com");
        let sent = &r.request.messages[0].content;
        assert_eq!(sent.matches("[EMAIL_1]").count(), 1, "{sent}");
        assert!(sent.contains("[EMAIL_2]"), "{sent}");
        assert_eq!(
            r.restorer.restore("Contact [EMAIL_1] or [EMAIL_2]"),
            "Contact [EMAIL_1] or bob@x.com"
        );
    }

    #[test]
    fn text_that_restore_would_read_as_a_placeholder_is_never_rewritten() {
        let text = "Rename EMAIL_1 to email_2 and [Email 3], email_05, then mail a@b.io";
        let r = redacted(text);
        let sent = &r.request.messages[0].content;
        assert!(sent.contains("[EMAIL_4]"), "{sent}");
        assert_eq!(r.restorer.restore(sent), text);
    }

    #[test]
    fn restore_forgives_what_models_do_to_placeholders() {
        let r = redacted("mail a@b.io");
        for (answer, want) in [
            ("to [email_1].", "to a@b.io."),
            ("to [EMAIL 1].", "to a@b.io."),
            ("to EMAIL_1.", "to a@b.io."),
            ("to [ EMAIL_1 ].", "to a@b.io."),
            ("to [EMAIL_7].", "to [EMAIL_7]."),
            ("user ID 1 and EMAIL 1", "user ID 1 and EMAIL 1"),
        ] {
            assert_eq!(r.restorer.restore(answer), want, "{answer}");
        }
    }

    #[test]
    fn overlapping_findings_leave_no_private_byte_behind() {
        let req = ChatRequest::user("abc 0123456789 xyz");
        let f = |start, end, kind: PiiKind| Finding {
            kind,
            topic: None,
            weight: kind.weight(),
            message: 0,
            start,
            end,
        };
        let findings = [f(4, 10, PiiKind::Phone), f(8, 14, PiiKind::Card)];
        let r = redact(&req, &findings);
        assert_eq!(r.request.messages[0].content, "abc [PHONE_1] xyz");
    }

    #[test]
    fn streaming_restore_survives_placeholders_split_across_deltas() {
        let mut r = redacted("mail a@b.io").restorer;
        let mut out = String::new();
        for d in [
            "Sent to [EM",
            "AIL",
            "_1]",
            " ok, EMAIL",
            "_1 too [not a placeholder",
        ] {
            out.push_str(&r.push(d));
        }
        out.push_str(&r.finish());
        assert_eq!(out, "Sent to a@b.io ok, a@b.io too [not a placeholder");
    }
}
