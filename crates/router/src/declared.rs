use elmroute_core::{
    Availability, Backend, BackendKind, ChatRequest, ChunkStream, Error, Reply, Result,
};

/// A backend that is described but not run: it reports itself ready with the given context
/// window and refuses to generate. Use it to ask a router where requests *would* go (the
/// assistant's `--explain`), with no model and no network.
#[derive(Debug, Clone)]
pub struct DeclaredBackend {
    name: String,
    kind: BackendKind,
    context_window: Option<usize>,
}

impl DeclaredBackend {
    /// A declared on-device model with a context window of `context_window` tokens.
    pub fn local(name: impl Into<String>, context_window: usize) -> Self {
        Self {
            name: name.into(),
            kind: BackendKind::Local,
            context_window: Some(context_window),
        }
    }

    /// A declared cloud provider.
    pub fn remote(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: BackendKind::Remote,
            context_window: None,
        }
    }
}

#[async_trait::async_trait]
impl Backend for DeclaredBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn availability(&self) -> Availability {
        Availability::Ready
    }

    fn context_window(&self) -> Option<usize> {
        self.context_window
    }

    async fn complete(&self, _request: &ChatRequest) -> Result<Reply> {
        Err(Error::not_ready(format!(
            "`{}` is declared for decisions only and cannot generate",
            self.name
        )))
    }

    async fn stream(&self, _request: &ChatRequest) -> Result<ChunkStream> {
        Err(Error::not_ready(format!(
            "`{}` is declared for decisions only and cannot generate",
            self.name
        )))
    }
}
