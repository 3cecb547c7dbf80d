//! An in-process backend that records what it receives and answers from a script.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use elmroute_core::{
    Availability, Backend, BackendKind, ChatRequest, Chunk, ChunkStream, Error, FinishReason,
    Reply, Result, Usage,
};

/// What the backend does when called.
#[derive(Clone, Debug)]
pub enum Script {
    /// Answer with this text (streamed word by word).
    Answer(String),
    /// Fail before producing anything.
    Fail(fn() -> Error),
    /// Stream `n` words of the answer, then fail.
    BreakAfter(String, usize),
}

#[derive(Clone)]
pub struct TestBackend {
    name: String,
    kind: BackendKind,
    inner: Arc<Mutex<State>>,
}

struct State {
    availability: Availability,
    context: Option<usize>,
    script: Script,
    received: Vec<ChatRequest>,
    probe_fails: bool,
    probes: usize,
}

impl TestBackend {
    pub fn new(name: &str, kind: BackendKind, script: Script) -> Self {
        Self {
            name: name.to_string(),
            kind,
            inner: Arc::new(Mutex::new(State {
                availability: Availability::Ready,
                context: if kind == BackendKind::Local {
                    Some(2048)
                } else {
                    None
                },
                script,
                received: Vec::new(),
                probe_fails: false,
                probes: 0,
            })),
        }
    }

    pub fn local(answer: &str) -> Self {
        Self::new(
            "test-local",
            BackendKind::Local,
            Script::Answer(answer.into()),
        )
    }

    pub fn remote(answer: &str) -> Self {
        Self::new(
            "test-remote",
            BackendKind::Remote,
            Script::Answer(answer.into()),
        )
    }

    pub fn set_availability(&self, a: Availability) {
        self.inner.lock().unwrap().availability = a;
    }

    /// Makes `probe()` fail (the provider's host out of reach) or succeed.
    pub fn set_probe_fails(&self, fails: bool) {
        self.inner.lock().unwrap().probe_fails = fails;
    }

    /// How many times `probe()` was called.
    pub fn probes(&self) -> usize {
        self.inner.lock().unwrap().probes
    }

    pub fn set_script(&self, s: Script) {
        self.inner.lock().unwrap().script = s;
    }

    pub fn received(&self) -> Vec<ChatRequest> {
        self.inner.lock().unwrap().received.clone()
    }

    pub fn calls(&self) -> usize {
        self.inner.lock().unwrap().received.len()
    }

    /// Every piece of text this backend was ever sent.
    pub fn all_text(&self) -> String {
        self.received()
            .iter()
            .flat_map(|r| r.messages.iter().map(|m| m.content.clone()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn record(&self, request: &ChatRequest) -> Script {
        let mut s = self.inner.lock().unwrap();
        s.received.push(request.clone());
        s.script.clone()
    }
}

fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, w) in text.split(' ').enumerate() {
        out.push(if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        });
    }
    out
}

#[async_trait::async_trait]
impl Backend for TestBackend {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> BackendKind {
        self.kind
    }
    fn availability(&self) -> Availability {
        self.inner.lock().unwrap().availability.clone()
    }
    async fn probe(&self) -> Result<()> {
        let mut st = self.inner.lock().unwrap();
        st.probes += 1;
        if st.probe_fails {
            Err(Error::offline("probe: connection refused"))
        } else {
            Ok(())
        }
    }

    fn context_window(&self) -> Option<usize> {
        self.inner.lock().unwrap().context
    }
    async fn complete(&self, request: &ChatRequest) -> Result<Reply> {
        match self.record(request) {
            Script::Answer(text) => Ok(Reply {
                usage: Usage {
                    prompt_tokens: 10,
                    completion_tokens: words(&text).len() as u32,
                },
                text,
                finish_reason: FinishReason::Stop,
                model: self.name.clone(),
            }),
            Script::Fail(f) => Err(f()),
            Script::BreakAfter(_, _) => Err(Error::backend("broke")),
        }
    }
    async fn stream(&self, request: &ChatRequest) -> Result<ChunkStream> {
        let (text, fail_after) = match self.record(request) {
            Script::Answer(t) => (t, None),
            Script::Fail(f) => return Err(f()),
            Script::BreakAfter(t, n) => (t, Some(n)),
        };
        let ws = words(&text);
        let mut items: Vec<Result<Chunk>> = Vec::new();
        for (i, w) in ws.iter().enumerate() {
            if fail_after == Some(i) {
                items.push(Err(Error::offline("connection reset mid-stream")));
                return Ok(Box::pin(futures::stream::iter(items)));
            }
            items.push(Ok(Chunk::Text(w.clone())));
        }
        items.push(Ok(Chunk::Done {
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: ws.len() as u32,
            },
            finish_reason: FinishReason::Stop,
            model: self.name.clone(),
        }));
        Ok(Box::pin(futures::stream::iter(items)))
    }
}

pub fn policy(name: &str) -> elmroute_router::Policy {
    let path = format!("{}/../../policies/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    elmroute_router::Policy::from_file(&path).unwrap()
}

/// A router over a pair of test backends.
pub fn router(
    p: elmroute_router::Policy,
    local: &TestBackend,
    remote: &TestBackend,
) -> elmroute_router::Router {
    elmroute_router::Router::builder()
        .policy(p)
        .local(local.clone())
        .remote(remote.clone())
        .build()
        .unwrap()
}
