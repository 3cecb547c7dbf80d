//! Policy files: how a router weighs its signals, where its bars are, which fallbacks it may
//! take. TOML, with a documented default for every field, so `mode = "auto"` alone is a
//! valid policy.
//!
//! ```toml
//! mode = "auto"          # auto | prefer_local | local_only | prefer_cloud | cloud_only
//! allow_mode_override = true   # may a request set its own mode?
//! threshold = 0.45       # auto: the cloud when the weighted score reaches this
//!
//! [weights]              # each >= 0; cloud-pushing minus device-pushing signals
//! complexity = 1.0
//! privacy = 1.0
//! battery = 0.5
//! thermal = 0.5
//! network = 0.5
//! capability = 1.0
//!
//! [privacy]
//! bar = 0.7              # at or above: the device only, whatever the mode
//! redact_above = 0.3     # from here to the bar: redact before the cloud, restore after
//! action = "redact"      # redact | block: block refuses requests from redact_above up
//!
//! [privacy.topics]       # extra words per topic (health, finances, legal, sexuality,
//! health = ["long covid"]  # religion, work); first-person use counts like built-in terms
//!
//! [[privacy.patterns]]   # the app's own identifiers; any number of these
//! regex = 'EMP-\d{6}'   # a regular expression (Rust regex syntax)
//! category = "employee_id"  # a name for routes; a built-in one (`national_id`) reuses it
//! weight = 0.5           # 0..=1, how much one match counts
//!
//! [battery]
//! low = 0.2              # at or below (not charging): battery pressure starts
//! critical = 0.1         # at or below (not charging): the cloud when it is allowed
//!
//! [thermal]
//! fair = 0.25            # the thermal signal's value at each level
//! serious = 0.7
//! local_forbidden_at = "critical"   # serious | critical: from here the device never runs
//!
//! [network]
//! metered = 0.5          # the network signal on a metered link
//! cooldown_after = 3     # consecutive transient cloud failures before a cool-down (0: never)
//! cooldown_secs = 30     # how long the router then leaves the cloud alone
//!
//! offline_recheck_secs = 15  # after a connect/DNS failure: the network counts as offline
//! probe = true           # then a cheap connect to the provider's host decides when it is back
//!
//! [fallback]
//! offline_to_local = true
//! remote_error_to_local = true
//! local_error_to_cloud = true
//! mid_stream = true      # a broken stream continues on the other backend
//!
//! [remote]               # optional: an OpenAI-compatible provider for the cloud side
//! base_url = "http://127.0.0.1:8000/v1"   # OpenAI, vLLM, Ollama, llama.cpp server, TGI...
//! model = "Qwen/Qwen2.5-7B-Instruct"
//! api_key_env = "OPENAI_API_KEY"  # the variable holding the key ("" for none)
//! context_window = 32768
//! connect_timeout_secs = 5
//! first_byte_timeout_secs = 60
//! idle_timeout_secs = 30
//! total_timeout_secs = 300
//! max_retries = 2        # before the first token only
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use elmroute_core::{Mode, PrivacyAction, ThermalLevel};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer, Serialize};

use crate::signals::privacy::Topic;

