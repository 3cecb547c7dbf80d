//! The decision: hard rules first, then the mode, then the weighted score.
//!
//! A pure function of the signals, the device state, what the backends report and the
//! policy, so it can be tested exhaustively and benchmarked alone.

use elmroute_core::{
    DeviceState, Fallback, FallbackKind, Mode, Network, Refusal, Route, Rule, Scores, Target,
    ThermalLevel, Timings,
};

use crate::policy::Policy;
use crate::signals::device;

/// What the router knows about its local backend at decision time.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalView {
    /// Whether it can serve now.
    pub ready: bool,
    /// Why not, when not ready.
    pub not_ready_reason: String,
    /// Its context window in tokens, when known.
    pub context_window: Option<usize>,
    /// Tokens the request needs there (prompt estimate plus the answer budget).
    pub needed_tokens: usize,
    /// Whether the request lets the backend drop old prompt tokens to fit.
    pub truncation_allowed: bool,
}

/// What the router knows about its remote backend at decision time.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteView {
    /// Whether it can serve now.
    pub ready: bool,
    /// Whether it is cooling down after failures.
    pub cooling_down: bool,
    /// Why not, when not ready.
    pub not_ready_reason: String,
    /// Set while the provider counts as out of reach after a connection failure: why. The
    /// router also marks the network offline then.
    pub unreachable: Option<String>,
}

/// Everything a decision depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// The mode in force.
    pub mode: Mode,
    /// Complexity, 0..=1.
    pub complexity: f32,
    /// Privacy, 0..=1.
    pub privacy: f32,
    /// Privacy left after redaction, 0..=1 (see [`PrivacyReport::residual`](crate::signals::PrivacyReport::residual)).
    pub privacy_residual: f32,
    /// How many private spans could be redacted.
    pub redactable: usize,
    /// The device.
    pub device: DeviceState,
    /// The local backend, when configured.
    pub local: Option<LocalView>,
    /// The remote backend, when configured.
    pub remote: Option<RemoteView>,
}

/// The outcome: the route so far, plus what the router needs to carry it out.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The route, with `target` = `None` when no backend may serve.
    pub route: Route,
    /// Whether the request must be redacted before it goes to the cloud (for the first try
    /// or a fallback).
    pub redact_for_cloud: bool,
}

impl Decision {
    /// Whether `target` was refused.
    pub fn refused(&self, target: Target) -> bool {
        self.route.refusals.iter().any(|r| r.target == target)
    }
}

