//! The [`Router`]: decides, calls the chosen backend, falls back, restores redactions, and
//! returns the answer with its [`Route`].

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elmroute_core::{
    Backend, ChatRequest, Chunk, ChunkStream, Completion, DeviceSource, DeviceState, Error,
    Fallback, FallbackKind, FinishReason, Message, Network, NoRoute, PrivacyAction, Refusal, Reply,
    Result, Route, Rule, StreamEvent, Target, Usage,
};
use futures::{Stream, StreamExt};
use tracing::Instrument;

use crate::decision::{self, Decision, Inputs, LocalView, RemoteView};
use crate::policy::Policy;
use crate::redact::{self, Restorer};
use crate::signals::{
    ComplexityScorer, Finding, HeuristicComplexity, PrivacyDetector, PrivacyReport,
};

/// The router's stream: text deltas, then one [`StreamEvent::Done`] with the route.
pub type CompletionStream = Pin<Box<dyn Stream<Item = Result<StreamEvent>> + Send + 'static>>;

/// Tokens reserved for the answer when a request does not say `max_tokens`.
const DEFAULT_ANSWER_BUDGET: usize = 256;

/// The user message that asks the other backend to carry on a broken stream.
const CONTINUE_PROMPT: &str = "Continue your previous answer exactly where it stopped. Do not repeat any of it and do not comment on the interruption.";

/// Routes each request to the on-device or the cloud backend. Cheap to clone: clones share
/// the backends.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    policy: Policy,
    local: Option<Arc<dyn Backend>>,
    remote: Option<Arc<dyn Backend>>,
    device: Arc<dyn DeviceSource>,
    complexity: Arc<dyn ComplexityScorer>,
    privacy: PrivacyDetector,
    health: Mutex<RemoteHealth>,
}

/// What the router has seen of the cloud lately: consecutive transient failures open a
/// cool-down, so a dead network costs one timeout per cool-down, not one per request.
#[derive(Debug, Default)]
struct RemoteHealth {
    failures: u32,
    cooling_until: Option<Instant>,
    /// Why the last transient failure happened, for the cool-down's explanation.
    last_failure: String,
    /// Until when the provider counts as out of reach (connect or DNS failure): the network
    /// is treated as offline, so requests go to the device without touching it.
    unreachable_until: Option<Instant>,
    /// What the connection failure said.
    unreachable_reason: String,
    /// A probe is in flight (one at a time).
    probing: bool,
}

impl Inner {
    fn remote_cooling(&self) -> Option<Duration> {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health
            .cooling_until
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    /// While the provider is out of reach: why, and for how much longer.
    fn remote_unreachable(&self) -> Option<(String, Duration)> {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let left = health
            .unreachable_until?
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())?;
        Some((health.unreachable_reason.clone(), left))
    }

    /// When the out-of-reach window has passed and the policy allows, asks the backend's
    /// cheap probe whether the provider is back before any request goes there: success
    /// clears the mark, failure renews it.
    async fn probe_if_due(&self) {
        let Some(remote) = self.remote.clone() else {
            return;
        };
        {
            let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            let due = health
                .unreachable_until
                .is_some_and(|until| until <= Instant::now());
            if !due || health.probing {
                return;
            }
            if !self.policy.network.probe {
                health.unreachable_until = None;
                return;
            }
            health.probing = true;
        }
        let outcome = remote.probe().await;
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.probing = false;
        match outcome {
            Ok(()) => {
                tracing::info!("cloud provider reachable again");
                health.unreachable_until = None;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cloud provider still out of reach");
                health.unreachable_reason = e.to_string();
                health.unreachable_until = Some(
                    Instant::now()
                        + Duration::from_secs(u64::from(self.policy.network.offline_recheck_secs)),
                );
            }
        }
    }