/// A number checked against its range while the file is read, so the error points at the
/// value.
macro_rules! bounded {
    ($(#[$doc:meta])* $name:ident, $lo:expr, $hi:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
        #[serde(transparent)]
        pub struct $name(f32);

        impl $name {
            #[doc = concat!("Checks `v` is finite and ", $what, ".")]
            pub fn new(v: f32) -> Result<Self, String> {
                if v.is_finite() && ($lo..=$hi).contains(&v) {
                    Ok(Self(v))
                } else {
                    Err(format!(concat!("expected ", $what, ", found {}"), v))
                }
            }

            /// The value.
            pub fn get(self) -> f32 {
                self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = f64::deserialize(d)?;
                $name::new(v as f32).map_err(serde::de::Error::custom)
            }
        }
    };
}

bounded!(
    /// A number in 0..=1 (levels, bars, signal values).
    Unit, 0.0, 1.0, "a number from 0 to 1"
);
bounded!(
    /// A signal weight: finite, 0..=100.
    Weight, 0.0, 100.0, "a weight from 0 to 100"
);
bounded!(
    /// The `auto` threshold: finite, -10..=10.
    Threshold, -10.0, 10.0, "a number from -10 to 10"
);
bounded!(
    /// A timeout in seconds: finite, 0.001..=3600.
    Seconds, 0.001, 3600.0, "seconds from 0.001 to 3600"
);

/// How much each signal counts in `auto` mode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    /// Complexity (toward the cloud). Default 1.0.
    pub complexity: Weight,
    /// Privacy (toward the device). Default 1.0.
    pub privacy: Weight,
    /// Battery pressure (toward the cloud). Default 0.5.
    pub battery: Weight,
    /// Heat (toward the cloud). Default 0.5.
    pub thermal: Weight,
    /// Network cost (toward the device). Default 0.5.
    pub network: Weight,
    /// Local capability shortfall (toward the cloud). Default 1.0.
    pub capability: Weight,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            complexity: Weight(1.0),
            privacy: Weight(1.0),
            battery: Weight(0.5),
            thermal: Weight(0.5),
            network: Weight(0.5),
            capability: Weight(1.0),
        }
    }
}

/// Privacy bars, the action for private requests, and the policy's own words and patterns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyPolicy {
    /// At or above: the device only, whatever the mode. Default 0.7.
    pub bar: Unit,
    /// From here up to the bar: private spans are redacted before the cloud sees them and
    /// restored in the answer. Default 0.3. Must not exceed `bar`.
    pub redact_above: Unit,
    /// What happens from `redact_above` up: `redact` (default) routes by the bands above;
    /// `block` refuses the request with a typed error
    /// ([`Error::is_privacy_blocked`](elmroute_core::Error::is_privacy_blocked)) before any
    /// backend sees it. A request may ask to block; it cannot undo a policy's `block`.
    pub action: PrivacyAction,
    /// Extra topic words, by topic. Default none.
    #[serde(skip_serializing_if = "TopicWords::is_empty")]
    pub topics: TopicWords,
    /// The app's own patterns (`[[privacy.patterns]]`). Default none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<CustomPattern>,
}

impl Default for PrivacyPolicy {
    fn default() -> Self {
        Self {
            bar: Unit(0.7),
            redact_above: Unit(0.3),
            action: PrivacyAction::Redact,
            topics: TopicWords::default(),
            patterns: Vec::new(),
        }
    }
}

/// Words a policy adds to the topic dictionaries (`[privacy.topics]`). They count like the
/// built-in terms: personal when the writer speaks of their own matter, a light mention
/// otherwise. Matched ignoring ASCII case, on word boundaries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicWords {
    /// Health words.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "words")]
    pub health: Vec<String>,
    /// Money words.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "words")]
    pub finances: Vec<String>,
    /// Legal words.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "words")]
    pub legal: Vec<String>,
    /// Sexuality and gender words.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "words")]
    pub sexuality: Vec<String>,
    /// Religion and belief words.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "words")]
    pub religion: Vec<String>,
    /// Work words.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "words")]
    pub work: Vec<String>,
}

impl TopicWords {
    /// Whether no words were added.
    pub fn is_empty(&self) -> bool {
        self.iter().all(|(_, w)| w.is_empty())
    }

    /// The words of each topic.
    pub fn iter(&self) -> impl Iterator<Item = (Topic, &[String])> {
        [
            (Topic::Health, self.health.as_slice()),
            (Topic::Finances, self.finances.as_slice()),
            (Topic::Legal, self.legal.as_slice()),
            (Topic::Sexuality, self.sexuality.as_slice()),
            (Topic::Religion, self.religion.as_slice()),
            (Topic::Work, self.work.as_slice()),
        ]
        .into_iter()
    }
}

