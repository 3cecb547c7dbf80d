//! Properties of the decision over generated inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use elmroute_core::{Battery, DeviceState, Mode, Network, Target, ThermalLevel};
use elmroute_router::decision::{Inputs, LocalView, RemoteView, decide};
use elmroute_router::{Policy, PrivacyDetector};
use proptest::prelude::*;

fn thermal() -> impl Strategy<Value = ThermalLevel> {
    prop_oneof![
        Just(ThermalLevel::Nominal),
        Just(ThermalLevel::Fair),
        Just(ThermalLevel::Serious),
        Just(ThermalLevel::Critical),
    ]
}

fn network() -> impl Strategy<Value = Network> {
    prop_oneof![
        Just(Network::Online),
        Just(Network::Metered),
        Just(Network::Offline)
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop::sample::select(Mode::ALL.to_vec())
}

prop_compose! {
    fn device()(level in 0.0f32..=1.0, charging: bool, has_battery: bool, low_power: bool,
                thermal in thermal(), network in network()) -> DeviceState {
        DeviceState {
            battery: has_battery.then_some(Battery { level, charging }),
            low_power,
            thermal,
            network,
        }
    }
}

prop_compose! {
    fn inputs()(mode in mode(), complexity in 0.0f32..=1.0, privacy in 0.0f32..=1.0, residual in 0.0f32..=1.0,
                redactable in 0usize..4, device in device(), local_ready: bool,
                needed in 0usize..4000, remote_ready: bool, cooling: bool) -> Inputs {
        Inputs {
            mode, complexity, privacy, privacy_residual: residual.min(privacy), redactable, device,
            local: Some(LocalView { ready: local_ready, not_ready_reason: "loading".into(),
                                    context_window: Some(2048), needed_tokens: needed,
                                    truncation_allowed: false }),
            remote: Some(RemoteView { ready: remote_ready && !cooling, cooling_down: cooling,
                                      not_ready_reason: "down".into(), unreachable: None }),
        }
    }
}

/// One detector for every case: building one compiles its automaton.
fn detector() -> &'static PrivacyDetector {
    static DETECTOR: std::sync::OnceLock<PrivacyDetector> = std::sync::OnceLock::new();
    DETECTOR.get_or_init(PrivacyDetector::new)
}

