//! Checkpoints: memory-mapped safetensors, one file or shards with an index, validated against
//! the config before any tensor is allocated.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::config::Config;
use crate::error::{Error, Result};

/// The single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index name.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// One memory-mapped safetensors file.
#[derive(Debug)]
struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this process. Another process truncating
        // or rewriting the checkpoint while it is mapped could change the bytes under us;
        // that is the documented contract of every mmap-based loader (candle, safetensors) and
        // the reason loading copies each tensor out of the map right away.
        #[allow(unsafe_code)]
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let shard = Self {
            path: path.to_path_buf(),
            mmap,
        };
        // Parse the header now so that a truncated or corrupt file fails at open, naming it.
        shard.tensors()?;
        Ok(shard)
    }

    fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap).map_err(|e| Error::Safetensors {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }
}

/// What a checkpoint says about one tensor, read from the header without touching its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The file that holds it.
    pub file: PathBuf,
    /// Stored dtype.
    pub dtype: DType,
    /// Stored shape.
    pub shape: Vec<usize>,
}

#[derive(Debug, Deserialize)]
struct ShardIndexJson {
    weight_map: HashMap<String, String>,
}

/// A safetensors checkpoint: one file or several shards, memory-mapped.
#[derive(Debug)]
pub struct Checkpoint {
    shards: Vec<Shard>,
    /// tensor name -> shard index
    names: HashMap<String, usize>,
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`: `model.safetensors`, or the shards listed by
    /// `model.safetensors.index.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let files = Self::files_in(dir)?;
        Self::open(&files)
    }

    /// The safetensors files of the checkpoint in `dir`.
    pub fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
        // Like transformers, a single file wins over an index (a stale index next to a
        // complete file is common after re-saving).
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join(SHARD_INDEX);
        if index.is_file() {
            return Self::files_from_index(&index);
        }
        Err(Error::MissingFile {
            dir: dir.to_path_buf(),
            detail: format!("no `{SINGLE_FILE}` and no `{SHARD_INDEX}`"),
        })
    }

    /// The shard files a `model.safetensors.index.json` names, in first-seen order.
    pub fn files_from_index(index: &Path) -> Result<Vec<PathBuf>> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let parsed: ShardIndexJson =
            serde_json::from_str(&text).map_err(|e| Error::ShardIndex {
                path: index.to_path_buf(),
                detail: e.to_string(),
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let unique: BTreeSet<&String> = parsed.weight_map.values().collect();
        if unique.is_empty() {
            return Err(Error::ShardIndex {
                path: index.to_path_buf(),
                detail: "`weight_map` is empty".into(),
            });
        }
        let mut files = Vec::with_capacity(unique.len());
        for name in unique {
            let file = dir.join(name);
            if !file.is_file() {
                return Err(Error::ShardIndex {
                    path: index.to_path_buf(),
                    detail: format!("shard `{name}` listed in `weight_map` does not exist"),
                });
            }
            files.push(file);
        }
        Ok(files)
    }

    /// Maps the given safetensors files.
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut names = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let shard = Shard::open(path)?;
            for name in shard.tensors()?.names() {
                if let Some(prev) = names.insert(name.to_string(), i) {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        detail: format!(
                            "tensor `{name}` also appears in {}",
                            files[prev].display()
                        ),
                    });
                }
            }
            shards.push(shard);
        }
        Ok(Self { shards, names })
    }

    /// The files of this checkpoint.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// Header facts about a tensor, if the checkpoint holds it.
    pub fn info(&self, name: &str) -> Result<Option<TensorInfo>> {
        let Some(&i) = self.names.get(name) else {
            return Ok(None);
        };
        let shard = &self.shards[i];
        let view = shard
            .tensors()?
            .tensor(name)
            .map_err(|e| Error::Safetensors {
                path: shard.path.clone(),
                detail: e.to_string(),
            })?;
        let dtype = stored_dtype(view.dtype(), &shard.path, name)?;
        Ok(Some(TensorInfo {
            file: shard.path.clone(),
            dtype,
            shape: view.shape().to_vec(),
        }))
    }

    /// Checks every tensor's presence, dtype and shape against `config`, and that the
    /// checkpoint holds nothing else. Touches headers only.
    pub fn validate(&self, config: &Config) -> Result<()> {
        let expected = config.expected_tensors();
        let files = || {
            self.files()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (name, shape) in &expected {
            match self.info(name)? {
                None => {
                    return Err(Error::MissingTensor {
                        name: name.clone(),
                        expected: shape.clone(),
                        files: files(),
                    });
                }
                Some(info) if &info.shape != shape => {
                    return Err(Error::TensorShape {
                        file: info.file,
                        name: name.clone(),
                        expected: shape.clone(),
                        found: info.shape,
                    });
                }
                Some(_) => {}
            }
        }
        if self.names.len() > expected.len() {
            let known: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
            let mut extra: Vec<&String> = self
                .names
                .keys()
                .filter(|n| !known.contains(n.as_str()))
                .collect();
            extra.sort();
            for name in extra {
                let Some(shard) = self.names.get(name).and_then(|&i| self.shards.get(i)) else {
                    continue;
                };
                let found = shard
                    .tensors()?
                    .tensor(name)
                    .map(|v| v.shape().to_vec())
                    .unwrap_or_default();
                if harmless_extra(name, &found, config) {
                    tracing::warn!(tensor = %name, "ignoring a tensor the model computes itself");
                    continue;
                }
                return Err(Error::UnexpectedTensor {
                    file: shard.path.clone(),
                    name: name.clone(),
                    found,
                });
            }
        }
        Ok(())
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.mmap.len()).sum()
    }

    /// Copies one tensor out of the map onto `device`, converted to `dtype`.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let Some(&i) = self.names.get(name) else {
            return Err(Error::MissingTensor {
                name: name.to_string(),
                expected: Vec::new(),
                files: self
                    .files()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let shard = &self.shards[i];
        let st_err = |e: safetensors::SafeTensorError| Error::Safetensors {
            path: shard.path.clone(),
            detail: e.to_string(),
        };
        let view = shard.tensors()?.tensor(name).map_err(st_err)?;
        let stored = stored_dtype(view.dtype(), &shard.path, name)?;
        let t = Tensor::from_raw_buffer(view.data(), stored, view.shape(), device)?;
        Ok(if stored == dtype {
            t
        } else {
            t.to_dtype(dtype)?
        })
    }

    /// Validates against `config`, then loads every tensor the config names, reporting the
    /// fraction of bytes loaded (0..=1) after each tensor.
    pub fn load_all(
        &self,
        config: &Config,
        dtype: DType,
        device: &Device,
        mut progress: impl FnMut(f32),
    ) -> Result<HashMap<String, Tensor>> {
        self.validate(config)?;
        let expected = config.expected_tensors();
        let total: usize = expected
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum::<usize>()
            .max(1);
        let mut done = 0usize;
        let mut out = HashMap::with_capacity(expected.len());
        for (name, shape) in expected {
            let t = self.load(&name, dtype, device)?;
            done += shape.iter().product::<usize>();
            progress(done as f32 / total as f32);
            out.insert(name, t);
        }
        Ok(out)
    }
}

/// The candle dtype of a stored tensor: f32, f16 or bf16, anything else an error naming the
/// file and the tensor.
fn stored_dtype(dtype: safetensors::Dtype, file: &Path, name: &str) -> Result<DType> {
    match dtype {
        safetensors::Dtype::F32 => Ok(DType::F32),
        safetensors::Dtype::F16 => Ok(DType::F16),
        safetensors::Dtype::BF16 => Ok(DType::BF16),
        other => Err(Error::TensorDtype {
            file: file.to_path_buf(),
            name: name.to_string(),
            found: format!("{other:?}"),
        }),
    }
}

/// Tensors some exports carry that the model computes itself or shares: rotary tables and
/// masks, and an `lm_head.weight` copy of the tied embeddings. Anything else unexpected is
/// an error, since it means the config does not describe the checkpoint.
fn harmless_extra(name: &str, shape: &[usize], config: &Config) -> bool {
    let buffer = name.ends_with(".inv_freq")
        || name.contains("rotary")
        || name.ends_with("causal_mask")
        || name.ends_with(".masked_bias");
    let tied_head = name == "lm_head.weight" && shape == [config.vocab_size, config.model_dim];
    buffer || tied_head
}
