//! The engine: the model on its own worker thread behind core's [`Backend`] trait.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use elmroute_core::{Availability, Backend, BackendKind, ChatRequest, Chunk, ChunkStream, Reply};
use futures::StreamExt;
use futures::channel::mpsc::{UnboundedSender, unbounded};

use crate::chat_template::ChatTemplate;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::generation::{GenerationConfig, generate};
use crate::gguf::Gguf;
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::weights::Checkpoint;

/// How the engine loads and runs the model.
#[derive(Debug, Clone)]
#[must_use]
pub struct LoadOptions {
    /// The dtype the model runs in (weights are converted on load). Default f32.
    pub dtype: DType,
    /// Where the model runs. Default CPU.
    pub device: Device,
    /// Quantize the projection matrices and the shared embedding of a safetensors checkpoint
    /// to this GGML type while loading (`Q8_0`, `Q4_0`, `Q4K`, `Q6K`, ...), for the small,
    /// fast on-device path without a conversion tool. Norms and activations stay in
    /// [`dtype`](Self::dtype). A matrix whose rows are not a whole number of blocks falls
    /// back as [`quant_type_for`](crate::quant_type_for) says. On the CPU, Q8_0, Q4_0 and
    /// (on x86-64 with AVX2) Q4_K run on this crate's block kernels (Q4_K as Q4_0 blocks
    /// with a per-block offset; elsewhere on candle's); other block types are re-blocked to Q8_0 after quantizing (their rounding, Q8_0's
    /// storage), since candle multiplies them with scalar code. GGUF files keep their own
    /// types and ignore this.
    /// Default `None`: the weights as stored.
    pub quantize: Option<GgmlDType>,
    /// The dtype of the KV cache. Default `None`: f16 for block-quantized weights running
    /// in f32 on the CPU (half the cache's memory and reads), else the run dtype; see
    /// [`Model::kv_cache_dtype`]. `Some(DType::F32)` keeps an f32 model's cache exact;
    /// `Some(DType::F16)` halves it for float weights too. Applies to the models this engine
    /// loads, not to one given to [`OpenElm::from_model`].
    pub kv_cache_dtype: Option<DType>,
    /// Requests that may wait while one runs; one more gets a busy error. Default 8; 0 is
    /// taken as 1.
    pub queue_capacity: usize,
    /// Drop the oldest prompt tokens when a request does not fit the context instead of
    /// answering with a context-overflow error. Default false.
    pub truncate_left: bool,
    /// The backend name in routes and logs; default `openelm` plus the directory name.
    pub name: Option<String>,
    /// How chat messages become the prompt. Default [`ChatTemplate::Plain`].
    pub chat_template: ChatTemplate,
    /// Sampling settings for what a request leaves open (`max_tokens`, `temperature`, ...).
    /// A request without a seed gets a fresh one, so `defaults.seed` is not used.
    pub defaults: GenerationConfig,
    /// Called on the worker thread with the fraction loaded (0..=1) after each tensor, as
    /// [`Availability::Loading`] reports it; for progress bars.
    pub on_progress: Option<ProgressFn>,
}

/// A loading-progress callback.
#[derive(Clone)]
pub struct ProgressFn(Arc<dyn Fn(f32) + Send + Sync>);

impl ProgressFn {
    /// Wraps a callback.
    pub fn new(f: impl Fn(f32) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressFn")
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            quantize: None,
            kv_cache_dtype: None,
            queue_capacity: 8,
            truncate_left: false,
            name: None,
            chat_template: ChatTemplate::default(),
            defaults: GenerationConfig::default(),
            on_progress: None,
        }
    }
}

impl LoadOptions {
    /// Sets the run dtype.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Sets the device.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Quantizes the weights to `quantize` while loading (see [`quantize`](Self::quantize)).
    pub fn with_quantize(mut self, quantize: Option<GgmlDType>) -> Self {
        self.quantize = quantize;
        self
    }

    /// Sets the KV cache's dtype (see [`kv_cache_dtype`](Self::kv_cache_dtype)).
    pub fn with_kv_cache_dtype(mut self, dtype: Option<DType>) -> Self {
        self.kv_cache_dtype = dtype;
        self
    }

