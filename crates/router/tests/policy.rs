//! Policy files: the shipped ones load and behave as documented; broken ones give errors
//! naming the file, the key and the line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestBackend, policy};
use elmroute_core::{Battery, ChatRequest, DeviceState, Mode, Network, Target};
use elmroute_router::{Policy, PolicyError, Router};

const SHIPPED: [&str; 5] = [
    "balanced",
    "privacy-first",
    "battery-saver",
    "cloud-first",
    "offline-only",
];

fn decide(p: Policy, device: DeviceState, prompt: &str) -> elmroute_core::Route {
    Router::builder()
        .policy(p)
        .local(TestBackend::local("l"))
        .remote(TestBackend::remote("c"))
        .device(device)
        .build()
        .unwrap()
        .decide(&ChatRequest::user(prompt))
        .unwrap()
}

fn on_battery(level: f32) -> DeviceState {
    DeviceState {
        battery: Some(Battery {
            level,
            charging: false,
        }),
        ..DeviceState::default()
    }
}

const SIMPLE: &str = "What is the capital of France?";
const HARD: &str = "Explain step by step how to derive the closed-form solution of least squares \
    regression, prove the estimator is unbiased, then implement it in Rust with unit tests.";

#[test]
fn every_shipped_policy_keeps_clearly_private_content_on_the_device() {
    let private = [
        "My card number is 4111 1111 1111 1111, why was it declined?",
        "I was diagnosed with depression last month, how do I tell my boss?",
        "Here is my key sk-proj-abcdefghijklmnopqrstuvwx, why does the API reject it?",
        "Transfer to IBAN DE89 3704 0044 0532 0130 00 today",
        "My SSN is 123-45-6789, fill in the form",
    ];
    for name in SHIPPED {
        for prompt in private {
            for device in [DeviceState::default(), on_battery(0.05)] {
                let route = decide(policy(name), device, prompt);
                assert_ne!(route.target, Target::Cloud, "policy {name}: {prompt}");
                assert!(
                    route.scores.privacy >= 0.7,
                    "{prompt}: {}",
                    route.scores.privacy
                );
            }
        }
    }
}

#[test]
fn balanced_sends_hard_requests_to_the_cloud_and_easy_ones_to_the_device() {
    assert_eq!(
        decide(policy("balanced"), DeviceState::default(), SIMPLE).target,
        Target::Local
    );
    assert_eq!(
        decide(policy("balanced"), DeviceState::default(), HARD).target,
        Target::Cloud
    );
}

#[test]
fn privacy_first_keeps_a_single_email_on_the_device_where_balanced_redacts_it() {
    let prompt = "Explain step by step how to reply to jane@example.com about the design trade-offs, then derive a plan";
    let pf = decide(policy("privacy-first"), DeviceState::default(), prompt);
    assert_eq!(pf.target, Target::Local);
    let mut req_mode = policy("privacy-first");
    req_mode.mode = Mode::CloudOnly;
    assert_eq!(
        decide(req_mode, DeviceState::default(), prompt).target,
        Target::None
    );
    let bal = decide(policy("balanced"), DeviceState::default(), prompt);
    assert_eq!(bal.target, Target::Cloud);
    assert_eq!(bal.redactions, 1);
}

#[test]
fn battery_saver_moves_easy_requests_to_the_cloud_on_low_battery() {
    assert_eq!(
        decide(policy("battery-saver"), on_battery(0.9), SIMPLE).target,
        Target::Local
    );
    assert_eq!(
        decide(policy("battery-saver"), on_battery(0.3), SIMPLE).target,
        Target::Cloud
    );
    // balanced only starts caring at 20 %
    assert_eq!(
        decide(policy("balanced"), on_battery(0.3), SIMPLE).target,
        Target::Local
    );
    assert_eq!(
        decide(policy("balanced"), on_battery(0.05), SIMPLE).target,
        Target::Cloud
    );
}

#[test]
fn cloud_first_prefers_the_cloud_and_falls_back_offline() {
    assert_eq!(
        decide(policy("cloud-first"), DeviceState::default(), SIMPLE).target,
        Target::Cloud
    );
    let offline = DeviceState {
        network: Network::Offline,
        ..DeviceState::default()
    };
    assert_eq!(
        decide(policy("cloud-first"), offline, SIMPLE).target,
        Target::Local
    );
}