/// One of the app's own patterns (`[[privacy.patterns]]`): what it matches counts as private,
/// is redacted before the cloud (as `[PRIVATE_n]`, or the placeholder of a built-in category
/// it names) and is counted under its category in routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    /// A regular expression (Rust `regex` syntax, no look-around). Must compile within
    /// 1 MiB and must not match the empty string.
    #[serde(deserialize_with = "pattern")]
    pub regex: String,
    /// The category routes count it under: lowercase letters, digits and `_`, starting with a
    /// letter, at most 32 characters. A built-in category name (`national_id`, `secret`)
    /// makes matches findings of that kind.
    #[serde(deserialize_with = "category")]
    pub category: String,
    /// How much one match counts toward the privacy score, 0..=1. Default 0.5.
    #[serde(default = "half")]
    pub weight: Unit,
}

fn half() -> Unit {
    Unit(0.5)
}

/// The largest compiled size a custom pattern may have, so a policy cannot make every scan
/// slow.
pub(crate) const CUSTOM_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a custom pattern, or says what is wrong with it.
pub(crate) fn compile_custom(pattern: &str) -> Result<Regex, String> {
    let re = RegexBuilder::new(pattern)
        .size_limit(CUSTOM_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
    if re.is_match("") {
        return Err(format!(
            "regex {pattern:?} matches the empty string; expected a pattern that needs at least one character"
        ));
    }
    Ok(re)
}

/// Checks a custom category name.
pub(crate) fn check_category(name: &str) -> Result<(), String> {
    let ok = name.len() <= 32
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a category name of lowercase letters, digits and `_` starting with a letter, at most 32 characters, found {name:?}"
        ))
    }
}

fn pattern<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let p = String::deserialize(d)?;
    compile_custom(&p).map_err(serde::de::Error::custom)?;
    Ok(p)
}

fn category<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let c = String::deserialize(d)?;
    check_category(&c).map_err(serde::de::Error::custom)?;
    Ok(c)
}

fn words<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let words = Vec::<String>::deserialize(d)?;
    if let Some(w) = words.iter().find(|w| w.trim().chars().count() < 2) {
        return Err(serde::de::Error::custom(format!(
            "expected words of at least two characters, found {w:?}"
        )));
    }
    Ok(words)
}

/// Battery levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatteryPolicy {
    /// At or below, not charging: the battery signal rises from 0.5. Default 0.2.
    pub low: Unit,
    /// At or below, not charging: the signal is 1.0 and `auto` picks the cloud when allowed.
    /// Default 0.1. Must not exceed `low`.
    pub critical: Unit,
    /// The battery signal's floor while low-power mode is on. Default 0.5.
    pub low_power: Unit,
}

impl Default for BatteryPolicy {
    fn default() -> Self {
        Self {
            low: Unit(0.2),
            critical: Unit(0.1),
            low_power: Unit(0.5),
        }
    }
}

/// Thermal levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThermalPolicy {
    /// The thermal signal at `fair`. Default 0.25.
    pub fair: Unit,
    /// The thermal signal at `serious`. Default 0.7. (Nominal is 0, critical 1.)
    pub serious: Unit,
    /// From this level up the device never runs the model: `serious` or `critical`
    /// (default). Critical always forbids it.
    pub local_forbidden_at: ThermalLevel,
}

impl Default for ThermalPolicy {
    fn default() -> Self {
        Self {
            fair: Unit(0.25),
            serious: Unit(0.7),
            local_forbidden_at: ThermalLevel::Critical,
        }
    }
}

/// Network costs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkPolicy {
    /// The network signal on a metered link. Default 0.5.
    pub metered: Unit,
    /// After this many consecutive transient cloud failures (offline, timeouts, 429, 5xx)
    /// the router stops trying the cloud for `cooldown_secs`. Default 3; 0 turns it off.
    pub cooldown_after: u32,
    /// How long a cool-down lasts, in seconds, 1..=3600. Default 30. A provider's
    /// `Retry-After` starts one of its own length at once.
    pub cooldown_secs: u32,
    /// After the cloud could not be reached at all (connection refused, DNS failure), the
    /// router treats the network as offline for this many seconds, 1..=3600, so the next
    /// requests go to the device at once instead of each waiting on the network. Default 15.
    pub offline_recheck_secs: u32,
    /// When that time is up, check with the backend's cheap probe (a connection to the
    /// provider's own host, no tokens) before sending a request there. Default true.
    pub probe: bool,
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        Self {
            metered: Unit(0.5),
            cooldown_after: 3,
            cooldown_secs: 30,
            offline_recheck_secs: 15,
            probe: true,
        }
    }
}