    fn record_remote(&self, outcome: std::result::Result<(), &Error>) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => *health = RemoteHealth::default(),
            Err(e) if e.is_retryable() => {
                health.failures = health.failures.saturating_add(1);
                health.last_failure = e.to_string();
                if e.is_offline() {
                    let secs = u64::from(self.policy.network.offline_recheck_secs);
                    tracing::warn!(
                        recheck_secs = secs,
                        "cloud provider out of reach; treating the network as offline"
                    );
                    health.unreachable_reason = e.to_string();
                    health.unreachable_until = Some(Instant::now() + Duration::from_secs(secs));
                }
                let n = &self.policy.network;
                let mut until = None;
                if n.cooldown_after > 0 && health.failures >= n.cooldown_after {
                    until = Some(Instant::now() + Duration::from_secs(u64::from(n.cooldown_secs)));
                }
                if let Some(wait) = e.retry_after() {
                    let asked = Instant::now() + wait.min(Duration::from_secs(3600));
                    until = Some(until.map_or(asked, |u: Instant| u.max(asked)));
                }
                if let Some(until) = until {
                    tracing::warn!(
                        failures = health.failures,
                        cooldown_ms =
                            until.saturating_duration_since(Instant::now()).as_millis() as u64,
                        "cloud cooling down"
                    );
                    health.cooling_until = Some(until);
                }
            }
            Err(_) => {}
        }
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("policy", &self.inner.policy)
            .field(
                "local",
                &self.inner.local.as_ref().map(|b| b.name().to_string()),
            )
            .field(
                "remote",
                &self.inner.remote.as_ref().map(|b| b.name().to_string()),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`Router`].
#[must_use]
pub struct RouterBuilder {
    policy: Policy,
    local: Option<Arc<dyn Backend>>,
    remote: Option<Arc<dyn Backend>>,
    device: Arc<dyn DeviceSource>,
    complexity: Arc<dyn ComplexityScorer>,
}

impl std::fmt::Debug for RouterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("policy", &self.policy)
            .field("local", &self.local.as_ref().map(|b| b.name().to_string()))
            .field(
                "remote",
                &self.remote.as_ref().map(|b| b.name().to_string()),
            )
            .finish_non_exhaustive()
    }
}

impl Default for RouterBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RouterBuilder {
    /// A builder with the default (`balanced`) policy, no backends, and a device that reports
    /// mains power, nominal heat and an online network.
    pub fn new() -> Self {
        Self {
            policy: Policy::default(),
            local: None,
            remote: None,
            device: Arc::new(DeviceState::default()),
            complexity: Arc::new(HeuristicComplexity::new()),
        }
    }

    /// Sets the policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the on-device backend.
    pub fn local(self, backend: impl Backend) -> Self {
        self.local_arc(Arc::new(backend))
    }

    /// Sets the on-device backend, shared.
    pub fn local_arc(mut self, backend: Arc<dyn Backend>) -> Self {
        self.local = Some(backend);
        self
    }

    /// Sets the cloud backend.
    pub fn remote(self, backend: impl Backend) -> Self {
        self.remote_arc(Arc::new(backend))
    }

    /// Sets the cloud backend, shared.
    pub fn remote_arc(mut self, backend: Arc<dyn Backend>) -> Self {
        self.remote = Some(backend);
        self
    }

    /// Sets where battery, thermal and network state come from.
    pub fn device(mut self, device: impl DeviceSource + 'static) -> Self {
        self.device = Arc::new(device);
        self
    }

    /// Replaces the complexity scorer.
    pub fn complexity(mut self, scorer: impl ComplexityScorer + 'static) -> Self {
        self.complexity = Arc::new(scorer);
        self
    }

    /// Builds the router. Fails when no backend is set.
    pub fn build(self) -> Result<Router> {
        self.policy
            .validate()
            .map_err(|e| Error::invalid_request(e.to_string()))?;
        if self.local.is_none() && self.remote.is_none() {
            return Err(Error::invalid_request(
                "a router needs a local backend, a remote backend, or both",
            ));
        }
        let privacy = PrivacyDetector::with_policy(&self.policy.privacy)
            .map_err(|e| Error::invalid_request(e.to_string()))?;
        Ok(Router {
            inner: Arc::new(Inner {
                policy: self.policy,
                local: self.local,
                remote: self.remote,
                device: self.device,
                complexity: self.complexity,
                privacy,
                health: Mutex::new(RemoteHealth::default()),
            }),
        })
    }
}

