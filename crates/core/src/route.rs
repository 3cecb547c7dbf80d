//! Why a request went where it went: the `Route` every answer carries.

use serde::{Deserialize, Serialize};

use crate::request::Mode;

/// Where a request is (or was) answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The on-device model.
    Local,
    /// The cloud provider.
    Cloud,
    /// Nowhere: no backend may serve it.
    None,
}

impl Target {
    /// `"local"`, `"cloud"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Local => "local",
            Target::Cloud => "cloud",
            Target::None => "none",
        }
    }

    /// The other backend (`None` stays `None`).
    pub fn other(self) -> Target {
        match self {
            Target::Local => Target::Cloud,
            Target::Cloud => Target::Local,
            Target::None => Target::None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every signal's value, each in 0..=1, and the weighted score they add up to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Scores {
    /// How demanding the request is (pushes toward the cloud).
    pub complexity: f32,
    /// How privacy-sensitive it is (pushes toward the device). When the cloud would get a
    /// redacted request, the score counts only what redaction leaves behind.
    pub privacy: f32,
    /// Battery pressure: high when low and not charging (pushes toward the cloud).
    pub battery: f32,
    /// Heat: high when hot (pushes toward the cloud).
    pub thermal: f32,
    /// Network cost or trouble: offline, metered, remote cooling down (pushes toward the device).
    pub network: f32,
    /// How far the request exceeds what the local model can do (pushes toward the cloud).
    pub capability: f32,
    /// The weighted sum: cloud-pushing signals minus device-pushing ones.
    pub total: f32,
    /// The policy's threshold: `total >= threshold` means the cloud in `auto` mode.
    pub threshold: f32,
}

/// A rule that fired while deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Privacy at or above the policy's bar: the cloud is refused.
    PrivacyBar,
    /// Privacy between the redaction level and the bar: private spans are redacted before
    /// the cloud sees them and restored in the answer.
    Redact,
    /// The app labelled the request confidential.
    ConfidentialLabel,
    /// The request holds private data and the policy or the request blocks such requests:
    /// no backend may serve it.
    PrivacyBlock,
    /// The network is offline: the cloud is refused.
    Offline,
    /// The network is metered.
    Metered,
    /// The remote backend is cooling down after failures: the cloud is refused for now.
    RemoteCoolingDown,
    /// The remote backend reports it cannot serve (failed, not configured correctly).
    RemoteUnavailable,
    /// Thermal level critical: the local model is refused.
    ThermalCritical,
    /// Thermal level serious or above: heat pushes toward the cloud.
    ThermalHot,
    /// Battery at or below the policy's critical level and not charging.
    BatteryCritical,
    /// Battery at or below the policy's low level and not charging.
    BatteryLow,
    /// Low-power mode is on.
    LowPowerMode,
    /// Prompt plus requested tokens exceed the local model's context: the local model is refused.
    ContextTooLong,
    /// The local model is not ready (not loaded, loading or failed).
    LocalNotReady,
    /// No local backend is configured.
    NoLocalBackend,
    /// No remote backend is configured.
    NoRemoteBackend,
    /// The mode forbids the cloud (`local_only`).
    ModeLocalOnly,
    /// The mode forbids the device (`cloud_only`).
    ModeCloudOnly,
    /// `prefer_local` chose the device.
    ModePreferLocal,
    /// `prefer_cloud` chose the cloud.
    ModePreferCloud,
    /// `auto` decided by the weighted score.
    Scored,
    /// The request asked for another mode and the policy does not allow overrides.
    ModeOverrideRefused,
    /// The preferred backend was out of reach and the policy allowed the other one.
    FallbackAllowed,
    /// The preferred backend was out of reach and the policy forbids falling back.
    FallbackForbidden,
}

impl Rule {
    /// The rule's snake_case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::PrivacyBar => "privacy_bar",
            Rule::Redact => "redact",
            Rule::ConfidentialLabel => "confidential_label",
            Rule::PrivacyBlock => "privacy_block",
            Rule::Offline => "offline",
            Rule::Metered => "metered",
            Rule::RemoteCoolingDown => "remote_cooling_down",
            Rule::RemoteUnavailable => "remote_unavailable",
            Rule::ThermalCritical => "thermal_critical",
            Rule::ThermalHot => "thermal_hot",
            Rule::BatteryCritical => "battery_critical",
            Rule::BatteryLow => "battery_low",
            Rule::LowPowerMode => "low_power_mode",
            Rule::ContextTooLong => "context_too_long",
            Rule::LocalNotReady => "local_not_ready",
            Rule::NoLocalBackend => "no_local_backend",
            Rule::NoRemoteBackend => "no_remote_backend",
            Rule::ModeLocalOnly => "mode_local_only",
            Rule::ModeCloudOnly => "mode_cloud_only",
            Rule::ModePreferLocal => "mode_prefer_local",
            Rule::ModePreferCloud => "mode_prefer_cloud",
            Rule::Scored => "scored",
            Rule::ModeOverrideRefused => "mode_override_refused",
            Rule::FallbackAllowed => "fallback_allowed",
            Rule::FallbackForbidden => "fallback_forbidden",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one backend may not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The backend refused.
    pub target: Target,
    /// The rule that refused it.
    pub rule: Rule,
    /// A sentence for people, with the numbers that decided it.
    pub reason: String,
}