/// Which fallbacks are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackPolicy {
    /// The cloud was preferred but the network is offline: answer on the device. Default true.
    pub offline_to_local: bool,
    /// The cloud failed: answer on the device. Default true.
    pub remote_error_to_local: bool,
    /// The device failed: answer in the cloud (privacy rules still apply). Default true.
    pub local_error_to_cloud: bool,
    /// A stream broke after its first tokens: continue on the other backend with the text so
    /// far (privacy rules still apply). Default true.
    pub mid_stream: bool,
}

impl Default for FallbackPolicy {
    fn default() -> Self {
        Self {
            offline_to_local: true,
            remote_error_to_local: true,
            local_error_to_cloud: true,
            mid_stream: true,
        }
    }
}

/// A routing policy. Build one with [`Policy::from_file`], [`Policy::from_toml`] or
/// [`Policy::default`] (the `balanced` policy) and adjust fields in code if you like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The routing mode. Default `auto`.
    pub mode: Mode,
    /// Whether a request may set its own mode (`ChatRequest::mode`). Default true; a policy
    /// that promises never to touch the network sets it false. Privacy, offline and thermal
    /// rules apply whatever the mode.
    pub allow_mode_override: bool,
    /// `auto` picks the cloud when the weighted score reaches this. Default 0.45; any finite
    /// number from -10 to 10.
    pub threshold: Threshold,
    /// Signal weights.
    pub weights: Weights,
    /// Privacy bars.
    pub privacy: PrivacyPolicy,
    /// Battery levels.
    pub battery: BatteryPolicy,
    /// Thermal levels.
    pub thermal: ThermalPolicy,
    /// Network costs.
    pub network: NetworkPolicy,
    /// Allowed fallbacks.
    pub fallback: FallbackPolicy,
    /// The cloud provider, when the file names one (the app may also hand the router a
    /// backend of its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemotePolicy>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            mode: Mode::Auto,
            allow_mode_override: true,
            threshold: Threshold(0.45),
            weights: Weights::default(),
            privacy: PrivacyPolicy::default(),
            battery: BatteryPolicy::default(),
            thermal: ThermalPolicy::default(),
            network: NetworkPolicy::default(),
            fallback: FallbackPolicy::default(),
            remote: None,
        }
    }
}

/// An OpenAI-compatible provider for the cloud side (`[remote]`). `base_url` and `model` are
/// required; everything else has a default. Secrets never live in the file: the API key is
/// read from the environment variable `api_key_env` names.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemotePolicy {
    /// The provider's base URL, the part before `/chat/completions` (`http(s)://host/v1`).
    pub base_url: BaseUrl,
    /// The model id the provider serves.
    pub model: ModelId,
    /// The environment variable holding the API key. Default `OPENAI_API_KEY`; `""` sends no
    /// key (local servers need none). An unset variable also sends none.
    #[serde(default = "default_key_env")]
    pub api_key_env: String,
    /// Extra headers sent with every request (names and values shown in `Debug` as names only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The model's context window in tokens, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u32>,
    /// The name shown in routes (default `openai:<model>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Opening a connection. Default 5.
    #[serde(default = "default_connect")]
    pub connect_timeout_secs: Seconds,
    /// From sending to the first byte of the answer. Default 60.
    #[serde(default = "default_first_byte")]
    pub first_byte_timeout_secs: Seconds,
    /// The longest silence inside a stream. Default 30.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: Seconds,
    /// The whole call, retries included. Default 300.
    #[serde(default = "default_total")]
    pub total_timeout_secs: Seconds,
    /// Retries before the first token, 0..=10. Default 2.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Ask streams for a final usage chunk (`stream_options.include_usage`). Default true;
    /// turn off for servers that reject the field.
    #[serde(default = "default_true")]
    pub stream_usage: bool,
}