/// A decision plus what carrying it out needs.
struct Plan {
    decision: Decision,
    findings: Vec<Finding>,
    /// The request must be refused for its private data (`PrivacyAction::Block`), with
    /// this explanation (categories and counts only).
    blocked: Option<String>,
}

impl Router {
    /// Starts building a router.
    pub fn builder() -> RouterBuilder {
        RouterBuilder::new()
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Decides where `request` would go, without generating anything.
    pub fn decide(&self, request: &ChatRequest) -> Result<Route> {
        Ok(self.plan(request)?.decision.route)
    }

    fn plan(&self, request: &ChatRequest) -> Result<Plan> {
        let started = Instant::now();
        validate(request)?;
        let inner = &*self.inner;
        let privacy = inner.privacy.scan(request);
        let complexity = inner.complexity.score(request);
        let device = inner.device.state();
        let local = inner.local.as_ref().map(|b| {
            let availability = b.availability();
            let prompt: usize = request
                .messages
                .iter()
                .map(|m| b.estimate_tokens(&m.content) + 4)
                .sum();
            let answer = request
                .max_tokens
                .map_or(DEFAULT_ANSWER_BUDGET, |t| t as usize);
            LocalView {
                ready: availability.is_ready(),
                not_ready_reason: format!("{availability:?}"),
                context_window: b.context_window(),
                needed_tokens: prompt.saturating_add(answer),
                truncation_allowed: request.truncation == elmroute_core::Truncation::Left,
            }
        });
        let mut device = device;
        let remote = inner.remote.as_ref().map(|b| {
            let availability = match inner.remote_cooling() {
                Some(remaining) => elmroute_core::Availability::CoolingDown { remaining },
                None => b.availability(),
            };
            let cooling_down = matches!(
                availability,
                elmroute_core::Availability::CoolingDown { .. }
            );
            let not_ready_reason = if cooling_down {
                let last = inner
                    .health
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_failure
                    .clone();
                format!("{availability:?} after: {last}")
            } else {
                format!("{availability:?}")
            };
            let unreachable = inner.remote_unreachable().map(|(why, left)| {
                device.network = Network::Offline;
                format!(
                    "the provider could not be reached ({why}); the network counts as offline for {} s more",
                    left.as_secs().max(1)
                )
            });
            RemoteView {
                ready: availability.is_ready(),
                cooling_down,
                not_ready_reason,
                unreachable,
            }
        });
        let policy_mode = inner.policy.mode;
        let override_refused =
            !inner.policy.allow_mode_override && request.mode.is_some_and(|m| m != policy_mode);
        let mode = match request.mode {
            Some(m) if inner.policy.allow_mode_override => m,
            _ => policy_mode,
        };
        let inputs = Inputs {
            mode,
            complexity,
            privacy: privacy.score,
            privacy_residual: privacy.residual,
            redactable: privacy.redactable(),
            device,
            local,
            remote,
        };
        let mut decision = decision::decide(&inner.policy, &inputs);
        if override_refused {
            decision.route.rules.insert(0, Rule::ModeOverrideRefused);
        }
        decision.route.findings = privacy.categories.clone();
        let blocked = block_reason(&inner.policy, request, &privacy);
        if let Some(reason) = &blocked {
            let route = &mut decision.route;
            route.target = Target::None;
            route.redactions = 0;
            route.rules.retain(|r| *r != Rule::Redact);
            route.rules.push(Rule::PrivacyBlock);
            for target in [Target::Local, Target::Cloud] {
                route.refusals.push(Refusal {
                    target,
                    rule: Rule::PrivacyBlock,
                    reason: reason.clone(),
                });
            }
        }
        decision.route.timings.decide_us = micros(started);
        Ok(Plan {
            decision,
            findings: privacy.findings,
            blocked,
        })
    }

    fn backend(&self, target: Target) -> Result<&Arc<dyn Backend>> {
        let b = match target {
            Target::Local => self.inner.local.as_ref(),
            Target::Cloud => self.inner.remote.as_ref(),
            Target::None => None,
        };
        b.ok_or_else(|| Error::not_ready(format!("no {target} backend is configured")))
    }

    /// Which fallback, if any, the policy allows after `first` failed with `error`.
    fn error_fallback(
        &self,
        first: Target,
        decision: &Decision,
        error: &Error,
    ) -> Option<FallbackKind> {
        if error.is_cancelled() || decision.refused(first.other()) {
            return None;
        }
        let f = &self.inner.policy.fallback;
        match first {
            Target::Cloud => f
                .remote_error_to_local
                .then_some(FallbackKind::RemoteErrorToLocal),
            Target::Local => f
                .local_error_to_cloud
                .then_some(FallbackKind::LocalErrorToCloud),
            Target::None => None,
        }
    }

    /// The request as `target` should see it, and what restores its answer.
    fn prepare(
        &self,
        target: Target,
        request: &ChatRequest,
        plan: &Plan,
    ) -> (ChatRequest, Option<Restorer>) {
        if target == Target::Cloud && plan.decision.redact_for_cloud {
            let r = redact::redact(request, &plan.findings);
            (r.request, Some(r.restorer))
        } else {
            (request.clone(), None)
        }
    }

    async fn complete_on(
        &self,
        target: Target,
        request: &ChatRequest,
        plan: &Plan,
    ) -> Result<Reply> {
        let backend = self.backend(target)?;
        let (request, restorer) = self.prepare(target, request, plan);
        let result = backend.complete(&request).await;
        if target == Target::Cloud {
            self.inner.record_remote(result.as_ref().map(|_| ()));
        }
        let mut reply = result?;
        if let Some(r) = restorer {
            reply.text = r.restore(&reply.text);
        }
        Ok(reply)
    }

    /// Answers a request in one piece.
    ///
    /// Fails with a [`NoRoute`] error (see [`Error::no_route_details`]) when no backend may
    /// serve it, or with the backend's error when it fails and the policy allows no fallback.
    pub async fn complete(&self, request: ChatRequest) -> Result<Completion> {
        let started = Instant::now();
        self.inner.probe_if_due().await;
        let plan = self.plan(&request)?;
        let span = request_span(&plan.decision.route);
        if let Some(reason) = &plan.blocked {
            span.in_scope(|| tracing::warn!("blocked: private data"));
            return Err(Error::privacy_blocked(reason.clone()));
        }
        async move {
            let mut route = plan.decision.route.clone();
            if route.target == Target::None {
                tracing::warn!(refusals = route.refusals.len(), "no route");
                return Err(Error::no_route(NoRoute { route }));
            }
            let first = route.target;
            let (reply, target) = match self.complete_on(first, &request, &plan).await {
                Ok(reply) => (reply, first),
                Err(error) => {
                    let Some(kind) = self.error_fallback(first, &plan.decision, &error) else {
                        tracing::warn!(%error, target = %first, "backend failed; no fallback allowed");
                        return Err(error);
                    };
                    let other = first.other();
                    tracing::warn!(%error, from = %first, to = %other, "backend failed; falling back");
                    note_fallback(&mut route, &plan, kind, first, error.to_string());
                    (self.complete_on(other, &request, &plan).await?, other)
                }
            };
            route.target = target;
            route.backend = self.backend(target).ok().map(|b| b.name().to_string());
            let total = micros(started);
            route.timings.total_us = total;
            route.timings.first_token_us = Some(total);
            tracing::info!(target = %target, total_us = total, completion_tokens = reply.usage.completion_tokens, "answered");
            Ok(Completion {
                text: reply.text,
                usage: reply.usage,
                finish_reason: reply.finish_reason,
                model: reply.model,
                route,
            })
        }
        .instrument(span)
        .await
    }

    async fn open(
        &self,
        target: Target,
        request: &ChatRequest,
        plan: &Plan,
    ) -> Result<(ChunkStream, Option<Restorer>)> {
        let backend = self.backend(target)?;
        let (request, restorer) = self.prepare(target, request, plan);
        let result = backend.stream(&request).await;
        if target == Target::Cloud
            && let Err(e) = &result
        {
            self.inner.record_remote(Err(e));
        }
        Ok((result?, restorer))
    }

    /// Answers a request as a stream of text deltas, then the route.
    ///
    /// Errors before the first token follow the same fallback rules as
    /// [`complete`](Router::complete). A stream that breaks after its first tokens continues
    /// on the other backend with the text so far as context when the policy's
    /// `fallback.mid_stream` allows and privacy does not forbid the move. Dropping the
    /// stream cancels the backend's work.
    pub async fn stream(&self, request: ChatRequest) -> Result<CompletionStream> {
        let started = Instant::now();
        self.inner.probe_if_due().await;
        let plan = self.plan(&request)?;
        let span = request_span(&plan.decision.route);
        if let Some(reason) = &plan.blocked {
            span.in_scope(|| tracing::warn!("blocked: private data"));
            return Err(Error::privacy_blocked(reason.clone()));
        }
        let mut route = plan.decision.route.clone();
        if route.target == Target::None {
            span.in_scope(|| tracing::warn!(refusals = route.refusals.len(), "no route"));
            return Err(Error::no_route(NoRoute { route }));
        }
        let first = route.target;
        let (inner, restorer, target, switched) = match self
            .open(first, &request, &plan)
            .instrument(span.clone())
            .await
        {
            Ok((s, r)) => (s, r, first, false),
            Err(error) => {
                let Some(kind) = self.error_fallback(first, &plan.decision, &error) else {
                    return Err(error);
                };
                let other = first.other();
                span.in_scope(|| tracing::warn!(%error, from = %first, to = %other, "backend failed; falling back"));
                note_fallback(&mut route, &plan, kind, first, error.to_string());
                let (s, r) = self
                    .open(other, &request, &plan)
                    .instrument(span.clone())
                    .await?;
                (s, r, other, true)
            }
        };
        route.target = target;
        let state = StreamState {
            router: self.clone(),
            request,
            plan,
            route,
            target,
            inner,
            restorer,
            text: String::new(),
            usage: Usage::default(),
            started,
            switched,
            joining: false,
            finished: false,
            pending: std::collections::VecDeque::new(),
            span,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move {
                let item = st.next_event().await?;
                Some((item, st))
            },
        )))
    }
}

