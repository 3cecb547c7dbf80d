//! Finding a model in the local Hugging Face cache, or downloading it with progress
//! (feature `hub`).
//!
//! This is deliberately outside the engine's load path: the engine only ever reads local
//! files ([`ModelFiles`]), so an app that ships its own weights never touches the network.
//! OpenELM repositories carry no tokenizer (Apple points at Llama-2's), so the tokenizer comes
//! from a second, configurable repository.

use std::path::PathBuf;

use hf_hub::api::Progress;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::engine::ModelFiles;
use crate::error::{Error, Result};
use crate::weights::{SHARD_INDEX, SINGLE_FILE};

/// An ungated copy of Llama-2's `tokenizer.json` (the same file as meta-llama's).
pub const DEFAULT_TOKENIZER_REPO: &str = "hf-internal-testing/llama-tokenizer";

/// Where to look and what to fetch.
#[derive(Debug, Clone)]
#[must_use]
pub struct HubOptions {
    /// Model revision (branch, tag or commit). Default `main`.
    pub revision: String,
    /// Cache directory; default the Hugging Face cache (`HF_HOME`, else
    /// `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Repository that holds `tokenizer.json`. Default [`DEFAULT_TOKENIZER_REPO`].
    pub tokenizer_repo: String,
    /// Hub endpoint (a mirror); default `HF_ENDPOINT` from the environment, else the public
    /// hub.
    pub endpoint: Option<String>,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            revision: "main".into(),
            cache_dir: None,
            tokenizer_repo: DEFAULT_TOKENIZER_REPO.into(),
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
        }
    }
}

/// Download progress of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubProgress {
    /// The file being fetched.
    pub file: String,
    /// Bytes received so far.
    pub done: usize,
    /// Its size in bytes.
    pub total: usize,
}

fn cache(opts: &HubOptions) -> Cache {
    match &opts.cache_dir {
        Some(dir) => Cache::new(dir.clone()),
        None => Cache::from_env(),
    }
}

fn model_repo(model_id: &str, opts: &HubOptions) -> Repo {
    Repo::with_revision(model_id.to_string(), RepoType::Model, opts.revision.clone())
}

/// The model's files if the cache already holds all of them; no network access.
pub fn cached(model_id: &str, opts: &HubOptions) -> Option<ModelFiles> {
    let cache = cache(opts);
    let repo = cache.repo(model_repo(model_id, opts));
    let config = repo.get("config.json")?;
    let weights = match repo.get(SINGLE_FILE) {
        Some(single) => vec![single],
        None => {
            let index = repo.get(SHARD_INDEX)?;
            let files = crate::weights::Checkpoint::files_from_index(&index).ok()?;
            // files_from_index checks that each shard exists next to the index.
            files
        }
    };
    let tokenizer = repo.get("tokenizer.json").or_else(|| {
        cache
            .repo(Repo::model(opts.tokenizer_repo.clone()))
            .get("tokenizer.json")
    })?;
    Some(ModelFiles {
        config,
        weights,
        tokenizer,
    })
}

struct Reporter<'a, F: FnMut(HubProgress)> {
    file: String,
    done: usize,
    total: usize,
    callback: &'a mut F,
}

impl<F: FnMut(HubProgress)> Progress for Reporter<'_, F> {
    fn init(&mut self, size: usize, filename: &str) {
        self.file = filename.to_string();
        self.total = size;
        self.done = 0;
        (self.callback)(HubProgress {
            file: self.file.clone(),
            done: 0,
            total: size,
        });
    }

    fn update(&mut self, size: usize) {
        self.done += size;
        (self.callback)(HubProgress {
            file: self.file.clone(),
            done: self.done,
            total: self.total,
        });
    }

    fn finish(&mut self) {}
}

/// The model's files from the cache, downloading what is missing and reporting progress.
///
/// When the hub cannot be reached the error names the model id, the cache directory and how
/// to point at a local directory instead.
pub fn fetch(
    model_id: &str,
    opts: &HubOptions,
    mut progress: impl FnMut(HubProgress),
) -> Result<ModelFiles> {
    if let Some(files) = cached(model_id, opts) {
        return Ok(files);
    }
    let cache = cache(opts);
    let hub_err = |detail: String| Error::Hub {
        model_id: model_id.to_string(),
        cache_dir: cache.path().clone(),
        detail,
    };
    let mut builder = ApiBuilder::from_cache(cache.clone()).with_progress(false);
    if let Some(endpoint) = &opts.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| hub_err(e.to_string()))?;
    let repo = api.repo(model_repo(model_id, opts));
    let cached_model = cache.repo(model_repo(model_id, opts));
    let cached_tokenizer = cache.repo(Repo::model(opts.tokenizer_repo.clone()));
    let mut get = |repo: &hf_hub::api::sync::ApiRepo, name: &str| {
        // A file already in the cache (from an earlier, partial fetch or another tool) is
        // not downloaded again.
        if let Some(p) = cached_model.get(name).or_else(|| {
            (name == "tokenizer.json")
                .then(|| cached_tokenizer.get(name))
                .flatten()
        }) {
            return Ok(p);
        }
        repo.download_with_progress(
            name,
            Reporter {
                file: name.to_string(),
                done: 0,
                total: 0,
                callback: &mut progress,
            },
        )
        .map_err(|e| hub_err(format!("{name}: {e}")))
    };
    let config = get(&repo, "config.json")?;
    let weights = match get(&repo, SINGLE_FILE) {
        Ok(p) => vec![p],
        Err(single_err) => {
            let index = get(&repo, SHARD_INDEX).map_err(|_| single_err)?;
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let parsed: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::ShardIndex {
                    path: index.clone(),
                    detail: e.to_string(),
                })?;
            let mut names: Vec<String> = parsed
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names.dedup();
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                out.push(get(&repo, &name)?);
            }
            out
        }
    };
    let tokenizer = match get(&repo, "tokenizer.json") {
        Ok(p) => p,
        Err(_) => get(&api.model(opts.tokenizer_repo.clone()), "tokenizer.json")?,
    };
    Ok(ModelFiles {
        config,
        weights,
        tokenizer,
    })
}