fn default_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn default_connect() -> Seconds {
    Seconds(5.0)
}
fn default_first_byte() -> Seconds {
    Seconds(60.0)
}
fn default_idle() -> Seconds {
    Seconds(30.0)
}
fn default_total() -> Seconds {
    Seconds(300.0)
}
fn default_retries() -> u32 {
    2
}
fn default_true() -> bool {
    true
}

impl RemotePolicy {
    /// A provider at `base_url` serving `model`, every other key at its default.
    pub fn new(base_url: BaseUrl, model: ModelId) -> Self {
        Self {
            base_url,
            model,
            api_key_env: default_key_env(),
            headers: BTreeMap::new(),
            context_window: None,
            name: None,
            connect_timeout_secs: default_connect(),
            first_byte_timeout_secs: default_first_byte(),
            idle_timeout_secs: default_idle(),
            total_timeout_secs: default_total(),
            max_retries: default_retries(),
            stream_usage: true,
        }
    }
}

impl fmt::Debug for RemotePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        f.debug_struct("RemotePolicy")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("headers", &header_names)
            .field("context_window", &self.context_window)
            .field("name", &self.name)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("first_byte_timeout_secs", &self.first_byte_timeout_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("total_timeout_secs", &self.total_timeout_secs)
            .field("max_retries", &self.max_retries)
            .field("stream_usage", &self.stream_usage)
            .finish()
    }
}

/// An `http://` or `https://` URL with a host, checked as the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct BaseUrl(String);

impl BaseUrl {
    /// Checks the scheme and that a host follows it.
    pub fn new(url: impl Into<String>) -> Result<Self, String> {
        let url = url.into();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
                Ok(Self(url))
            }
            _ => Err(format!(
                "expected an http:// or https:// URL with a host, such as \"http://127.0.0.1:8000/v1\", found {url:?}"
            )),
        }
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for BaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BaseUrl::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A model id: not empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ModelId(String);

impl ModelId {
    /// Checks the id is not blank.
    pub fn new(id: impl Into<String>) -> Result<Self, String> {
        let id = id.into();
        if id.trim().is_empty() {
            Err(
                "expected the provider's model id, such as \"gpt-4o-mini\", found an empty string"
                    .into(),
            )
        } else {
            Ok(Self(id))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ModelId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ModelId::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A policy that could not be read. Names the file, the key and the line.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{file}: cannot read policy: {source}")]
    Io {
        /// The file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("{file}:{line}:{column}: {}{message}", key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Invalid {
        /// The file (or the name given to a string source).
        file: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The dotted key, when known (`battery.low`).
        key: Option<String>,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A policy built in code breaks a rule across keys.
    #[error("policy key `{key}`: {message}")]
    Inconsistent {
        /// The dotted key at fault.
        key: String,
        /// What was wrong.
        message: String,
    },
}

/// A rule across keys that a policy breaks.
struct Violation {
    table: &'static str,
    key: &'static str,
    partner: &'static str,
    message: String,
}

impl PolicyError {
    /// The dotted key at fault, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { key, .. } => key.as_deref(),
            PolicyError::Inconsistent { key, .. } => Some(key),
            PolicyError::Io { .. } => None,
        }
    }

    /// The 1-based line at fault, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            PolicyError::Invalid { line, .. } => Some(*line),
            PolicyError::Io { .. } | PolicyError::Inconsistent { .. } => None,
        }
    }
}

