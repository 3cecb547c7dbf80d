//! The errors of this crate, each naming the file, tensor or field at fault.

use std::path::PathBuf;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while loading or running an OpenELM model.
///
/// Load errors name the file and, where it applies, the tensor or config field together with
/// what was expected and what was found. Converting into [`elmroute_core::Error`] keeps the
/// message and maps context overflows and bad settings to their typed core kinds.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON or not an OpenELM config.
    #[error("config {}: {detail}", path.display())]
    Config {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// What is wrong, naming the field.
        detail: String,
    },
    /// A tensor's shape does not match the config.
    #[error(
        "{}: tensor `{name}` has shape {found:?}, but the config expects {expected:?}",
        file.display()
    )]
    TensorShape {
        /// The checkpoint file holding the tensor.
        file: PathBuf,
        /// The tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored with a dtype other than f32, f16 or bf16.
    #[error("{}: tensor `{name}` is stored as {found}, expected f32, f16 or bf16", file.display())]
    TensorDtype {
        /// The checkpoint file holding the tensor.
        file: PathBuf,
        /// The tensor name.
        name: String,
        /// The stored dtype.
        found: String,
    },
    /// A tensor the config requires is in no checkpoint file.
    #[error("tensor `{name}` (shape {expected:?}) is missing from {files}")]
    MissingTensor {
        /// The tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The checkpoint files searched.
        files: String,
    },
    /// A checkpoint holds a tensor the config has no place for.
    #[error("{}: unexpected tensor `{name}` (shape {found:?}) that the config has no place for", file.display())]
    UnexpectedTensor {
        /// The checkpoint file holding the tensor.
        file: PathBuf,
        /// The tensor name.
        name: String,
        /// Its stored shape.
        found: Vec<usize>,
    },
    /// A file is not a readable safetensors file (truncated, corrupt header).
    #[error("{}: not a valid safetensors file: {detail}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        detail: String,
    },
    /// A GGUF file is unreadable (truncated, corrupt) or does not describe an OpenELM model;
    /// the detail names the metadata key or tensor and what was expected.
    #[error("GGUF {}: {detail}", path.display())]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A matrix could not be quantized to the requested type.
    #[error("cannot quantize tensor `{name}` to {dtype}: {detail}")]
    Quantization {
        /// The tensor name.
        name: String,
        /// The requested GGML type.
        dtype: String,
        /// What candle reported.
        detail: String,
    },
    /// The shard index JSON is malformed or names missing files.
    #[error("shard index {}: {detail}", path.display())]
    ShardIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The model directory lacks a required file.
    #[error("{}: {detail}", dir.display())]
    MissingFile {
        /// The directory searched.
        dir: PathBuf,
        /// Which file is missing and what was looked for.
        detail: String,
    },
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer{}: {detail}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Tokenizer {
        /// The tokenizer file, when known.
        path: Option<PathBuf>,
        /// What went wrong.
        detail: String,
    },
    /// A token id is outside the model's vocabulary.
    #[error("token id {token} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The token id.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The sequence does not fit the model's context.
    #[error(
        "request needs {needed} tokens but the model's context holds {limit}; shorten it or allow left truncation"
    )]
    ContextOverflow {
        /// Tokens needed (prompt plus tokens to generate).
        needed: usize,
        /// The model's context length.
        limit: usize,
    },
    /// Generation settings or a call's arguments are out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The model produced NaN or infinite logits: the run dtype overflowed (f16 does on the
    /// larger OpenELM models) or the weights are corrupt.
    #[error(
        "the model produced non-finite logits running in {dtype}; f16 overflows on the larger OpenELM models (use bf16 or f32), otherwise the weights are corrupt"
    )]
    NonFiniteLogits {
        /// The run dtype.
        dtype: String,
    },
    /// A tensor operation failed.
    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The model worker thread has stopped.
    #[error("the model worker thread has stopped")]
    WorkerStopped,
    /// The Hugging Face hub could not provide the model.
    #[cfg(feature = "hub")]
    #[error(
        "cannot get `{model_id}` from the Hugging Face hub ({detail}); no complete copy is in the cache at {}. \
         Download the model elsewhere and point at its directory instead \
         (OpenElm::from_dir(\"path/to/{model_id}\", LoadOptions::default())), or set HF_HOME to a cache that holds it",
        cache_dir.display()
    )]
    Hub {
        /// The model repository id.
        model_id: String,
        /// The cache directory searched.
        cache_dir: PathBuf,
        /// What the hub client reported.
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn tokenizer(path: Option<PathBuf>, detail: impl std::fmt::Display) -> Self {
        Self::Tokenizer {
            path,
            detail: detail.to_string(),
        }
    }

    /// Whether the request did not fit the model's context.
    pub fn is_context_overflow(&self) -> bool {
        matches!(self, Error::ContextOverflow { .. })
    }
}

impl From<Error> for elmroute_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::ContextOverflow { needed, limit } => {
                elmroute_core::Error::context_overflow(needed, limit)
            }
            Error::InvalidArgument(_) | Error::TokenOutOfRange { .. } => {
                elmroute_core::Error::invalid_request(e.to_string())
            }
            other => elmroute_core::Error::backend(other.to_string()).with_source(other),
        }
    }
}
