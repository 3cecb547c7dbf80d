//! OpenELM GGUF files as llama.cpp writes them: the config from `openelm.*` metadata, the
//! tensors mapped onto the Hugging Face layout, and the tokenizer from `tokenizer.ggml.*`.
//!
//! llama.cpp's converter keeps OpenELM's tensors as they are, with two changes: names
//! (`blk.N.attn_qkv` for `transformer.layers.N.attn.qkv_proj`, ...) and the FFN input
//! projection split into `ffn_gate` (the first half of `proj_1`) and `ffn_up` (the second).
//! Nothing is permuted: OpenELM's RoPE is the rotate-half kind in both. The two halves are
//! joined again here, so the model sees one `proj_1` whatever the file.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::source::{Weight, WeightSource};
use crate::tokenizer::Tokenizer;

/// The architecture name OpenELM GGUF files carry in `general.architecture`.
pub const GGUF_ARCHITECTURE: &str = "openelm";

/// An opened GGUF file: its header (metadata and tensor table) read and checked; tensor data
/// is read when the model is loaded.
#[derive(Debug)]
pub struct Gguf {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl Gguf {
    /// Opens `path` and reads its header. A truncated or corrupt file fails here, naming it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| Error::Gguf {
            path: path.to_path_buf(),
            detail: format!("not a readable GGUF file: {e}"),
        })?;
        let gguf = Self {
            path: path.to_path_buf(),
            content,
            reader,
        };
        let arch = gguf.string("general.architecture")?;
        if arch != GGUF_ARCHITECTURE {
            return Err(gguf.err(format!(
                "`general.architecture` is `{arch}`, expected `{GGUF_ARCHITECTURE}`"
            )));
        }
        Ok(gguf)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGML type of a tensor (GGUF name, such as `blk.0.attn_qkv.weight`), if present.
    pub fn tensor_type(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|t| t.ggml_dtype)
    }

    fn err(&self, detail: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))
    }

    fn string(&self, key: &str) -> Result<String> {
        match self.value(key)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.err(format!(
                "metadata key `{key}` is a {:?}, expected a string",
                other.value_type()
            ))),
        }
    }

    fn usize_of(&self, key: &str, v: &Value) -> Result<usize> {
        let n: Option<i128> = match v {
            Value::U8(x) => Some(i128::from(*x)),
            Value::I8(x) => Some(i128::from(*x)),
            Value::U16(x) => Some(i128::from(*x)),
            Value::I16(x) => Some(i128::from(*x)),
            Value::U32(x) => Some(i128::from(*x)),
            Value::I32(x) => Some(i128::from(*x)),
            Value::U64(x) => Some(i128::from(*x)),
            Value::I64(x) => Some(i128::from(*x)),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
            self.err(format!(
                "metadata key `{key}` holds {v:?}, expected a non-negative integer"
            ))
        })
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.value(key)?;
        self.usize_of(key, v)
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(other) => Err(self.err(format!(
                "metadata key `{key}` is a {:?}, expected a float",
                other.value_type()
            ))),
        }
    }

    /// A per-layer list (one integer per layer), or one integer for every layer.
    fn per_layer(&self, key: &str, layers: usize) -> Result<Vec<usize>> {
        match self.value(key)? {
            Value::Array(items) => {
                if items.len() != layers {
                    return Err(self.err(format!(
                        "metadata key `{key}` has {} entries, expected one per layer ({layers})",
                        items.len()
                    )));
                }
                items.iter().map(|v| self.usize_of(key, v)).collect()
            }
            v => Ok(vec![self.usize_of(key, v)?; layers]),
        }
    }

    fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.dims().to_vec())
    }

    /// The model configuration the metadata and tensor table describe.
    pub fn config(&self) -> Result<Config> {
        let a = GGUF_ARCHITECTURE;
        let layers = self.usize(&format!("{a}.block_count"))?;
        if layers == 0 {
            return Err(self.err(format!("`{a}.block_count` is 0")));
        }
        let model_dim = self.usize(&format!("{a}.embedding_length"))?;
        let head_dim = match self
            .content
            .metadata
            .get(&format!("{a}.attention.key_length"))
        {
            Some(v) => self.usize_of(&format!("{a}.attention.key_length"), v)?,
            None => self.usize(&format!("{a}.rope.dimension_count"))?,
        };
        let q_heads = self.per_layer(&format!("{a}.attention.head_count"), layers)?;
        let kv_heads = self.per_layer(&format!("{a}.attention.head_count_kv"), layers)?;
        let ffn_dims = self.per_layer(&format!("{a}.feed_forward_length"), layers)?;
        let context = self.usize(&format!("{a}.context_length"))?;
        let rope = self
            .float(&format!("{a}.rope.freq_base"))?
            .unwrap_or(10_000.0);
        let eps = self
            .float(&format!("{a}.attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6);
        let vocab_size = match self.tensor_dims("token_embd.weight") {
            Some(d) if d.len() == 2 => d[0],
            Some(d) => {
                return Err(self.err(format!(
                    "tensor `token_embd.weight` has shape {d:?}, expected [vocab, {model_dim}]"
                )));
            }
            None => {
                return Err(self.err("tensor `token_embd.weight` is missing"));
            }
        };
        let token_id = |key: &str| -> Result<Option<u32>> {
            match self.content.metadata.get(key) {
                None => Ok(None),
                Some(v) => Ok(u32::try_from(self.usize_of(key, v)?).ok()),
            }
        };
        let config = Config {
            vocab_size,
            model_dim,
            head_dim,
            num_layers: layers,
            ffn_multipliers: ffn_dims
                .iter()
                .map(|&f| f as f64 / model_dim.max(1) as f64)
                .collect(),
            ffn_dims,
            num_query_heads: q_heads,
            num_kv_heads: kv_heads,
            ffn_dim_divisor: 1,
            max_context_length: context,
            rope_freq_constant: rope,
            rms_norm_eps: eps,
            share_input_output_layers: !self.content.tensor_infos.contains_key("output.weight"),
            normalize_qk_projections: self
                .content
                .tensor_infos
                .contains_key("blk.0.attn_q_norm.weight"),
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?.or(Some(1)),
            eos_token_id: token_id("tokenizer.ggml.eos_token_id")?.or(Some(2)),
        };
        config
            .check()
            .map_err(|detail| self.err(format!("the `{a}.*` metadata: {detail}")))?;
        Ok(config)
    }

    /// Checks that every tensor `config` needs is present with the right shape (header only).
    fn validate(&self, config: &Config) -> Result<()> {
        for (name, shape) in config.expected_tensors() {
            for (gguf_name, want) in gguf_parts(&name, &shape) {
                match self.tensor_dims(&gguf_name) {
                    None => {
                        return Err(Error::MissingTensor {
                            name: gguf_name,
                            expected: want,
                            files: self.path.display().to_string(),
                        });
                    }
                    Some(found) if found != want => {
                        return Err(Error::TensorShape {
                            file: self.path.clone(),
                            name: gguf_name,
                            expected: want,
                            found,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    fn read(&mut self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| Error::Gguf {
                path: self.path.clone(),
                detail: format!("tensor `{name}`: {e}"),
            })
    }

    /// The tokenizer the file carries (`tokenizer.ggml.*`, a Llama SentencePiece vocabulary),
    /// or `None` when it carries none.
    pub fn tokenizer(&self) -> Result<Option<Tokenizer>> {
        if !self.content.metadata.contains_key("tokenizer.ggml.tokens") {
            return Ok(None);
        }
        let model = self.string("tokenizer.ggml.model")?;
        if model != "llama" {
            return Err(self.err(format!(
                "`tokenizer.ggml.model` is `{model}`; only the Llama SentencePiece vocabulary \
                 (`llama`) is read from GGUF, give a tokenizer.json instead"
            )));
        }
        let tokens: Vec<String> = match self.value("tokenizer.ggml.tokens")? {
            Value::Array(v) => v
                .iter()
                .map(|t| match t {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.err(format!(
                        "`tokenizer.ggml.tokens` holds a {:?}, expected strings",
                        other.value_type()
                    ))),
                })
                .collect::<Result<_>>()?,
            _ => return Err(self.err("`tokenizer.ggml.tokens` is not an array")),
        };
        let list = |key: &str| -> Result<Option<&Vec<Value>>> {
            match self.content.metadata.get(key) {
                None => Ok(None),
                Some(Value::Array(v)) if v.len() == tokens.len() => Ok(Some(v)),
                Some(_) => Err(self.err(format!(
                    "`{key}` is not an array of {} entries (one per token)",
                    tokens.len()
                ))),
            }
        };
        let scores: Vec<f32> = match list("tokenizer.ggml.scores")? {
            Some(v) => v
                .iter()
                .map(|s| match s {
                    Value::F32(x) => Ok(*x),
                    _ => Err(self.err("`tokenizer.ggml.scores` holds a non-f32 value")),
                })
                .collect::<Result<_>>()?,
            None => return Err(self.err("metadata key `tokenizer.ggml.scores` is missing")),
        };
        let types: Vec<i64> = match list("tokenizer.ggml.token_type")? {
            Some(v) => v
                .iter()
                .map(|t| {
                    self.usize_of("tokenizer.ggml.token_type", t)
                        .map(|n| n as i64)
                })
                .collect::<Result<_>>()?,
            None => vec![1; tokens.len()],
        };
        let unk = match self.content.metadata.get("tokenizer.ggml.unknown_token_id") {
            Some(v) => self.usize_of("tokenizer.ggml.unknown_token_id", v)?,
            None => 0,
        };
        let json = crate::tokenizer::spm_tokenizer_json(&tokens, &scores, &types, unk);
        let tok = Tokenizer::from_bytes(json.as_bytes()).map_err(|e| {
            self.err(format!(
                "the `tokenizer.ggml.*` vocabulary does not make a tokenizer: {e}"
            ))
        })?;
        Ok(Some(tok))
    }

    /// The tokenizer the file carries, or an error that names the file to give instead.
    pub fn require_tokenizer(&self) -> Result<Tokenizer> {
        self.tokenizer()?.ok_or_else(|| Error::MissingFile {
            dir: self.path.clone(),
            detail: "the GGUF file carries no `tokenizer.ggml.*` vocabulary; give a \
                     tokenizer.json (Llama-2's, for OpenELM)"
                .into(),
        })
    }

    /// Loads the model: weights stay in the file's GGML types (block-quantized matrices as
    /// they are; float ones converted to `dtype`, which is also the activation dtype).
    pub fn load_model(
        &mut self,
        dtype: DType,
        device: &Device,
        progress: impl FnMut(f32),
    ) -> Result<Model> {
        let config = self.config()?;
        self.validate(&config)?;
        let mut source = GgufSource {
            gguf: self,
            device: device.clone(),
        };
        Model::build(&config, &mut source, dtype, device, progress)
    }
}

/// The GGUF tensors that make up a Hugging Face tensor, with their shapes.
fn gguf_parts(hf: &str, shape: &[usize]) -> Vec<(String, Vec<usize>)> {
    let one = |n: String| vec![(n, shape.to_vec())];
    match hf {
        "transformer.token_embeddings.weight" => return one("token_embd.weight".into()),
        "transformer.norm.weight" => return one("output_norm.weight".into()),
        "lm_head.weight" => return one("output.weight".into()),
        _ => {}
    }
    let Some(rest) = hf.strip_prefix("transformer.layers.") else {
        return one(hf.to_string());
    };
    let Some((i, suffix)) = rest.split_once('.') else {
        return one(hf.to_string());
    };
    let blk = |n: &str| format!("blk.{i}.{n}.weight");
    match suffix {
        "attn_norm.weight" => one(blk("attn_norm")),
        "attn.qkv_proj.weight" => one(blk("attn_qkv")),
        "attn.q_norm.weight" => one(blk("attn_q_norm")),
        "attn.k_norm.weight" => one(blk("attn_k_norm")),
        "attn.out_proj.weight" => one(blk("attn_output")),
        "ffn_norm.weight" => one(blk("ffn_norm")),
        "ffn.proj_2.weight" => one(blk("ffn_down")),
        "ffn.proj_1.weight" => {
            let (rows, cols) = (
                shape.first().copied().unwrap_or(0) / 2,
                shape.get(1).copied().unwrap_or(0),
            );
            vec![
                (blk("ffn_gate"), vec![rows, cols]),
                (blk("ffn_up"), vec![rows, cols]),
            ]
        }
        _ => one(hf.to_string()),
    }
}

struct GgufSource<'a> {
    gguf: &'a mut Gguf,
    device: Device,
}

fn is_float(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

impl GgufSource<'_> {
    fn dense(&self, q: &QTensor, dtype: DType) -> Result<Tensor> {
        Ok(q.dequantize(&self.device)?.to_dtype(dtype)?)
    }

    fn on_device(&self, q: QTensor) -> Result<Arc<QTensor>> {
        if self.device.is_cpu() {
            return Ok(Arc::new(q));
        }
        let data = q.data()?;
        let storage = QStorage::from_data(data, &self.device, q.dtype())?;
        Ok(Arc::new(QTensor::new(storage, q.shape().clone())?))
    }
}

impl WeightSource for GgufSource<'_> {
    fn vector(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let parts = gguf_parts(name, shape);
        let Some((gguf_name, _)) = parts.first() else {
            return Err(Error::InvalidArgument(format!(
                "no GGUF tensor for `{name}`"
            )));
        };
        let q = self.gguf.read(gguf_name)?;
        self.dense(&q, dtype)
    }

    fn matrix(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Weight> {
        let parts = gguf_parts(name, shape);
        let mut tensors = Vec::with_capacity(parts.len());
        for (gguf_name, _) in &parts {
            tensors.push(self.gguf.read(gguf_name)?);
        }
        let first_type = tensors.first().map(|t| t.dtype());
        let same_type = tensors.iter().all(|t| Some(t.dtype()) == first_type);
        match (tensors.len(), first_type) {
            (1, Some(t)) if !is_float(t) => {
                let q = tensors.pop().ok_or_else(|| {
                    Error::InvalidArgument(format!("no GGUF tensor for `{name}`"))
                })?;
                Ok(Weight::Quantized(self.on_device(q)?))
            }
            (_, Some(t)) if same_type && !is_float(t) => {
                // Rows are whole blocks, so stacking the halves is concatenating their bytes.
                let mut bytes = Vec::new();
                for q in &tensors {
                    bytes.extend_from_slice(&q.data()?);
                }
                let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &self.device, t)?;
                Ok(Weight::Quantized(Arc::new(QTensor::new(
                    storage,
                    shape.to_vec(),
                )?)))
            }
            _ => {
                // Float halves, or halves of different block types: join them in `dtype`.
                let dense = tensors
                    .iter()
                    .map(|q| self.dense(q, dtype))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Weight::Dense(Tensor::cat(&dense, 0)?))
            }
        }
    }

    fn describe(&self) -> String {
        self.gguf.path.display().to_string()
    }
}