    /// Sets how many requests may wait.
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Allows left truncation of prompts that do not fit.
    pub fn with_truncate_left(mut self, truncate_left: bool) -> Self {
        self.truncate_left = truncate_left;
        self
    }

    /// Sets the backend name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the chat template.
    pub fn with_chat_template(mut self, template: ChatTemplate) -> Self {
        self.chat_template = template;
        self
    }

    /// Sets the default generation settings.
    pub fn with_defaults(mut self, defaults: GenerationConfig) -> Self {
        self.defaults = defaults;
        self
    }

    /// Sets a loading-progress callback.
    pub fn with_progress(mut self, f: impl Fn(f32) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(ProgressFn::new(f));
        self
    }
}

/// The files of a model: `config.json`, the safetensors files, `tokenizer.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// `model.safetensors`, or every shard.
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
}

impl ModelFiles {
    /// The files of a Hugging Face model directory: `config.json`, `model.safetensors` or
    /// `model.safetensors.index.json` with its shards, and `tokenizer.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let need = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                let hint = if name == "tokenizer.json" {
                    "; OpenELM repositories ship no tokenizer: copy Llama-2's tokenizer.json \
                     (for example from hf-internal-testing/llama-tokenizer) into it"
                } else {
                    ""
                };
                Err(Error::MissingFile {
                    dir: dir.to_path_buf(),
                    detail: format!("no `{name}`{hint}"),
                })
            }
        };
        Ok(Self {
            config: need("config.json")?,
            weights: Checkpoint::files_in(dir)?,
            tokenizer: need("tokenizer.json")?,
        })
    }
}

/// A loaded model and its tokenizer: what the worker thread owns.
#[derive(Debug)]
struct Loaded {
    model: Model,
    tokenizer: Arc<Tokenizer>,
}

fn load_files(files: &ModelFiles, opts: &LoadOptions, progress: impl FnMut(f32)) -> Result<Loaded> {
    let config = Config::from_file(&files.config)?;
    let tokenizer = Tokenizer::from_file(&files.tokenizer)?;
    let checkpoint = Checkpoint::open(&files.weights)?;
    let mut model = Model::load_quantized(
        &config,
        &checkpoint,
        opts.quantize,
        opts.dtype,
        &opts.device,
        progress,
    )?;
    if let Some(dtype) = opts.kv_cache_dtype {
        model.set_kv_cache_dtype(dtype)?;
    }
    Ok(Loaded {
        model,
        tokenizer: Arc::new(tokenizer),
    })
}

/// Loads a GGUF file and its tokenizer: `tokenizer` when given, else the file's own
/// vocabulary, else an error naming the tokenizer.json to give.
fn load_gguf(
    path: &Path,
    tokenizer: Option<&Path>,
    opts: &LoadOptions,
    progress: impl FnMut(f32),
) -> Result<Loaded> {
    let mut gguf = Gguf::open(path)?;
    let tokenizer = match tokenizer {
        Some(p) => Tokenizer::from_file(p)?,
        None => gguf.require_tokenizer()?,
    };
    let mut model = gguf.load_model(opts.dtype, &opts.device, progress)?;
    if let Some(dtype) = opts.kv_cache_dtype {
        model.set_kv_cache_dtype(dtype)?;
    }
    Ok(Loaded {
        model,
        tokenizer: Arc::new(tokenizer),
    })
}

/// What the worker loads before serving.
#[derive(Debug)]
enum Source {
    Dir(PathBuf),
    Files(ModelFiles),
    Gguf(PathBuf, Option<PathBuf>),
    Loaded(Box<Model>, Arc<Tokenizer>),
}

struct Job {
    prompt: Vec<u32>,
    cfg: GenerationConfig,
    tx: UnboundedSender<elmroute_core::Result<Chunk>>,
}

/// State shared by the engine handle and its worker.
#[derive(Debug)]
struct Shared {
    name: String,
    availability: Mutex<Availability>,
    tokenizer: OnceLock<Arc<Tokenizer>>,
    context: OnceLock<usize>,
    bos: OnceLock<Option<u32>>,
    generated: AtomicU64,
}