fn note_fallback(route: &mut Route, plan: &Plan, kind: FallbackKind, from: Target, reason: String) {
    route.fallback = Some(Fallback { kind, from, reason });
    route.rules.push(Rule::FallbackAllowed);
    if from == Target::Local && plan.decision.redact_for_cloud {
        route.rules.push(Rule::Redact);
        route.redactions = plan.findings.iter().filter(|f| f.kind.redactable()).count();
    }
}

struct StreamState {
    router: Router,
    request: ChatRequest,
    plan: Plan,
    route: Route,
    target: Target,
    inner: ChunkStream,
    restorer: Option<Restorer>,
    text: String,
    usage: Usage,
    started: Instant,
    switched: bool,
    /// The next delta continues another backend's text: mind the word boundary.
    joining: bool,
    finished: bool,
    /// Items to yield before reading the backend again.
    pending: std::collections::VecDeque<Result<StreamEvent>>,
    span: tracing::Span,
}

impl StreamState {
    async fn next_event(&mut self) -> Option<Result<StreamEvent>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            let failure = match self.inner.next().await {
                Some(Ok(Chunk::Text(t))) => {
                    let out = match &mut self.restorer {
                        Some(r) => r.push(&t),
                        None => t,
                    };
                    if out.is_empty() {
                        continue;
                    }
                    let out = if std::mem::take(&mut self.joining) {
                        join_continuation(&self.text, out)
                    } else {
                        out
                    };
                    if self.route.timings.first_token_us.is_none() {
                        self.route.timings.first_token_us = Some(micros(self.started));
                    }
                    self.text.push_str(&out);
                    return Some(Ok(StreamEvent::Delta(out)));
                }
                Some(Ok(Chunk::Done {
                    usage,
                    finish_reason,
                    model,
                })) => {
                    self.finished = true;
                    if self.target == Target::Cloud {
                        self.router.inner.record_remote(Ok(()));
                    }
                    self.usage.prompt_tokens =
                        self.usage.prompt_tokens.saturating_add(usage.prompt_tokens);
                    self.usage.completion_tokens = self
                        .usage
                        .completion_tokens
                        .saturating_add(usage.completion_tokens);
                    let done = self.done(finish_reason, model);
                    let tail = self
                        .restorer
                        .as_mut()
                        .map(Restorer::finish)
                        .unwrap_or_default();
                    if tail.is_empty() {
                        return Some(Ok(done));
                    }
                    self.text.push_str(&tail);
                    self.pending.push_back(Ok(done));
                    return Some(Ok(StreamEvent::Delta(tail)));
                }
                Some(Err(e)) => e,
                None => Error::protocol("the backend's stream ended without saying it was done"),
            };
            if self.target == Target::Cloud {
                self.router.inner.record_remote(Err(&failure));
            }
            // Text the restorer held back was generated: emit it before anything else, and
            // let the continuation see it.
            let tail = self
                .restorer
                .as_mut()
                .map(Restorer::finish)
                .unwrap_or_default();
            if !tail.is_empty() {
                self.text.push_str(&tail);
                self.pending.push_back(Ok(StreamEvent::Delta(tail)));
            }
            if let Err(e) = self.switch(failure).await {
                self.finished = true;
                self.pending.push_back(Err(e));
            }
        }
    }

    fn done(&mut self, finish_reason: FinishReason, model: String) -> StreamEvent {
        self.route.target = self.target;
        self.route.backend = self
            .router
            .backend(self.target)
            .ok()
            .map(|b| b.name().to_string());
        self.route.timings.total_us = micros(self.started);
        self.span.in_scope(|| {
            tracing::info!(target = %self.target, total_us = self.route.timings.total_us, "stream answered")
        });
        StreamEvent::Done {
            usage: self.usage,
            finish_reason,
            model,
            route: Box::new(self.route.clone()),
        }
    }

    /// Moves the answer to the other backend after `error`, or gives `error` back.
    async fn switch(&mut self, error: Error) -> Result<()> {
        let from = self.target;
        let other = from.other();
        if self.switched || error.is_cancelled() || self.plan.decision.refused(other) {
            return Err(error);
        }
        let policy = &self.router.inner.policy;
        // The direction must be allowed (remote_error_to_local / local_error_to_cloud), and
        // after the first tokens the policy's mid_stream switch as well.
        let Some(kind) = self
            .router
            .error_fallback(from, &self.plan.decision, &error)
        else {
            return Err(error);
        };
        let (kind, request) = if self.text.is_empty() {
            (kind, self.request.clone())
        } else {
            if !policy.fallback.mid_stream {
                return Err(error);
            }
            let mut continued = self.request.clone();
            continued
                .messages
                .push(Message::assistant(self.text.clone()));
            continued.messages.push(Message::user(CONTINUE_PROMPT));
            (FallbackKind::MidStream, continued)
        };
        // The text so far may itself carry private data (a local answer quoting the prompt):
        // judge the request as it would now leave the device.
        let report = self.router.inner.privacy.scan(&request);
        if other == Target::Cloud && report.score >= policy.privacy.bar.get() {
            return Err(error);
        }
        let plan = Plan {
            blocked: None,
            decision: Decision {
                redact_for_cloud: report.score >= policy.privacy.redact_above.get()
                    && report.redactable() > 0,
                ..self.plan.decision.clone()
            },
            findings: report.findings,
        };
        self.span.in_scope(|| tracing::warn!(%error, from = %from, to = %other, ?kind, "stream failed; switching backend"));
        let reason = error.to_string();
        let (inner, restorer) = self
            .router
            .open(other, &request, &plan)
            .await
            .map_err(|e2| {
                tracing::warn!(error = %e2, "fallback backend failed too");
                error
            })?;
        note_fallback(&mut self.route, &plan, kind, from, reason);
        self.route.target = other;
        self.target = other;
        self.inner = inner;
        self.restorer = restorer;
        self.switched = true;
        self.joining = !self.text.is_empty();
        Ok(())
    }
}