impl Policy {
    /// Reads a policy file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            file: file.clone(),
            source,
        })?;
        Self::from_toml(&text, &file)
    }

    /// Parses policy TOML; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|e| {
            let start = e.span().map_or(0, |s| s.start);
            let (line, column) = line_col(text, start);
            let message = e.message().trim().to_string();
            PolicyError::Invalid {
                file: origin.to_string(),
                line,
                column,
                key: key_at(text, start, &message),
                message,
            }
        })?;
        policy.check_in(text, origin)?;
        Ok(policy)
    }

    /// Checks the rules that span several keys, for a policy built or changed in code
    /// (files are checked as they are read), and that its custom patterns compile.
    /// [`RouterBuilder::build`](crate::RouterBuilder) calls it.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Some(v) = self.violation() {
            return Err(PolicyError::Inconsistent {
                key: format!("{}.{}", v.table, v.key),
                message: v.message,
            });
        }
        for (i, p) in self.privacy.patterns.iter().enumerate() {
            let bad = |field: &str, message: String| PolicyError::Inconsistent {
                key: format!("privacy.patterns[{i}].{field}"),
                message,
            };
            compile_custom(&p.regex).map_err(|m| bad("regex", m))?;
            check_category(&p.category).map_err(|m| bad("category", m))?;
        }
        Ok(())
    }

    /// The first rule across keys that the policy breaks.
    fn violation(&self) -> Option<Violation> {
        let v = |table, key, partner, message| {
            Some(Violation {
                table,
                key,
                partner,
                message,
            })
        };
        // Pairs whose first value must not exceed the second.
        let ordered = [
            (
                "privacy",
                "redact_above",
                "bar",
                self.privacy.redact_above,
                self.privacy.bar,
            ),
            (
                "battery",
                "critical",
                "low",
                self.battery.critical,
                self.battery.low,
            ),
            (
                "thermal",
                "fair",
                "serious",
                self.thermal.fair,
                self.thermal.serious,
            ),
        ];
        for (table, key, partner, value, limit) in ordered {
            if value > limit {
                return v(
                    table,
                    key,
                    partner,
                    format!(
                        "{table}.{key} ({}) must not exceed {table}.{partner} ({})",
                        value.get(),
                        limit.get()
                    ),
                );
            }
        }
        if !(1..=3600).contains(&self.network.cooldown_secs) {
            return v(
                "network",
                "cooldown_secs",
                "cooldown_secs",
                format!(
                    "expected whole seconds from 1 to 3600, found {}",
                    self.network.cooldown_secs
                ),
            );
        }
        if !(1..=3600).contains(&self.network.offline_recheck_secs) {
            return v(
                "network",
                "offline_recheck_secs",
                "offline_recheck_secs",
                format!(
                    "expected whole seconds from 1 to 3600, found {}",
                    self.network.offline_recheck_secs
                ),
            );
        }
        if let Some(r) = &self.remote {
            if r.max_retries > 10 {
                return v(
                    "remote",
                    "max_retries",
                    "max_retries",
                    format!("expected 0 to 10 retries, found {}", r.max_retries),
                );
            }
            if r.total_timeout_secs < r.first_byte_timeout_secs {
                return v(
                    "remote",
                    "total_timeout_secs",
                    "first_byte_timeout_secs",
                    format!(
                        "remote.total_timeout_secs ({}) must be at least remote.first_byte_timeout_secs ({})",
                        r.total_timeout_secs.get(),
                        r.first_byte_timeout_secs.get()
                    ),
                );
            }
        }
        if self.thermal.local_forbidden_at < ThermalLevel::Serious {
            return v(
                "thermal",
                "local_forbidden_at",
                "local_forbidden_at",
                format!(
                    "expected \"serious\" or \"critical\", found \"{}\"",
                    self.thermal.local_forbidden_at
                ),
            );
        }
        None
    }

    /// [`violation`](Self::violation) located in the file's text: at the key when the file
    /// sets it, else at its partner (the file set that one and the default of the other
    /// does not fit it).
    fn check_in(&self, text: &str, origin: &str) -> Result<(), PolicyError> {
        let Some(v) = self.violation() else {
            return Ok(());
        };
        let (key, (line, column)) = match locate_key(text, v.table, v.key) {
            Some(at) => (v.key, at),
            None => match locate_key(text, v.table, v.partner) {
                Some(at) => (v.partner, at),
                None => (v.key, (1, 1)),
            },
        };
        Err(PolicyError::Invalid {
            file: origin.to_string(),
            line,
            column,
            key: Some(format!("{}.{key}", v.table)),
            message: v.message,
        })
    }

    /// The policy as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The name of a `[table]` header line (comments and spaces allowed), or `None`.