impl Shared {
    fn set(&self, a: Availability) {
        if let Ok(mut g) = self.availability.lock() {
            *g = a;
        }
    }

    fn get(&self) -> Availability {
        self.availability
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|_| Availability::Failed {
                reason: "engine state poisoned".into(),
            })
    }
}

/// Pending start of the worker (held until [`OpenElm::start_loading`]).
struct Pending {
    source: Source,
    rx: Receiver<Job>,
}

/// OpenELM as an elmroute [`Backend`].
///
/// The model lives on its own OS thread, so generation never blocks the async runtime.
/// Requests queue in order in a bounded queue ([`LoadOptions::queue_capacity`]); when it is
/// full a request gets a busy error at once. Streams are fed token by token; dropping one
/// stops its generation within one token.
pub struct OpenElm {
    shared: Arc<Shared>,
    jobs: SyncSender<Job>,
    pending: Mutex<Option<Pending>>,
    opts: LoadOptions,
}

impl std::fmt::Debug for OpenElm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenElm")
            .field("name", &self.shared.name)
            .field("availability", &self.shared.get())
            .finish_non_exhaustive()
    }
}

impl OpenElm {
    /// Loads the model in `dir` (blocking) and returns a ready engine.
    pub fn from_dir(dir: impl AsRef<Path>, opts: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let opts = with_default_name(opts, dir);
        let files = ModelFiles::from_dir(dir)?;
        Self::from_files(files, opts)
    }

    /// Loads the model from explicit files (blocking) and returns a ready engine.
    pub fn from_files(files: ModelFiles, opts: LoadOptions) -> Result<Self> {
        let opts = match opts.name {
            Some(_) => opts,
            None => with_default_name(opts, files.config.parent().unwrap_or(Path::new(""))),
        };
        let loaded = load_files(&files, &opts, |p| {
            if let Some(cb) = &opts.on_progress {
                (cb.0)(p);
            }
        })?;
        Ok(Self::from_model(
            loaded.model,
            (*loaded.tokenizer).clone(),
            opts,
        ))
    }

    /// Loads an OpenELM GGUF file (blocking) and returns a ready engine. The tokenizer is
    /// `tokenizer` (a `tokenizer.json`) when given, else the vocabulary the file carries; a
    /// file without one is an error that says to give a tokenizer.json. The weights keep the
    /// file's GGML types ([`LoadOptions::quantize`] does not apply).
    pub fn from_gguf(
        path: impl AsRef<Path>,
        tokenizer: Option<&Path>,
        opts: LoadOptions,
    ) -> Result<Self> {
        let path = path.as_ref();
        let opts = with_default_name(opts, &gguf_stem(path));
        let loaded = load_gguf(path, tokenizer, &opts, |p| {
            if let Some(cb) = &opts.on_progress {
                (cb.0)(p);
            }
        })?;
        Ok(Self::from_model(
            loaded.model,
            (*loaded.tokenizer).clone(),
            opts,
        ))
    }

    /// Like [`from_gguf`](Self::from_gguf), loading on the worker thread as
    /// [`spawn`](Self::spawn) does.
    pub fn spawn_gguf(path: impl AsRef<Path>, tokenizer: Option<&Path>, opts: LoadOptions) -> Self {
        let path = path.as_ref();
        let opts = with_default_name(opts, &gguf_stem(path));
        let engine = Self::unloaded(
            Source::Gguf(path.to_path_buf(), tokenizer.map(Path::to_path_buf)),
            opts,
        );
        engine.start_loading();
        engine
    }

    /// An engine around an already built model and tokenizer; ready at once.
    pub fn from_model(model: Model, tokenizer: Tokenizer, opts: LoadOptions) -> Self {
        let engine = Self::unloaded(
            Source::Loaded(Box::new(model), Arc::new(tokenizer)),
            with_default_name(opts, Path::new("")),
        );
        engine.start_loading();
        engine
    }

    /// An engine that loads `dir` on its worker thread; [`availability`](Backend::availability)
    /// reports `Loading { progress }`, then `Ready` or `Failed { reason }`.
    pub fn spawn(dir: impl AsRef<Path>, opts: LoadOptions) -> Self {
        let engine = Self::lazy(dir, opts);
        engine.start_loading();
        engine
    }

