//! What an app asks for: messages, generation settings and per-request routing hints.

use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions from the app that frame the conversation.
    System,
    /// The person using the app.
    User,
    /// A model's earlier answer.
    Assistant,
}

/// One turn of a conversation.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// The text of the turn.
    pub content: String,
    /// The app's own label for this turn (a pasted contract, a note marked confidential). Like
    /// the request's label it can only raise the privacy signal. Never sent to a provider.
    #[serde(default, skip_serializing_if = "Sensitivity::is_unlabelled")]
    pub sensitivity: Sensitivity,
}

// Message text can be private: Debug shows its size, never its words.
impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("role", &self.role)
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .field("sensitivity", &self.sensitivity)
            .finish()
    }
}

impl Message {
    /// A message with the given role and text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            sensitivity: Sensitivity::Unlabelled,
        }
    }

    /// Labels this turn's sensitivity.
    #[must_use]
    pub fn with_sensitivity(mut self, sensitivity: Sensitivity) -> Self {
        self.sensitivity = sensitivity;
        self
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// How a request may be routed. Set in a policy file; a request may override it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decide per request from the weighted signals.
    #[default]
    Auto,
    /// On the device when it is ready and allowed; otherwise the cloud.
    PreferLocal,
    /// On the device or a typed error; the network is never touched.
    LocalOnly,
    /// The cloud when online; offline or a cloud failure falls back to the device.
    PreferCloud,
    /// The cloud or a typed error.
    CloudOnly,
}

impl Mode {
    /// Every mode, in the order the docs list them.
    pub const ALL: [Mode; 5] = [
        Mode::Auto,
        Mode::PreferLocal,
        Mode::LocalOnly,
        Mode::PreferCloud,
        Mode::CloudOnly,
    ];

    /// The name used in policy files and JSON (`"prefer_local"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::PreferLocal => "prefer_local",
            Mode::LocalOnly => "local_only",
            Mode::PreferCloud => "prefer_cloud",
            Mode::CloudOnly => "cloud_only",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The app's own label for how sensitive a request is. It can only raise the privacy signal,
/// never lower what the detectors found.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    /// No label: the detectors alone decide.
    #[default]
    Unlabelled,
    /// The app says the content may leave the device.
    Public,
    /// Internal data: privacy counts at least 0.5.
    Internal,
    /// Confidential data: privacy is 1.0, so it stays on the device under every shipped policy.
    Confidential,
}

impl Sensitivity {
    /// Whether no label was given.
    pub fn is_unlabelled(&self) -> bool {
        *self == Sensitivity::Unlabelled
    }
}

/// What the router does with a request that holds private data, when the policy's privacy
/// bands would otherwise let part of it reach the cloud. Ordered from the most permissive:
/// the stricter of the policy's and the request's action applies.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyAction {
    /// Route by the bands: the device only at or above the bar; between the redaction level
    /// and the bar, the cloud sees placeholders and the answer gets the values back.
    #[default]
    Redact,
    /// Refuse the request with a typed error ([`Error::is_privacy_blocked`](crate::Error::is_privacy_blocked))
    /// once its privacy reaches the redaction level: no backend sees it, on the device or in
    /// the cloud, and the app can ask the person what to do.
    Block,
}

/// What a backend does with a prompt longer than its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Refuse with a typed context-overflow error (the router sends such requests to a
    /// backend with room, where one is allowed).
    #[default]
    Error,
    /// Drop the oldest prompt tokens (after the start token) until prompt and answer fit.
    Left,
}

/// A chat completion request, the same for every backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ChatRequest {
    /// The conversation so far, oldest first.
    pub messages: Vec<Message>,
    /// Most tokens to generate; `None` lets the backend choose.
    pub max_tokens: Option<u32>,
    /// Sampling temperature; `None` lets the backend choose, `0.0` is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Sample only from the `k` most likely tokens (on-device models; providers that accept
    /// it).
    pub top_k: Option<u32>,
    /// Penalty for repeating recent tokens; `1.0` is off (on-device models).
    pub repeat_penalty: Option<f32>,
    /// What to do when the prompt does not fit a backend's context.
    pub truncation: Truncation,
    /// Strings that end the answer when generated (not included in the text).
    pub stop: Vec<String>,
    /// Seed for reproducible sampling where the backend supports it.
    pub seed: Option<u64>,
    /// Overrides the policy's mode for this request.
    pub mode: Option<Mode>,
    /// The app's own sensitivity label.
    pub sensitivity: Sensitivity,
    /// Overrides the policy's `privacy.action` for this request. A request may ask to block
    /// where the policy redacts; it may not weaken a policy that blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_action: Option<PrivacyAction>,
}

impl ChatRequest {
    /// A request holding the given messages.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }

    /// A request with one user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(vec![Message::user(content)])
    }

    /// Puts a system message first.
    #[must_use]
    pub fn with_system(mut self, content: impl Into<String>) -> Self {
        self.messages.insert(0, Message::system(content));
        self
    }

    /// Sets the most tokens to generate.
    #[must_use]
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the sampling temperature.
    #[must_use]
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets top-k sampling.
    #[must_use]
    pub fn with_top_k(mut self, k: u32) -> Self {
        self.top_k = Some(k);
        self
    }

    /// Sets the repeat penalty.
    #[must_use]
    pub fn with_repeat_penalty(mut self, penalty: f32) -> Self {
        self.repeat_penalty = Some(penalty);
        self
    }

    /// Sets what happens when the prompt does not fit a backend's context.
    #[must_use]
    pub fn with_truncation(mut self, truncation: Truncation) -> Self {
        self.truncation = truncation;
        self
    }

    /// Adds a stop string.
    #[must_use]
    pub fn with_stop(mut self, stop: impl Into<String>) -> Self {
        self.stop.push(stop.into());
        self
    }

    /// Overrides the policy's mode for this request.
    #[must_use]
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Labels the request's sensitivity.
    #[must_use]
    pub fn with_sensitivity(mut self, sensitivity: Sensitivity) -> Self {
        self.sensitivity = sensitivity;
        self
    }

    /// Asks for a privacy action for this request (see [`PrivacyAction`]).
    #[must_use]
    pub fn with_privacy_action(mut self, action: PrivacyAction) -> Self {
        self.privacy_action = Some(action);
        self
    }

    /// The text of the last user message, or `""`.
    pub fn last_user_text(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str())
    }

    /// Total bytes of message text.
    pub fn text_len(&self) -> usize {
        self.messages.iter().map(|m| m.content.len()).sum()
    }
}
