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
                                      not_ready_reason: "down".into() }),
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