    /// Like [`spawn`](Self::spawn), from explicit files (as the `hub` module's `fetch` returns
    /// them).
    pub fn spawn_files(files: ModelFiles, opts: LoadOptions) -> Self {
        let opts = match opts.name {
            Some(_) => opts,
            None => with_default_name(opts, files.config.parent().unwrap_or(Path::new(""))),
        };
        let engine = Self::unloaded(Source::Files(files), opts);
        engine.start_loading();
        engine
    }

    /// An engine for `dir` that loads nothing until [`start_loading`](Self::start_loading);
    /// until then it reports `NotLoaded`. A directory without the model files reports
    /// `Failed` once loading starts.
    pub fn lazy(dir: impl AsRef<Path>, opts: LoadOptions) -> Self {
        let dir = dir.as_ref();
        let opts = with_default_name(opts, dir);
        Self::unloaded(Source::Dir(dir.to_path_buf()), opts)
    }

    fn unloaded(source: Source, opts: LoadOptions) -> Self {
        // At least one waiting slot: a zero-capacity channel is a rendezvous that would answer
        // busy whenever the worker is between two jobs.
        let (jobs, rx) = std::sync::mpsc::sync_channel(opts.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            name: opts.name.clone().unwrap_or_else(|| "openelm".into()),
            availability: Mutex::new(Availability::NotLoaded),
            tokenizer: OnceLock::new(),
            context: OnceLock::new(),
            bos: OnceLock::new(),
            generated: AtomicU64::new(0),
        });
        Self {
            shared,
            jobs,
            pending: Mutex::new(Some(Pending { source, rx })),
            opts,
        }
    }

    /// Starts loading on the worker thread, if not started yet. Returns at once.
    pub fn start_loading(&self) {
        let pending = match self.pending.lock() {
            Ok(mut g) => g.take(),
            Err(_) => None,
        };
        let Some(Pending { source, rx }) = pending else {
            return;
        };
        match &source {
            // Already in memory: ready before this returns.
            Source::Loaded(model, tokenizer) => publish(&self.shared, model, tokenizer),
            Source::Dir(_) | Source::Files(_) | Source::Gguf(..) => {
                self.shared.set(Availability::Loading { progress: 0.0 })
            }
        }
        let shared = Arc::clone(&self.shared);
        let opts = self.opts.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-worker", shared.name))
            .spawn(move || worker(source, opts, shared, rx));
        if let Err(e) = spawned {
            self.shared.set(Availability::Failed {
                reason: format!("cannot start the worker thread: {e}"),
            });
        }
    }

    /// Blocks the calling thread until loading has finished, then returns the availability
    /// (`Ready` or `Failed`). Not for async code; poll [`availability`](Backend::availability)
    /// there.
    pub fn wait_loaded(&self) -> Availability {
        loop {
            let a = self.shared.get();
            if !matches!(a, Availability::Loading { .. }) {
                return a;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The tokenizer, once loaded.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.shared.tokenizer.get().map(|t| t.as_ref())
    }

    /// Tokens generated by this engine since it started (all requests).
    pub fn generated_tokens(&self) -> u64 {
        self.shared.generated.load(Ordering::Relaxed)
    }

    /// Builds the prompt ids and settings for a request, checking the context.
    fn prepare(&self, request: &ChatRequest) -> elmroute_core::Result<Job> {
        let availability = self.shared.get();
        match &availability {
            Availability::Ready => {}
            Availability::NotLoaded => {
                return Err(elmroute_core::Error::not_ready(format!(
                    "{}: model not loaded; call start_loading()",
                    self.shared.name
                )));
            }
            Availability::Loading { progress } => {
                return Err(elmroute_core::Error::not_ready(format!(
                    "{}: loading ({:.0}%)",
                    self.shared.name,
                    progress * 100.0
                )));
            }
            Availability::Failed { reason } => {
                return Err(elmroute_core::Error::not_ready(format!(
                    "{}: {reason}",
                    self.shared.name
                )));
            }
            Availability::CoolingDown { .. } => {
                return Err(elmroute_core::Error::not_ready(format!(
                    "{}: cooling down",
                    self.shared.name
                )));
            }
        }
        let (Some(tokenizer), Some(&limit)) =
            (self.shared.tokenizer.get(), self.shared.context.get())
        else {
            return Err(elmroute_core::Error::not_ready("tokenizer not loaded"));
        };
        if request.messages.is_empty() {
            return Err(elmroute_core::Error::invalid_request("no messages"));
        }
        let text = self.opts.chat_template.render(&request.messages);
        let prompt = tokenizer.encode(&text, true)?;
        let mut cfg = self.opts.defaults.clone();
        cfg.truncate_left = cfg.truncate_left
            || self.opts.truncate_left
            || request.truncation == elmroute_core::Truncation::Left;
        if let Some(k) = request.top_k {
            cfg.top_k = Some(k as usize);
        }
        if let Some(penalty) = request.repeat_penalty {
            cfg.repeat_penalty = penalty;
        }
        if let Some(t) = request.temperature {
            cfg.temperature = t;
        }
        if let Some(p) = request.top_p {
            cfg.top_p = Some(p);
        }
        if let Some(seed) = request.seed {
            cfg.seed = seed;
        } else {
            cfg.seed = fresh_seed();
        }
        cfg.stop_strings.extend(request.stop.iter().cloned());
        cfg.stop_strings
            .extend(self.opts.chat_template.stop_strings());
        match request.max_tokens {
            Some(n) => cfg.max_new_tokens = n as usize,
            None if cfg.truncate_left => {
                // Left open and the prompt may be cut: keep the default answer length (leaving
                // room for at least BOS and one prompt token) and let fit_context cut the prompt.
                cfg.max_new_tokens = cfg.max_new_tokens.min(limit.saturating_sub(2).max(1));
            }
            None => {
                // Left open: fit what the context still holds, at least one token.
                let room = limit.saturating_sub(prompt.len()).max(1);
                cfg.max_new_tokens = cfg.max_new_tokens.min(room);
            }
        }
        cfg.validate()?;
        let bos = self.shared.bos.get().copied().flatten();
        let prompt = crate::generation::fit_context(
            &prompt,
            cfg.max_new_tokens,
            limit,
            cfg.truncate_left,
            bos,
        )?;
        let (tx, _) = unbounded();
        Ok(Job { prompt, cfg, tx })
    }
}

fn with_default_name(mut opts: LoadOptions, dir: &Path) -> LoadOptions {
    if opts.name.is_none() {
        let base = dir
            .file_name()
            .map(|s| s.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        opts.name = Some(if base.is_empty() {
            "openelm".to_string()
        } else if base.starts_with("openelm") {
            base
        } else {
            format!("openelm:{base}")
        });
    }
    opts
}

fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The file name without `.gguf`, for the default engine name.
fn gguf_stem(path: &Path) -> PathBuf {
    PathBuf::from(path.file_stem().unwrap_or_default())
}

fn load_with_progress(
    load: impl FnOnce(&mut dyn FnMut(f32)) -> Result<Loaded>,
    opts: &LoadOptions,
    shared: &Arc<Shared>,
) -> Result<Loaded> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        load(&mut |p| {
            shared.set(Availability::Loading { progress: p });
            if let Some(cb) = &opts.on_progress {
                (cb.0)(p);
            }
        })
    }))
    .unwrap_or_else(|payload| {
        let reason = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(Error::InvalidArgument(format!(
            "loading the model panicked: {reason}"
        )))
    })
}