/// The kinds of fallback a policy can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackKind {
    /// The cloud was preferred but the network is offline.
    OfflineToLocal,
    /// The cloud failed; the device answered.
    RemoteErrorToLocal,
    /// The device failed; the cloud answered.
    LocalErrorToCloud,
    /// A stream broke after its first tokens and the other backend continued it.
    MidStream,
}

/// A fallback that was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    /// Which kind.
    pub kind: FallbackKind,
    /// The backend that was given up on.
    pub from: Target,
    /// Why it was given up on (an error message; never prompt text).
    pub reason: String,
}

/// How long things took, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Timings {
    /// Computing the decision.
    pub decide_us: u64,
    /// From the call until the first text arrived (streams and completions alike).
    pub first_token_us: Option<u64>,
    /// From the call until the answer was complete.
    pub total_us: u64,
}

/// The explanation every answer carries: who answered, in which mode, on which signals, by
/// which rules, with which fallback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Who answered (or would answer, for a decision alone).
    pub target: Target,
    /// The mode in force (the policy's, or the request's override).
    pub mode: Mode,
    /// The signal values.
    pub scores: Scores,
    /// The rules that fired, in the order they fired.
    pub rules: Vec<Rule>,
    /// Why each refused backend was refused.
    pub refusals: Vec<Refusal>,
    /// The fallback taken, if any.
    pub fallback: Option<Fallback>,
    /// How many private spans were replaced before the request left the device.
    pub redactions: usize,
    /// What the privacy detector found, as categories and counts (`email`: 2), never the
    /// values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<CategoryCount>,
    /// The name of the backend that answered, when one did.
    pub backend: Option<String>,
    /// Timings.
    pub timings: Timings,
}

impl Route {
    /// Renders the route for people: one line saying where and why.
    pub fn explain(&self) -> String {
        let s = &self.scores;
        let mut out = format!(
            "{} (mode {}): complexity {:.2}, privacy {:.2}, battery {:.2}, thermal {:.2}, network {:.2}, capability {:.2}; score {:.2} vs threshold {:.2}",
            self.target,
            self.mode,
            s.complexity,
            s.privacy,
            s.battery,
            s.thermal,
            s.network,
            s.capability,
            s.total,
            s.threshold
        );
        if !self.rules.is_empty() {
            let rules: Vec<&str> = self.rules.iter().map(|r| r.as_str()).collect();
            out.push_str(&format!("; rules: {}", rules.join(", ")));
        }
        for r in &self.refusals {
            out.push_str(&format!("; {} refused: {}", r.target, r.reason));
        }
        if !self.findings.is_empty() {
            let found: Vec<String> = self
                .findings
                .iter()
                .map(|c| format!("{} x{}", c.category, c.count))
                .collect();
            out.push_str(&format!("; private: {}", found.join(", ")));
        }
        if self.redactions > 0 {
            out.push_str(&format!("; {} span(s) redacted", self.redactions));
        }
        if let Some(fb) = &self.fallback {
            out.push_str(&format!(
                "; fell back from {} ({:?}): {}",
                fb.from, fb.kind, fb.reason
            ));
        }
        out
    }

    /// The main reason for the route in one short phrase, for a status line: the fallback
    /// when one happened, else the hard rule that kept the other backend out, else the mode,
    /// else the score against the threshold. [`explain`](Route::explain) has everything.
    pub fn reason(&self) -> String {
        if let Some(fb) = &self.fallback {
            return format!("fell back from {}: {}", fb.from, fb.reason);
        }
        if self.target == Target::None {
            let why: Vec<String> = self
                .refusals
                .iter()
                .map(|r| format!("{}: {}", r.target, r.reason))
                .collect();
            return format!("nothing may serve ({})", why.join("; "));
        }
        if let Some(r) = self
            .refusals
            .iter()
            .find(|r| r.target == self.target.other())
        {
            return format!("{} refused: {}", r.target, r.reason);
        }
        if self.mode != Mode::Auto {
            return format!("mode {}", self.mode);
        }
        let s = &self.scores;
        let (name, value) = [
            ("complexity", s.complexity),
            ("battery", s.battery),
            ("thermal", s.thermal),
            ("capability", s.capability),
        ]
        .into_iter()
        .fold(("complexity", f32::MIN), |best, x| {
            if x.1 > best.1 { x } else { best }
        });
        let cmp = if s.total >= s.threshold { ">=" } else { "<" };
        let mut out = format!(
            "score {:.2} {cmp} threshold {:.2} ({name} {value:.2}",
            s.total, s.threshold
        );
        if s.privacy > 0.0 {
            out.push_str(&format!(", privacy {:.2}", s.privacy));
        }
        out.push(')');
        if self.redactions > 0 {
            out.push_str(&format!("; {} span(s) redacted", self.redactions));
        }
        out
    }

    /// Whether a rule fired.
    pub fn fired(&self, rule: Rule) -> bool {
        self.rules.contains(&rule)
    }
}

/// How many private findings of one category a request held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryCount {
    /// The category (`email`, `card`, `topic_health`, or a policy's own).
    pub category: String,
    /// How many findings.
    pub count: usize,
}

/// No backend may serve a request; lists why each was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoRoute {
    /// The route as decided, with `target` = `None`.
    pub route: Route,
}

impl std::fmt::Display for NoRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no backend may serve this request")?;
        for r in &self.route.refusals {
            write!(f, "; {} refused: {}", r.target, r.reason)?;
        }
        Ok(())
    }
}
