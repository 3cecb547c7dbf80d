//! How privacy-sensitive a request is: personal data found by validated detectors, sensitive
//! topics spoken of in the first person, and the app's own label.
//!
//! Structured identifiers are found by regular expressions and then *validated* where a
//! checksum exists (Luhn for payment cards, mod-97 for IBANs), so a random 16-digit number is
//! not a card. Each finding has a weight; the score is their noisy-or,
//! `1 - Π(1 - w)`, so every further finding can only raise it. Structured findings can be
//! redacted (see [`crate::redact`]); topics cannot, because they are the meaning.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use elmroute_core::{ChatRequest, Sensitivity};
use regex::Regex;
use serde::Serialize;

/// The kinds of private data the detector knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// An API key, token, private key or a `password: ...` assignment.
    Secret,
    /// A payment card number that passes the Luhn check.
    Card,
    /// An IBAN that passes the mod-97 check.
    Iban,
    /// A national identifier (US SSN format).
    NationalId,
    /// An email address.
    Email,
    /// A phone number.
    Phone,
    /// A street address.
    Address,
    /// An IPv4 address.
    IpAddress,
    /// Health, finance, legal or other sensitive matters spoken of in the first person.
    SensitiveTopic,
    /// A sensitive topic mentioned impersonally ("what is diabetes?").
    TopicMention,
}

impl PiiKind {
    /// How much one finding of this kind counts toward the privacy score.
    pub fn weight(self) -> f32 {
        match self {
            PiiKind::Secret | PiiKind::Card | PiiKind::Iban | PiiKind::NationalId => 1.0,
            PiiKind::SensitiveTopic => 0.75,
            PiiKind::Email | PiiKind::Phone | PiiKind::Address => 0.5,
            PiiKind::IpAddress => 0.3,
            PiiKind::TopicMention => 0.1,
        }
    }

    /// Whether spans of this kind can be replaced by a placeholder without losing the ask.
    pub fn redactable(self) -> bool {
        !matches!(self, PiiKind::SensitiveTopic | PiiKind::TopicMention)
    }

    /// The placeholder label (`EMAIL` in `[EMAIL_1]`).
    pub fn label(self) -> &'static str {
        match self {
            PiiKind::Secret => "SECRET",
            PiiKind::Card => "CARD",
            PiiKind::Iban => "IBAN",
            PiiKind::NationalId => "ID",
            PiiKind::Email => "EMAIL",
            PiiKind::Phone => "PHONE",
            PiiKind::Address => "ADDRESS",
            PiiKind::IpAddress => "IP",
            PiiKind::SensitiveTopic => "TOPIC",
            PiiKind::TopicMention => "MENTION",
        }
    }
}

/// One finding: its kind and where it is. Never holds the text itself, so findings can be
/// logged safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was found.
    pub kind: PiiKind,
    /// The index of the message in the request.
    pub message: usize,
    /// Byte offsets in that message.
    pub start: usize,
    /// End byte offset (exclusive).
    pub end: usize,
}

/// The privacy signal of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct PrivacyReport {
    /// 0..=1.
    pub score: f32,
    /// The score that remains once the redactable findings are replaced: what the cloud
    /// would still learn from a redacted request. 0..=1, never above `score`.
    pub residual: f32,
    /// Every finding, in message order then position.
    pub findings: Vec<Finding>,
}

impl PrivacyReport {
    /// How many findings could be redacted.
    pub fn redactable(&self) -> usize {
        self.findings.iter().filter(|f| f.kind.redactable()).count()
    }
}

const TOPICS: &[&str] = &[
    // health
    "diagnosed",
    "diagnosis",
    "my doctor",
    "therapist",
    "therapy",
    "depression",
    "depressed",
    "anxiety",
    "panic attack",
    "suicidal",
    "self-harm",
    "hiv",
    "cancer",
    "tumor",
    "tumour",
    "chemotherapy",
    "diabetes",
    "pregnant",
    "pregnancy",
    "miscarriage",
    "abortion",
    "medication",
    "prescription",
    "antidepressant",
    "bipolar",
    "schizophrenia",
    "adhd",
    "autism",
    "rehab",
    "addiction",
    "std",
    "sti",
    "symptoms",
    "surgery",
    "blood test",
    "mental health",
    "eating disorder",
    "disability",
    "medical record",
    "psychiatrist",
    // finance
    "salary",
    "my income",
    "bank account",
    "account number",
    "credit score",
    "debt",
    "loan",
    "mortgage",
    "bankrupt",
    "bankruptcy",
    "tax return",
    "net worth",
    "owe ",
    "overdraft",
    "pin code",
    "routing number",
    // legal and identity
    "lawsuit",
    "arrested",
    "criminal record",
    "conviction",
    "divorce",
    "custody",
    "immigration status",
    "visa status",
    "undocumented",
    "passport number",
    "social security",
    "date of birth",
    "born on",
    // intimate and beliefs
    "sexual orientation",
    "gay",
    "lesbian",
    "bisexual",
    "transgender",
    "affair",
    "religion",
    "my religious",
    "political views",
    "union member",
];