/// Makes a loaded model's facts visible to the handle and marks the engine ready.
fn publish(shared: &Shared, model: &Model, tokenizer: &Arc<Tokenizer>) {
    let _ = shared.context.set(model.config().max_context_length);
    let _ = shared.bos.set(tokenizer.bos_id());
    let _ = shared.tokenizer.set(Arc::clone(tokenizer));
    shared.set(Availability::Ready);
}

fn worker(source: Source, opts: LoadOptions, shared: Arc<Shared>, rx: Receiver<Job>) {
    let loaded = match source {
        Source::Loaded(model, tokenizer) => Ok(Loaded {
            model: *model,
            tokenizer,
        }),
        Source::Dir(dir) => ModelFiles::from_dir(&dir)
            .and_then(|files| load_with_progress(|p| load_files(&files, &opts, p), &opts, &shared)),
        Source::Files(files) => {
            load_with_progress(|p| load_files(&files, &opts, p), &opts, &shared)
        }
        Source::Gguf(path, tokenizer) => load_with_progress(
            |p| load_gguf(&path, tokenizer.as_deref(), &opts, p),
            &opts,
            &shared,
        ),
    };
    let mut loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(engine = %shared.name, error = %e, "OpenELM failed to load");
            shared.set(Availability::Failed {
                reason: e.to_string(),
            });
            return;
        }
    };
    publish(&shared, &loaded.model, &loaded.tokenizer);
    tracing::debug!(engine = %shared.name, "OpenELM ready");

    for job in rx.iter() {
        if job.tx.is_closed() {
            continue;
        }
        let tx = job.tx.clone();
        let counter = &shared.generated;
        let started = std::time::Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            generate(
                &mut loaded.model,
                &loaded.tokenizer,
                &job.prompt,
                &job.cfg,
                |text| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    if tx.is_closed() {
                        return ControlFlow::Break(());
                    }
                    if !text.is_empty() && tx.unbounded_send(Ok(Chunk::Text(text.into()))).is_err()
                    {
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                },
            )
        }));
        let item = match result {
            Ok(Ok(g)) => {
                tracing::debug!(
                    engine = %shared.name,
                    prompt_tokens = g.usage.prompt_tokens,
                    completion_tokens = g.usage.completion_tokens,
                    finish_reason = ?g.finish_reason,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "OpenELM request done"
                );
                Ok(Chunk::Done {
                    usage: g.usage,
                    finish_reason: g.finish_reason,
                    model: shared.name.clone(),
                })
            }
            Ok(Err(e)) => Err(elmroute_core::Error::from(e)),
            Err(_) => {
                loaded.model.clear_kv_cache();
                Err(elmroute_core::Error::backend(
                    "the OpenELM worker panicked while generating",
                ))
            }
        };
        let _ = job.tx.unbounded_send(item);
    }
}