/// Decides where a request goes.
pub fn decide(policy: &Policy, inputs: &Inputs) -> Decision {
    let mut rules: Vec<Rule> = Vec::new();
    let mut refusals: Vec<Refusal> = Vec::new();
    let refuse = |refusals: &mut Vec<Refusal>, target, rule, reason: String| {
        refusals.push(Refusal {
            target,
            rule,
            reason,
        });
    };
    let dev = &inputs.device;
    let cooling = inputs.remote.as_ref().is_some_and(|r| r.cooling_down);

    // Signals.
    // A custom scorer may return anything: NaN counts as 0 for complexity (no reason to
    // leave the device) and as 1 for privacy (no reason to trust it).
    let unit = |v: f32, nan: f32| if v.is_nan() { nan } else { v.clamp(0.0, 1.0) };
    let complexity = unit(inputs.complexity, 0.0);
    let privacy = unit(inputs.privacy, 1.0);
    let battery = device::battery(dev, policy);
    let thermal = device::thermal(dev, policy);
    let network = device::network(dev, policy, cooling);
    let capability = match &inputs.local {
        None => 0.0,
        Some(l) if !l.ready => 1.0,
        Some(l) => match l.context_window {
            Some(ctx) if ctx > 0 => {
                let ratio = l.needed_tokens as f32 / ctx as f32;
                ((ratio - 0.5) * 2.0).clamp(0.0, 1.0)
            }
            _ => 0.0,
        },
    };
    let w = &policy.weights;
    // When the cloud would get a redacted request, what counts against it is what remains.
    let redactable = privacy >= policy.privacy.redact_above.get() && inputs.redactable > 0;
    let privacy_cost = if redactable {
        unit(inputs.privacy_residual, privacy).min(privacy)
    } else {
        privacy
    };
    let total = w.complexity.get() * complexity
        + w.battery.get() * battery
        + w.thermal.get() * thermal
        + w.capability.get() * capability
        - w.privacy.get() * privacy_cost
        - w.network.get() * network;
    let scores = Scores {
        complexity,
        privacy,
        battery,
        thermal,
        network,
        capability,
        total,
        threshold: policy.threshold.get(),
    };

    // Hard rules on the cloud.
    match &inputs.remote {
        None => refuse(
            &mut refusals,
            Target::Cloud,
            Rule::NoRemoteBackend,
            "no remote backend is configured".into(),
        ),
        Some(r) => {
            if dev.network == Network::Offline {
                rules.push(Rule::Offline);
                refuse(
                    &mut refusals,
                    Target::Cloud,
                    Rule::Offline,
                    r.unreachable
                        .clone()
                        .unwrap_or_else(|| "the network is offline".into()),
                );
            } else if r.cooling_down {
                rules.push(Rule::RemoteCoolingDown);
                refuse(
                    &mut refusals,
                    Target::Cloud,
                    Rule::RemoteCoolingDown,
                    format!("the remote backend is cooling down: {}", r.not_ready_reason),
                );
            } else if !r.ready {
                rules.push(Rule::RemoteUnavailable);
                refuse(
                    &mut refusals,
                    Target::Cloud,
                    Rule::RemoteUnavailable,
                    format!("the remote backend is unavailable: {}", r.not_ready_reason),
                );
            }
            if dev.network == Network::Metered {
                rules.push(Rule::Metered);
            }
        }
    }
    if privacy >= policy.privacy.bar.get() {
        rules.push(Rule::PrivacyBar);
        refuse(
            &mut refusals,
            Target::Cloud,
            Rule::PrivacyBar,
            format!(
                "privacy {privacy:.2} is at or above the policy's bar {:.2}",
                policy.privacy.bar.get()
            ),
        );
    }
    if inputs.mode == Mode::LocalOnly {
        rules.push(Rule::ModeLocalOnly);
        refuse(
            &mut refusals,
            Target::Cloud,
            Rule::ModeLocalOnly,
            "the mode is local_only".into(),
        );
    }

    // Hard rules on the device.
    if dev.thermal >= ThermalLevel::Serious {
        rules.push(Rule::ThermalHot);
    }
    match &inputs.local {
        None => refuse(
            &mut refusals,
            Target::Local,
            Rule::NoLocalBackend,
            "no local backend is configured".into(),
        ),
        Some(l) => {
            // Critical always forbids local work, whatever the policy says.
            let limit = policy
                .thermal
                .local_forbidden_at
                .min(ThermalLevel::Critical);
            if dev.thermal >= limit {
                rules.push(Rule::ThermalCritical);
                refuse(
                    &mut refusals,
                    Target::Local,
                    Rule::ThermalCritical,
                    format!(
                        "the device is {} (the policy forbids local work from {})",
                        dev.thermal, limit
                    ),
                );
            }
            if !l.ready {
                rules.push(Rule::LocalNotReady);
                refuse(
                    &mut refusals,
                    Target::Local,
                    Rule::LocalNotReady,
                    format!("the local model is not ready: {}", l.not_ready_reason),
                );
            } else if let Some(ctx) = l
                .context_window
                .filter(|&c| l.needed_tokens > c && !l.truncation_allowed)
            {
                rules.push(Rule::ContextTooLong);
                refuse(
                    &mut refusals,
                    Target::Local,
                    Rule::ContextTooLong,
                    format!(
                        "the request needs about {} tokens but the local context holds {ctx}",
                        l.needed_tokens
                    ),
                );
            }
        }
    }
    if inputs.mode == Mode::CloudOnly {
        rules.push(Rule::ModeCloudOnly);
        refuse(
            &mut refusals,
            Target::Local,
            Rule::ModeCloudOnly,
            "the mode is cloud_only".into(),
        );
    }
    if device::battery_critical(dev, policy) {
        rules.push(Rule::BatteryCritical);
    } else if device::battery_low(dev, policy) {
        rules.push(Rule::BatteryLow);
    }
    if dev.low_power {
        rules.push(Rule::LowPowerMode);
    }

    let local_ok = !refusals.iter().any(|r| r.target == Target::Local);
    let cloud_ok = !refusals.iter().any(|r| r.target == Target::Cloud);

    // What the mode and the score prefer, as if both were allowed.
    let preferred = match inputs.mode {
        Mode::LocalOnly => Target::Local,
        Mode::CloudOnly => Target::Cloud,
        Mode::PreferLocal => {
            if local_ok {
                rules.push(Rule::ModePreferLocal);
                Target::Local
            } else {
                Target::Cloud
            }
        }
        Mode::PreferCloud => {
            if cloud_ok {
                rules.push(Rule::ModePreferCloud);
            }
            Target::Cloud
        }
        Mode::Auto => {
            // A critical battery sends work to the cloud whenever the cloud may take it.
            if !local_ok || (device::battery_critical(dev, policy) && cloud_ok) {
                Target::Cloud
            } else {
                rules.push(Rule::Scored);
                // When the cloud is out of reach the network term is a hard rule, not a
                // preference: ask what the score would prefer with the cloud reachable, so
                // that leaving the cloud is recorded (and governed) as a fallback.
                let unreachable = dev.network == Network::Offline || cooling;
                let preference = if unreachable {
                    total + w.network.get() * network
                } else {
                    total
                };
                if preference >= policy.threshold.get() {
                    Target::Cloud
                } else {
                    Target::Local
                }
            }
        }
    };

    let mut fallback = None;
    let target = if preferred == Target::Cloud && cloud_ok || preferred == Target::Local && local_ok
    {
        preferred
    } else if preferred == Target::Cloud && local_ok {
        // The cloud is out. Leaving it for the device is a policy choice when the cause is
        // the network or the provider; a privacy or mode refusal simply means the device.
        let network_refusal = refusals
            .iter()
            .find(|r| {
                r.target == Target::Cloud
                    && matches!(
                        r.rule,
                        Rule::Offline | Rule::RemoteCoolingDown | Rule::RemoteUnavailable
                    )
            })
            .map(|r| (r.rule, r.reason.clone()));
        let only_network = refusals
            .iter()
            .filter(|r| r.target == Target::Cloud)
            .all(|r| {
                matches!(
                    r.rule,
                    Rule::Offline | Rule::RemoteCoolingDown | Rule::RemoteUnavailable
                )
            });
        match network_refusal {
            Some((rule, reason)) if only_network => {
                let (allowed, kind) = if rule == Rule::Offline {
                    (
                        policy.fallback.offline_to_local,
                        FallbackKind::OfflineToLocal,
                    )
                } else {
                    (
                        policy.fallback.remote_error_to_local,
                        FallbackKind::RemoteErrorToLocal,
                    )
                };
                if allowed {
                    rules.push(Rule::FallbackAllowed);
                    fallback = Some(Fallback {
                        kind,
                        from: Target::Cloud,
                        reason,
                    });
                    Target::Local
                } else {
                    rules.push(Rule::FallbackForbidden);
                    refuse(
                        &mut refusals,
                        Target::Local,
                        Rule::FallbackForbidden,
                        format!(
                            "the cloud was preferred and the policy forbids falling back to the device ({reason})"
                        ),
                    );
                    Target::None
                }
            }
            _ => Target::Local,
        }
    } else if preferred == Target::Local && cloud_ok {
        Target::Cloud
    } else {
        Target::None
    };

    let redact_for_cloud = redactable;
    let mut redactions = 0;
    if target == Target::Cloud && redact_for_cloud {
        rules.push(Rule::Redact);
        redactions = inputs.redactable;
    }

    Decision {
        route: Route {
            target,
            mode: inputs.mode,
            scores,
            rules,
            refusals,
            fallback,
            redactions,
            findings: Vec::new(),
            backend: None,
            timings: Timings::default(),
        },
        redact_for_cloud,
    }
}