fn policies() -> &'static [Policy] {
    static POLICIES: std::sync::OnceLock<Vec<Policy>> = std::sync::OnceLock::new();
    POLICIES.get_or_init(|| {
        [
            "balanced",
            "privacy-first",
            "battery-saver",
            "cloud-first",
            "offline-only",
        ]
        .iter()
        .map(|n| {
            Policy::from_file(format!(
                "{}/../../policies/{n}.toml",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        })
        .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn offline_never_routes_to_cloud(mut i in inputs(), p in 0usize..5) {
        i.device.network = Network::Offline;
        let d = decide(&policies()[p], &i);
        prop_assert_ne!(d.route.target, Target::Cloud);
    }

    #[test]
    fn thermal_critical_never_routes_local(mut i in inputs(), p in 0usize..5) {
        i.device.thermal = ThermalLevel::Critical;
        let d = decide(&policies()[p], &i);
        prop_assert_ne!(d.route.target, Target::Local);
    }

    #[test]
    fn privacy_at_the_bar_never_routes_to_cloud(i in inputs(), p in 0usize..5) {
        let policy = &policies()[p];
        let d = decide(policy, &i);
        if i.privacy >= policy.privacy.bar.get() {
            prop_assert_ne!(d.route.target, Target::Cloud);
        }
    }

    #[test]
    fn raising_complexity_alone_never_moves_cloud_to_local(i in inputs(), extra in 0.0f32..=1.0, p in 0usize..5) {
        let policy = &policies()[p];
        let before = decide(policy, &i);
        let mut harder = i.clone();
        harder.complexity = (i.complexity + extra).min(1.0);
        let after = decide(policy, &harder);
        if before.route.target == Target::Cloud {
            prop_assert_eq!(after.route.target, Target::Cloud);
        }
    }

    #[test]
    fn a_no_route_decision_refuses_both(i in inputs(), p in 0usize..5) {
        let d = decide(&policies()[p], &i);
        if d.route.target == Target::None {
            prop_assert!(d.refused(Target::Local) && d.refused(Target::Cloud));
        } else {
            prop_assert!(!d.refused(d.route.target));
        }
    }

    #[test]
    fn adding_personal_data_never_lowers_privacy(
        base in "[a-zA-Z0-9 ,.?'-]{0,200}",
        user in "[a-z]{1,12}", domain in "[a-z]{2,10}",
        digits in prop::collection::vec(0u8..10, 7),
        which in 0usize..5,
    ) {
        let det = detector();
        let d: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
        let pii = match which {
            0 => format!("{user}@{domain}.com"),
            1 => format!("+1 415 {} {}", &d[..3], &d[3..]),
            2 => "4111 1111 1111 1111".to_string(),
            3 => format!("my password is {user}{d}"),
            _ => "I was diagnosed with diabetes".to_string(),
        };
        let before = det.scan(&elmroute_core::ChatRequest::user(base.clone())).score;
        let after = det.scan(&elmroute_core::ChatRequest::user(format!("{base} {pii}"))).score;
        prop_assert!(after >= before, "{} -> {}", before, after);
        let before_front = det.scan(&elmroute_core::ChatRequest::user(base.clone())).score;
        let after_front = det.scan(&elmroute_core::ChatRequest::user(format!("{pii} {base}"))).score;
        prop_assert!(after_front >= before_front);
    }
}

/// A private value of a kind the detector always finds, in one of several forms.
fn private_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            "[a-z]{1,8}",
            "[a-z]{2,8}",
            prop::sample::select(vec!["com", "org", "de", "io"])
        )
            .prop_map(|(u, d, t)| format!("{u}.x@{d}.{t}")),
        prop::sample::select(vec![
            "4111 1111 1111 1111",
            "5555-5555-5555-4444",
            "378282246310005",
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "+44 20 7946 0958",
            "(415) 555-0134",
            "219-09-9999",
            "203.0.113.45",
            "2001:db8:85a3::8a2e:370:7334",
            "00:1A:2B:3C:4D:5E",
            "sk-proj-4fG7hJ2kL9mN3pQ8rS1tV6wX0yZ5aB",
            "AKIAIOSFODNN7EXAMPLE",
        ])
        .prop_map(str::to_string),
    ]
}

/// A few neutral words: no cue that could veto or change a value's kind ("ms", "order").
fn prose() -> impl Strategy<Value = String> {
    let words = prop::sample::select(vec![
        "Hello", "please", "send", "the", "report", "today", "and", "then", "we", "will", "check",
        "it", "again", "thanks", "note", "later", "to", "Sam",
    ]);
    (
        prop::collection::vec(words, 1..6),
        prop::sample::select(vec!["", ",", "."]),
    )
        .prop_map(|(w, end)| format!("{}{end}", w.join(" ")))
}