#[async_trait::async_trait]
impl Backend for OpenElm {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn availability(&self) -> Availability {
        self.shared.get()
    }

    fn context_window(&self) -> Option<usize> {
        self.shared.context.get().copied()
    }

    fn estimate_tokens(&self, text: &str) -> usize {
        // Exact when the tokenizer is loaded and the text is short enough to encode at once;
        // the byte heuristic otherwise (this is called on every routing decision).
        match self.shared.tokenizer.get() {
            Some(t) if text.len() <= 16 * 1024 => t
                .encode(text, false)
                .map(|ids| ids.len())
                .unwrap_or_else(|_| text.len().div_ceil(4)),
            _ => text.len().div_ceil(4),
        }
    }

    async fn complete(&self, request: &ChatRequest) -> elmroute_core::Result<Reply> {
        let mut stream = self.stream(request).await?;
        let mut text = String::new();
        while let Some(item) = stream.next().await {
            match item? {
                Chunk::Text(t) => text.push_str(&t),
                Chunk::Done {
                    usage,
                    finish_reason,
                    model,
                } => {
                    return Ok(Reply {
                        text,
                        usage,
                        finish_reason,
                        model,
                    });
                }
            }
        }
        Err(elmroute_core::Error::backend(
            "the OpenELM worker stopped before finishing the answer",
        ))
    }

    async fn stream(&self, request: &ChatRequest) -> elmroute_core::Result<ChunkStream> {
        let mut job = self.prepare(request)?;
        let (tx, rx) = unbounded();
        job.tx = tx;
        match self.jobs.try_send(job) {
            Ok(()) => Ok(Box::pin(rx)),
            Err(TrySendError::Full(_)) => Err(elmroute_core::Error::busy(format!(
                "{}: {} requests already waiting",
                self.shared.name, self.opts.queue_capacity
            ))),
            Err(TrySendError::Disconnected(_)) => Err(elmroute_core::Error::not_ready(format!(
                "{}: the worker thread has stopped",
                self.shared.name
            ))),
        }
    }
}