#[test]
fn offline_only_never_picks_the_cloud() {
    for prompt in [SIMPLE, HARD] {
        for device in [DeviceState::default(), on_battery(0.01)] {
            assert_eq!(
                decide(policy("offline-only"), device, prompt).target,
                Target::Local
            );
        }
    }
}

fn invalid(src: &str) -> (usize, Option<String>, String) {
    match Policy::from_toml(src, "test.toml").unwrap_err() {
        e @ PolicyError::Invalid { .. } => (
            e.line().unwrap(),
            e.key().map(str::to_string),
            e.to_string(),
        ),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn unknown_keys_are_rejected_with_line_and_key() {
    let (line, key, msg) = invalid("mode = \"auto\"\n\n[battery]\nlow = 0.2\ncritcal = 0.1\n");
    assert_eq!(line, 5);
    assert_eq!(key.as_deref(), Some("battery.critcal"));
    assert!(msg.starts_with("test.toml:5:"), "{msg}");
    assert!(msg.contains("unknown field"), "{msg}");
    let (line, key, _) = invalid("mood = \"auto\"\n");
    assert_eq!((line, key.as_deref()), (1, Some("mood")));
    let (line, key, _) = invalid("[weight]\ncomplexity = 1\n");
    assert_eq!((line, key.as_deref()), (1, Some("weight")));
}

#[test]
fn out_of_range_values_are_rejected_with_line_and_key() {
    let (line, key, msg) = invalid("[privacy]\nbar = 1.5\n");
    assert_eq!((line, key.as_deref()), (2, Some("privacy.bar")));
    assert!(msg.contains("from 0 to 1") && msg.contains("1.5"), "{msg}");
    let (line, key, msg) = invalid("\n[weights]\nbattery = -2\n");
    assert_eq!((line, key.as_deref()), (3, Some("weights.battery")));
    assert!(msg.contains("weight"), "{msg}");
    let (_, key, msg) = invalid("mode = \"sometimes\"\n");
    assert_eq!(key.as_deref(), Some("mode"));
    assert!(msg.contains("prefer_local"), "{msg}");
    let (_, key, _) = invalid("[thermal]\nlocal_forbidden_at = \"lukewarm\"\n");
    assert_eq!(key.as_deref(), Some("thermal.local_forbidden_at"));
    let (_, key, _) = invalid("threshold = \"high\"\n");
    assert_eq!(key.as_deref(), Some("threshold"));
}

#[test]
fn inconsistent_values_are_rejected_with_line_and_key() {
    let (line, key, msg) = invalid("[battery]\nlow = 0.1\ncritical = 0.3\n");
    assert_eq!((line, key.as_deref()), (3, Some("battery.critical")));
    assert!(msg.contains("battery.low"), "{msg}");
    let (line, key, _) = invalid("[privacy]\nredact_above = 0.9\nbar = 0.5\n");
    assert_eq!((line, key.as_deref()), (2, Some("privacy.redact_above")));
    let (_, key, _) = invalid("[thermal]\nlocal_forbidden_at = \"fair\"\n");
    assert_eq!(key.as_deref(), Some("thermal.local_forbidden_at"));
}

#[test]
fn broken_toml_and_missing_files_name_the_file() {
    let (line, _, msg) = invalid("mode = \"auto\"\n[privacy\nbar = 0.5\n");
    assert_eq!(line, 2);
    assert!(msg.starts_with("test.toml:2:"), "{msg}");
    let err = Policy::from_file("/nonexistent/policy.toml").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/policy.toml"));
}

#[test]
fn shipped_policies_round_trip() {
    for name in SHIPPED {
        let p = policy(name);
        assert_eq!(Policy::from_toml(&p.to_toml(), name).unwrap(), p, "{name}");
    }
}

#[test]
fn keys_are_found_under_commented_headers_inline_tables_and_dotted_keys() {
    let (line, key, _) = invalid("[battery]   # levels\nlow = 2.0\n");
    assert_eq!((line, key.as_deref()), (2, Some("battery.low")));
    let (line, key, _) = invalid("mode = \"auto\"\nbattery = { low = 0.2, critical = 7.0 }\n");
    assert_eq!((line, key.as_deref()), (2, Some("battery.critical")));
    let (line, key, msg) = invalid("battery = { low = 0.2, lowest = 0.1 }\n");
    assert_eq!((line, key.as_deref()), (1, Some("battery.lowest")), "{msg}");
    let (line, key, _) = invalid("battery.low = \"low\"\n");
    assert_eq!((line, key.as_deref()), (1, Some("battery.low")));
    let (line, key, _) = invalid("[battery] # levels\nlow = 0.1\ncritical = 0.3\n");
    assert_eq!((line, key.as_deref()), (3, Some("battery.critical")));
}

#[test]
fn a_cross_key_error_points_at_the_key_the_file_sets() {
    // Only `bar` is set; the default redact_above (0.3) is above it.
    let (line, key, msg) = invalid("mode = \"auto\"\n[privacy]\nbar = 0.2\n");
    assert_eq!((line, key.as_deref()), (3, Some("privacy.bar")));
    assert!(msg.contains("redact_above") && msg.contains("0.2"), "{msg}");
}

#[test]
fn policies_built_in_code_are_validated_by_the_router_builder() {
    let mut p = Policy::default();
    p.thermal.local_forbidden_at = elmroute_core::ThermalLevel::Nominal;
    assert_eq!(
        p.validate().unwrap_err().key(),
        Some("thermal.local_forbidden_at")
    );
    let err = Router::builder()
        .policy(p)
        .local(TestBackend::local("l"))
        .build()
        .unwrap_err();
    assert!(err.is_invalid_request());
    assert!(
        err.to_string().contains("thermal.local_forbidden_at"),
        "{err}"
    );
}

#[test]
fn a_remote_table_names_the_provider() {
    let p = Policy::from_toml(
        "[remote]\nbase_url = \"http://127.0.0.1:11434/v1\"\nmodel = \"llama3.2\"\napi_key_env = \"\"\ncontext_window = 8192\nidle_timeout_secs = 10\nheaders = { \"X-Title\" = \"elmroute\" }\n",
        "test.toml",
    )
    .unwrap();
    let r = p.remote.as_ref().unwrap();
    assert_eq!(r.base_url.as_str(), "http://127.0.0.1:11434/v1");
    assert_eq!(r.model.as_str(), "llama3.2");
    assert_eq!(r.api_key_env, "");
    assert_eq!(r.context_window, Some(8192));
    assert_eq!(r.idle_timeout_secs.get(), 10.0);
    assert_eq!(r.first_byte_timeout_secs.get(), 60.0, "default");
    assert_eq!(r.max_retries, 2, "default");
    assert_eq!(Policy::from_toml(&p.to_toml(), "again").unwrap(), p);
    // Header values may be secrets: Debug shows names only.
    assert!(!format!("{p:?}").contains("\"elmroute\""));
    assert!(Policy::default().remote.is_none());
}

#[test]
fn a_broken_remote_table_names_the_key() {
    let (line, key, msg) = invalid("[remote]\nbase_url = \"localhost:8000\"\nmodel = \"m\"\n");
    assert_eq!((line, key.as_deref()), (2, Some("remote.base_url")));
    assert!(msg.contains("http:// or https://"), "{msg}");
    let (_, key, msg) = invalid("[remote]\nbase_url = \"http://h/v1\"\nmodel = \"\"\n");
    assert_eq!(key.as_deref(), Some("remote.model"));
    assert!(msg.contains("model id"), "{msg}");
    let (_, _, msg) = invalid("[remote]\nbase_url = \"http://h/v1\"\n");
    assert!(msg.contains("missing field `model`"), "{msg}");
    let (line, key, _) =
        invalid("[remote]\nbase_url = \"http://h/v1\"\nmodel = \"m\"\napi_key = \"sk-x\"\n");
    assert_eq!((line, key.as_deref()), (4, Some("remote.api_key")));
    let (_, key, msg) =
        invalid("[remote]\nbase_url = \"http://h/v1\"\nmodel = \"m\"\nidle_timeout_secs = 0\n");
    assert_eq!(key.as_deref(), Some("remote.idle_timeout_secs"));
    assert!(msg.contains("seconds"), "{msg}");
    let (line, key, msg) = invalid(
        "[remote]\nbase_url = \"http://h/v1\"\nmodel = \"m\"\nfirst_byte_timeout_secs = 600\ntotal_timeout_secs = 60\n",
    );
    assert_eq!(
        (line, key.as_deref()),
        (5, Some("remote.total_timeout_secs"))
    );
    assert!(msg.contains("at least"), "{msg}");
    let (_, key, _) =
        invalid("[remote]\nbase_url = \"http://h/v1\"\nmodel = \"m\"\nmax_retries = 50\n");
    assert_eq!(key.as_deref(), Some("remote.max_retries"));
    let (_, key, _) = invalid("[network]\noffline_recheck_secs = 0\n");
    assert_eq!(key.as_deref(), Some("network.offline_recheck_secs"));
}

#[test]
fn privacy_patterns_topics_and_action_are_read_with_defaults() {
    let p = Policy::from_toml(
        "[privacy]\naction = \"block\"\n\n[privacy.topics]\nhealth = [\"long covid\", \"ME/CFS\"]\n\n[[privacy.patterns]]\nregex = 'EMP-\\d{6}'\ncategory = \"employee_id\"\nweight = 0.8\n\n[[privacy.patterns]]\nregex = 'PAT\\d{8}'\ncategory = \"national_id\"\n",
        "test.toml",
    )
    .unwrap();
    assert_eq!(p.privacy.action, elmroute_core::PrivacyAction::Block);
    assert_eq!(p.privacy.topics.health, vec!["long covid", "ME/CFS"]);
    assert_eq!(p.privacy.patterns.len(), 2);
    assert_eq!(p.privacy.patterns[0].category, "employee_id");
    assert_eq!(p.privacy.patterns[0].weight.get(), 0.8);
    assert_eq!(p.privacy.patterns[1].weight.get(), 0.5, "default weight");
    // Round trip, and the defaults stay what they were.
    assert_eq!(Policy::from_toml(&p.to_toml(), "rt").unwrap(), p);
    let d = Policy::default();
    assert_eq!(d.privacy.action, elmroute_core::PrivacyAction::Redact);
    assert!(d.privacy.patterns.is_empty() && d.privacy.topics.is_empty());
    assert!(!d.to_toml().contains("patterns"), "{}", d.to_toml());
}

#[test]
fn bad_privacy_patterns_name_the_line_the_key_and_the_regex_error() {
    let (line, key, msg) = invalid(
        "mode = \"auto\"\n\n[[privacy.patterns]]\nregex = 'EMP-(\\d{6}'\ncategory = \"employee_id\"\n",
    );
    assert_eq!((line, key.as_deref()), (4, Some("privacy.patterns.regex")));
    assert!(msg.starts_with("test.toml:4:"), "{msg}");
    assert!(
        msg.contains("EMP-(") && msg.contains("unclosed group"),
        "{msg}"
    );
    let (line, key, msg) =
        invalid("[[privacy.patterns]]\nregex = 'x*'\ncategory = \"employee_id\"\n");
    assert_eq!((line, key.as_deref()), (2, Some("privacy.patterns.regex")));
    assert!(msg.contains("empty string"), "{msg}");
    let (line, key, msg) =
        invalid("[[privacy.patterns]]\nregex = 'EMP-\\d+'\ncategory = \"Employee ID\"\n");
    assert_eq!(
        (line, key.as_deref()),
        (3, Some("privacy.patterns.category"))
    );
    assert!(msg.contains("lowercase"), "{msg}");
    let (line, key, _) = invalid(
        "[[privacy.patterns]]\nregex = 'EMP-\\d+'\ncategory = \"employee_id\"\nweight = 3\n",
    );
    assert_eq!((line, key.as_deref()), (4, Some("privacy.patterns.weight")));
    let (line, key, msg) = invalid("[[privacy.patterns]]\ncategory = \"employee_id\"\n");
    assert_eq!(line, 1);
    assert!(msg.contains("regex"), "{msg}");
    let _ = key;
    let (line, key, msg) = invalid("[privacy.topics]\nastrology = [\"horoscope\"]\n");
    assert_eq!(
        (line, key.as_deref()),
        (2, Some("privacy.topics.astrology"))
    );
    assert!(msg.contains("health"), "{msg}");
    let (_, key, msg) = invalid("[privacy]\naction = \"shred\"\n");
    assert_eq!(key.as_deref(), Some("privacy.action"));
    assert!(msg.contains("block"), "{msg}");
}

#[test]
fn a_bad_pattern_built_in_code_is_refused_by_validate_and_build() {
    let mut p = Policy::default();
    p.privacy
        .patterns
        .push(elmroute_router::policy::CustomPattern {
            regex: "(".into(),
            category: "employee_id".into(),
            weight: elmroute_router::policy::Unit::new(0.5).unwrap(),
        });
    let err = p.validate().unwrap_err();
    assert_eq!(err.key(), Some("privacy.patterns[0].regex"));
    let built = Router::builder()
        .policy(p)
        .local(elmroute_router::DeclaredBackend::local("m", 2048))
        .build();
    assert!(built.unwrap_err().is_invalid_request());
}