prop_compose! {
    /// Prose with private values between its words; values may repeat.
    fn private_text()(parts in prop::collection::vec(
        prop_oneof![
            prose().prop_map(|s| (s, false)),
            private_value().prop_map(|v| (v, true)),
        ], 1..10)) -> (String, Vec<String>) {
        let mut text = String::new();
        let mut values = Vec::new();
        for (part, private) in parts {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&part);
            if private {
                values.push(part);
            }
        }
        (text, values)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn redact_then_restore_gives_back_the_original((text, _) in private_text(), (second, _) in private_text()) {
        let req = elmroute_core::ChatRequest::new(vec![
            elmroute_core::Message::user(text.clone()),
            elmroute_core::Message::assistant(second.clone()),
        ]);
        let report = detector().scan(&req);
        let r = elmroute_router::redact::redact(&req, &report.findings);
        prop_assert_eq!(r.restorer.restore(&r.request.messages[0].content), text);
        prop_assert_eq!(r.restorer.restore(&r.request.messages[1].content), second);
    }

    #[test]
    fn no_raw_finding_survives_redaction((text, values) in private_text()) {
        let req = elmroute_core::ChatRequest::user(text.clone());
        let report = detector().scan(&req);
        let r = elmroute_router::redact::redact(&req, &report.findings);
        let sent = &r.request.messages[0].content;
        for f in report.findings.iter().filter(|f| f.kind.redactable()) {
            let raw = &text[f.start..f.end];
            prop_assert!(!sent.contains(raw), "{:?} {:?} survived in {:?}", f.kind, raw, sent);
        }
        // The values put in are found: none of them reaches the cloud either.
        for v in &values {
            prop_assert!(!sent.contains(v.as_str()), "{:?} survived in {:?}", v, sent);
        }
    }

    #[test]
    fn stream_restore_works_for_every_split_into_chunks(
        (text, _) in private_text(),
        cuts in prop::collection::vec(0usize..400, 0..12),
    ) {
        let req = elmroute_core::ChatRequest::user(text.clone());
        let report = detector().scan(&req);
        let r = elmroute_router::redact::redact(&req, &report.findings);
        // The model echoes the redacted text back.
        let answer = format!("Sure: {} Done.", r.request.messages[0].content);
        let whole = r.restorer.restore(&answer);
        prop_assert!(whole.contains(&text));
        let stream = |points: &[usize]| {
            let mut restorer = r.restorer.clone();
            let mut out = String::new();
            let mut at = 0;
            for &p in points {
                out.push_str(&restorer.push(&answer[at..p]));
                at = p;
            }
            out.push_str(&restorer.push(&answer[at..]));
            out.push_str(&restorer.finish());
            out
        };
        let boundaries: Vec<usize> =
            (1..answer.len()).filter(|i| answer.is_char_boundary(*i)).collect();
        // Every split into two chunks...
        for &p in &boundaries {
            prop_assert_eq!(stream(&[p]), whole.clone(), "split at {}", p);
        }
        // ...every chunk of one character...
        prop_assert_eq!(stream(&boundaries), whole.clone());
        // ...and random splits into many.
        let mut points: Vec<usize> = cuts
            .iter()
            .filter_map(|c| boundaries.get(c % boundaries.len().max(1)).copied())
            .collect();
        points.sort_unstable();
        points.dedup();
        prop_assert_eq!(stream(&points), whole);
    }
}

/// Pieces of prompts: plain words, hard markers in several languages, separators, fences and
/// figures. Simple and transform asks only ever start a prompt (they discount what follows).
const HARD_PIECES: &[&str] = &[
    "the",
    "cat",
    "report",
    "prove",
    "explain",
    "why",
    "code",
    "```",
    ":",
    "?",
    ",",
    "\n",
    "1",
    "+",
    "2",
    "python",
    "rust",
    "Докажи",
    "证明",
    "detailed",
    "implement",
    "step by step",
    "integral",
    "compare",
];
const HEAD_PIECES: &[&str] = &[
    "Fix the typos",
    "Translate this",
    "what is",
    "hello",
    "Summarize",
    "Übersetze",
    "the",
];

fn pieces(pool: &'static [&'static str], n: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(pool), 0..n).prop_map(|v| v.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Appending hard material to any prompt, a transform ask or a code block included,
    /// never lowers the complexity score.
    #[test]
    fn appending_hard_material_never_lowers_complexity(
        head in pieces(HEAD_PIECES, 3),
        body in pieces(HARD_PIECES, 12),
        tail in pieces(HARD_PIECES, 12),
    ) {
        use elmroute_router::ComplexityScorer;
        static SCORER: std::sync::OnceLock<elmroute_router::HeuristicComplexity> =
            std::sync::OnceLock::new();
        let scorer = SCORER.get_or_init(elmroute_router::HeuristicComplexity::new);
        let before = format!("{head} {body}");
        let after = format!("{before} {tail}");
        let a = scorer.score(&elmroute_core::ChatRequest::user(before.clone()));
        let b = scorer.score(&elmroute_core::ChatRequest::user(after.clone()));
        prop_assert!(b >= a, "{a} -> {b}: {before:?} -> {after:?}");
    }
}