/// Glues a continuation to the text so far: models often start a continuation without the
/// space that separated the words where the first backend stopped.
fn join_continuation(so_far: &str, next: String) -> String {
    let ends_in_word = so_far.chars().last().is_some_and(char::is_alphanumeric);
    let starts_word = next.chars().next().is_some_and(char::is_alphanumeric);
    if ends_in_word && starts_word {
        format!(" {next}")
    } else {
        next
    }
}

/// Why a request must be blocked for its private data, when the policy or the request asks
/// to block and its privacy reaches the policy's redaction level. Names categories and
/// counts, never values.
fn block_reason(policy: &Policy, request: &ChatRequest, privacy: &PrivacyReport) -> Option<String> {
    let action = policy
        .privacy
        .action
        .max(request.privacy_action.unwrap_or_default());
    let level = policy.privacy.redact_above.get();
    if action != PrivacyAction::Block || privacy.score <= 0.0 || privacy.score < level {
        return None;
    }
    let found: Vec<String> = privacy
        .categories
        .iter()
        .map(|c| format!("{} x{}", c.category, c.count))
        .collect();
    let what = if found.is_empty() {
        "the app's sensitivity label".to_string()
    } else {
        found.join(", ")
    };
    let by = if policy.privacy.action == PrivacyAction::Block {
        "the policy"
    } else {
        "the request"
    };
    Some(format!(
        "privacy {:.2} is at or above {level:.2} ({what}) and {by} blocks private requests",
        privacy.score
    ))
}