fn header(line: &str) -> Option<String> {
    let line = line.trim();
    if !line.starts_with('[') {
        return None;
    }
    // `[[privacy.patterns]]`: an entry of an array of tables.
    let inner = line.strip_prefix("[[").or_else(|| line.get(1..))?;
    let end = inner.find(']')?;
    Some(inner.get(..end)?.trim().replace([' ', '"'], ""))
}

/// The keys open at `col` on `line`: every `key =` whose inline table `{` is still open,
/// then the last `key =` before `col`. `a = { b = { c = 1 } }` at `1` gives `a.b.c`.
fn keys_before(line: &str, col: usize) -> Vec<String> {
    let prefix = line.get(..col.min(line.len())).unwrap_or(line);
    let mut stack: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    let mut word = String::new();
    let mut in_string = false;
    for c in prefix.chars() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '=' => {
                let k = word.trim().trim_matches('"').to_string();
                if !k.is_empty() {
                    last = Some(k);
                }
                word.clear();
            }
            '{' => {
                if let Some(k) = last.take() {
                    stack.push(k);
                }
                word.clear();
            }
            '}' => {
                stack.pop();
                last = None;
                word.clear();
            }
            ',' => {
                last = None;
                word.clear();
            }
            '#' => break,
            _ => word.push(c),
        }
    }
    stack.extend(last);
    stack
}

/// The dotted key at `offset`: the table header above it plus the keys open on its line.
/// For unknown-field errors whose span misses the key, the key is taken from the message.
fn key_at(text: &str, offset: usize, message: &str) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text
        .get(offset..)?
        .find('\n')
        .map_or(text.len(), |i| offset + i);
    let line = text.get(line_start..line_end)?;
    if let Some(h) = header(line) {
        // The error is about the table header itself.
        return Some(h);
    }
    let table = text.get(..line_start)?.lines().rev().find_map(header);
    // The span may start at the key itself; include the key's whole text.
    let col = (offset - line_start).max(line.find('=').map_or(0, |i| i + 1));
    let mut keys = keys_before(line, col.max(offset - line_start));
    let quoted = message.find('`').and_then(|s| {
        let rest = message.get(s + 1..)?;
        rest.find('`').and_then(|e| rest.get(..e))
    });
    // "unknown field `x`" names the key even when the span sits before it.
    if let Some(field) = quoted.filter(|_| message.starts_with("unknown field"))
        && keys.last().map(String::as_str) != Some(field)
    {
        keys.push(field.to_string());
    }
    let key = keys.join(".");
    if key.is_empty() {
        return None;
    }
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key,
    })
}

/// Where `key` is set in `[table]` (or as `table.key`, or inside `table = { ... }`), 1-based.
fn locate_key(text: &str, table: &str, key: &str) -> Option<(usize, usize)> {
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        if let Some(h) = header(raw) {
            current = h;
            continue;
        }
        let line = raw.split('#').next().unwrap_or("");
        let indent = raw.len() - raw.trim_start().len();
        let Some((k, rest)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim().replace([' ', '"'], "");
        if (current == table && k == key) || (current.is_empty() && k == format!("{table}.{key}")) {
            return Some((i + 1, indent + 1));
        }
        // An inline table: `battery = { low = 0.2, critical = 0.1 }`.
        if current.is_empty() && k == table {
            let needle_at = rest
                .find(&format!("{key} "))
                .or_else(|| rest.find(&format!("{key}=")));
            if let Some(at) = needle_at {
                return Some((i + 1, line.len() - rest.len() + at + 1));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_policy_takes_defaults() {
        let p = Policy::from_toml("mode = \"auto\"\n", "inline").unwrap();
        assert_eq!(p, Policy::default());
    }

    #[test]
    fn default_round_trips_through_toml() {
        let p = Policy::default();
        assert_eq!(Policy::from_toml(&p.to_toml(), "rt").unwrap(), p);
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
        assert_eq!(line_col("", 0), (1, 1));
    }
}