const FIRST_PERSON: &[&str] = &[
    "i ",
    "i'm",
    "i am",
    "i've",
    "i was",
    "i have",
    "my ",
    "me ",
    "me.",
    "me,",
    "mine",
    "myself",
    "we ",
    "our ",
    "my wife",
    "my husband",
    "my son",
    "my daughter",
    "my partner",
];

/// Finds private data in requests. Build once and share: construction compiles the
/// expressions.
///
/// Use [`PrivacyDetector::detector_count`] to check that every built-in detector compiled.
#[derive(Debug, Clone)]
pub struct PrivacyDetector {
    detectors: Vec<(PiiKind, Regex)>,
    topics: Option<AhoCorasick>,
    first_person: Option<AhoCorasick>,
}

fn regex(pattern: &str) -> Option<Regex> {
    Regex::new(pattern).ok()
}

fn automaton(words: &[&str]) -> Option<AhoCorasick> {
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostLongest)
        .build(words)
        .ok()
}

impl Default for PrivacyDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl PrivacyDetector {
    /// The detector with every built-in kind.
    pub fn new() -> Self {
        // Order matters: earlier kinds claim their spans first (a card number is not also a
        // phone number).
        let patterns: [(PiiKind, &str); 8] = [
            (
                PiiKind::Secret,
                r"(?x)
                  \b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}
                | \bAKIA[0-9A-Z]{16}\b
                | \bgh[pousr]_[A-Za-z0-9]{30,}
                | \bxox[abprs]-[A-Za-z0-9\-]{10,}
                | \bAIza[0-9A-Za-z_\-]{30,}
                | -----BEGIN[A-Z\ ]*PRIVATE\ KEY-----
                | \beyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{5,}
                | (?i:\b(?:password|passwd|pwd|passcode|api[_\-\ ]?key|secret|access[_\-\ ]?token|auth[_\-\ ]?token|pin)\b\s*(?:is|[:=])\s*\S+)",
            ),
            (PiiKind::Card, r"\b\d(?:[ \-]?\d){12,18}\b"),
            (PiiKind::Iban, r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b"),
            (PiiKind::NationalId, r"\b\d{3}-\d{2}-\d{4}\b"),
            (
                PiiKind::Email,
                r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b",
            ),
            (
                PiiKind::Phone,
                r"(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{1,4}\)[\s.\-]?)?\d{2,4}(?:[\s.\-]\d{2,4}){1,4}\b",
            ),
            (
                PiiKind::Address,
                r"(?i)\b\d{1,5}\s+(?:[A-Za-z][A-Za-z.'\-]*\s+){1,4}(?:street|st\.?|avenue|ave\.?|road|rd\.?|boulevard|blvd\.?|lane|ln\.?|drive|dr\.?|court|ct\.?|way|place|pl\.?|terrace|crescent|close|square|strasse|straße)\b",
            ),
            (
                PiiKind::IpAddress,
                r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b",
            ),
        ];
        let detectors: Vec<(PiiKind, Regex)> = patterns
            .into_iter()
            .filter_map(|(k, p)| {
                let r = regex(p);
                if r.is_none() {
                    // Only reachable if the regex crate is built without a feature the
                    // patterns need; say so loudly instead of silently detecting less.
                    tracing::error!(kind = ?k, "privacy detector failed to compile; it is disabled");
                }
                r.map(|r| (k, r))
            })
            .collect();
        Self {
            detectors,
            topics: automaton(TOPICS),
            first_person: automaton(FIRST_PERSON),
        }
    }

    /// How many pattern detectors are active (8 when all compiled).
    pub fn detector_count(&self) -> usize {
        self.detectors.len()
    }

    /// Scans every message of a request.
    pub fn scan(&self, request: &ChatRequest) -> PrivacyReport {
        let mut findings = Vec::new();
        for (i, m) in request.messages.iter().enumerate() {
            self.scan_text(i, &m.content, &mut findings);
        }
        let label = |score: f32| match request.sensitivity {
            Sensitivity::Confidential => 1.0,
            Sensitivity::Internal => score.max(0.5),
            Sensitivity::Public | Sensitivity::Unlabelled => score,
        };
        let (mut keep, mut keep_residual) = (1.0f32, 1.0f32);
        for f in &findings {
            keep *= 1.0 - f.kind.weight();
            if !f.kind.redactable() {
                keep_residual *= 1.0 - f.kind.weight();
            }
        }
        PrivacyReport {
            score: label(1.0 - keep).clamp(0.0, 1.0),
            residual: label(1.0 - keep_residual).clamp(0.0, 1.0),
            findings,
        }
    }