fn validate(request: &ChatRequest) -> Result<()> {
    if request.messages.is_empty() {
        return Err(Error::invalid_request("the request has no messages"));
    }
    if let Some(t) = request.temperature
        && !(t.is_finite() && t >= 0.0)
    {
        return Err(Error::invalid_request(format!(
            "temperature must be a finite number >= 0, found {t}"
        )));
    }
    if let Some(p) = request.top_p
        && !(p.is_finite() && p > 0.0 && p <= 1.0)
    {
        return Err(Error::invalid_request(format!(
            "top_p must be in (0, 1], found {p}"
        )));
    }
    if request.top_k == Some(0) {
        return Err(Error::invalid_request("top_k must be at least 1"));
    }
    if let Some(r) = request.repeat_penalty
        && !(r.is_finite() && r > 0.0)
    {
        return Err(Error::invalid_request(format!(
            "repeat_penalty must be a finite number > 0, found {r}"
        )));
    }
    if request.max_tokens == Some(0) {
        return Err(Error::invalid_request("max_tokens must be at least 1"));
    }
    Ok(())
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// One span per request, carrying the decision (never the prompt).
fn request_span(route: &Route) -> tracing::Span {
    let s = &route.scores;
    let rules: Vec<&str> = route.rules.iter().map(|r| r.as_str()).collect();
    // Categories and counts only ("email:2,health:1"), never a value.
    let private: Vec<String> = route
        .findings
        .iter()
        .map(|f| format!("{}:{}", f.category, f.count))
        .collect();
    let span = tracing::info_span!(
        "elmroute.request",
        target = %route.target,
        mode = %route.mode,
        complexity = s.complexity,
        privacy = s.privacy,
        battery = s.battery,
        thermal = s.thermal,
        network = s.network,
        capability = s.capability,
        score = s.total,
        threshold = s.threshold,
        rules = %rules.join(","),
        redactions = route.redactions,
        private = %private.join(","),
        decide_us = route.timings.decide_us,
    );
    span.in_scope(|| tracing::info!("routed"));
    span
}