    /// Scans one text, appending findings for message index `message`.
    pub fn scan_text(&self, message: usize, text: &str, out: &mut Vec<Finding>) {
        let first = out.len();
        for (kind, re) in &self.detectors {
            for m in re.find_iter(text) {
                let (start, end) = (m.start(), m.end());
                let span = m.as_str();
                let valid = match kind {
                    PiiKind::Card => luhn_ok(span),
                    PiiKind::Iban => iban_ok(span),
                    PiiKind::NationalId => ssn_ok(span),
                    PiiKind::Phone => phone_ok(span),
                    _ => true,
                };
                let overlaps = out[first..].iter().any(|f| f.start < end && start < f.end);
                if valid && !overlaps {
                    out.push(Finding {
                        kind: *kind,
                        message,
                        start,
                        end,
                    });
                }
            }
        }
        if let Some(topics) = &self.topics {
            let bytes = text.as_bytes();
            let personal = self
                .first_person
                .as_ref()
                .is_some_and(|fp| fp.find_iter(text).any(|m| word_start(bytes, m.start())));
            for m in topics.find_iter(text) {
                if !word_start(bytes, m.start()) || !word_end(bytes, m.end()) {
                    continue;
                }
                out.push(Finding {
                    kind: if personal {
                        PiiKind::SensitiveTopic
                    } else {
                        PiiKind::TopicMention
                    },
                    message,
                    start: m.start(),
                    end: m.end(),
                });
            }
        }
        out[first..].sort_by_key(|f| f.start);
    }
}

fn word_start(bytes: &[u8], i: usize) -> bool {
    i == 0 || !bytes.get(i - 1).is_some_and(|b| b.is_ascii_alphanumeric())
}

fn word_end(bytes: &[u8], i: usize) -> bool {
    // Markers ending in a space or punctuation carry their own boundary.
    let last = if i > 0 { bytes.get(i - 1) } else { None };
    if last.is_some_and(|b| !b.is_ascii_alphanumeric()) {
        return true;
    }
    // Allow plurals ("symptoms", "loans") but not longer words ("gayety" is rare enough;
    // "stdout" is not a disease).
    match bytes.get(i) {
        None => true,
        Some(b's') => !bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphanumeric()),
        Some(b) => !b.is_ascii_alphanumeric(),
    }
}

/// The Luhn checksum of a 13-19 digit number (separators ignored).
pub fn luhn_ok(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|&d| d == digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// The ISO 13616 mod-97 check of an IBAN (spaces ignored).
pub fn iban_ok(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head.iter()) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn ssn_ok(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [area, group, serial] => {
            *area != "000"
                && *area != "666"
                && !area.starts_with('9')
                && *group != "00"
                && *serial != "0000"
        }
        _ => false,
    }
}

fn phone_ok(s: &str) -> bool {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let formatted = s.starts_with('+') || s.contains('(') || s.contains(' ') || s.contains('-');
    // Dotted groups are usually versions or numbers ("1.2.3", "10.000.000") unless long.
    let dotted_only = !formatted && s.contains('.');
    (9..=15).contains(&digits) && (formatted || (dotted_only && digits >= 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<PiiKind> {
        let mut out = Vec::new();
        PrivacyDetector::new().scan_text(0, text, &mut out);
        out.into_iter().map(|f| f.kind).collect()
    }

    #[test]
    fn luhn_accepts_test_cards_and_rejects_typos() {
        assert!(luhn_ok("4111 1111 1111 1111"));
        assert!(luhn_ok("5555-5555-5555-4444"));
        assert!(!luhn_ok("4111 1111 1111 1112"));
        assert!(!luhn_ok("0000 0000 0000 0000"));
    }

    #[test]
    fn iban_mod97() {
        assert!(iban_ok("GB82 WEST 1234 5698 7654 32"));
        assert!(iban_ok("DE89370400440532013000"));
        assert!(!iban_ok("DE89370400440532013001"));
    }

    #[test]
    fn finds_each_kind() {
        assert_eq!(
            kinds("mail me at jane.doe@example.com"),
            vec![PiiKind::Email]
        );
        assert_eq!(
            kinds("card 4111 1111 1111 1111 exp 12/29"),
            vec![PiiKind::Card]
        );
        assert_eq!(
            kinds("call +1 (415) 555-0134 tonight"),
            vec![PiiKind::Phone]
        );
        assert_eq!(kinds("ssn 123-45-6789"), vec![PiiKind::NationalId]);
        assert_eq!(
            kinds("key sk-abcdefghijklmnop1234567890"),
            vec![PiiKind::Secret]
        );
        assert_eq!(kinds("my password is hunter2"), vec![PiiKind::Secret]);
        assert_eq!(
            kinds("IBAN DE89 3704 0044 0532 0130 00"),
            vec![PiiKind::Iban]
        );
        assert_eq!(kinds("I live at 221 Baker Street"), vec![PiiKind::Address]);
    }

    #[test]
    fn ordinary_numbers_are_not_pii() {
        assert!(kinds("the year 2024 had 365 days and version 1.2.3").is_empty());
        assert!(kinds("pi is 3.14159265358979").is_empty());
        assert!(kinds("order 1234567890123456 shipped").is_empty()); // fails Luhn
    }

    #[test]
    fn topics_count_more_in_the_first_person() {
        assert_eq!(kinds("what is diabetes?"), vec![PiiKind::TopicMention]);
        assert_eq!(
            kinds("I was diagnosed with diabetes"),
            vec![PiiKind::SensitiveTopic, PiiKind::SensitiveTopic]
        );
    }
}
