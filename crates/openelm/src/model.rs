//! The OpenELM transformer: layer-wise scaled attention and FFN, QK-norm, RoPE and a KV cache.

use std::collections::HashMap;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use candle_core::quantized::GgmlDType;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::helper::DecodeHelpers;
use crate::kv_cache::KvCache;
use crate::qmatvec::{BlockMatMul, BlockMatrix};
use crate::source::{SafetensorsSource, TensorMap, Weight, WeightSource};
use crate::weights::Checkpoint;

/// The KV cache grows in steps of this many positions.
const KV_CACHE_STEP: usize = 256;

/// Positions per pass through the layers of a long prompt whose last position alone is
/// needed (see [`Model::forward_last`]): the activations of a pass, not of the whole
/// prompt, take memory.
const PROMPT_CHUNK: usize = 128;

/// A linear layer `y = x W^T`, dense or quantized.
///
/// Every projection of the model goes through this type, so quantized weights (candle's
/// [`QTensor`], as read from GGUF files) replace the dense ones without a second copy of
/// the model or a second code path in the layers.
#[derive(Debug, Clone)]
pub enum Linear {
    /// A dense `[out, in]` weight in the run dtype.
    Dense(Tensor),
    /// A quantized weight, multiplied by candle's quantized matmul.
    Quantized(QMatMul),
    /// A Q8_0 or Q4_0 weight on the CPU, multiplied by this crate's block kernels (8-bit
    /// activations, integer dot products, all threads).
    Blocks(std::sync::Arc<BlockMatrix>),
}

impl Linear {
    /// A quantized layer from a `[out, in]` quantized tensor.
    pub fn quantized(weight: std::sync::Arc<QTensor>) -> Result<Self> {
        Ok(Self::Quantized(QMatMul::from_arc(weight)?))
    }

    /// A layer for the CPU kernels from a Q8_0 or Q4_0 `[out, in]` quantized tensor; other
    /// types and devices get candle's quantized matmul.
    pub fn blocks(weight: std::sync::Arc<QTensor>) -> Result<Self> {
        Self::from_weight(Weight::Quantized(weight).for_kernels("<weight>")?)
    }

    fn from_weight(w: Weight) -> Result<Self> {
        match w {
            Weight::Dense(t) => Ok(Self::Dense(t)),
            Weight::Quantized(q) => Self::quantized(q),
            Weight::Blocks(b) => Ok(Self::Blocks(b)),
        }
    }

    /// The block matrix, for weights on our block kernels.
    fn block_matrix(&self) -> Option<&std::sync::Arc<BlockMatrix>> {
        match self {
            Self::Blocks(b) => Some(b),
            _ => None,
        }
    }

    /// Whether the weight is stored in blocks of a GGML quantized type (not a float type).
    fn is_block_quantized(&self) -> bool {
        match self {
            Self::Dense(_) | Self::Quantized(QMatMul::Tensor(_) | QMatMul::TensorF16(_)) => false,
            Self::Quantized(QMatMul::QTensor(q)) => {
                !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
            }
            Self::Blocks(_) => true,
        }
    }

    /// The weight type: the float dtype of a dense layer, the GGML type of a quantized one.
    pub fn weight_type(&self) -> String {
        match self {
            Self::Dense(w) => format!("{:?}", w.dtype()).to_lowercase(),
            Self::Quantized(QMatMul::QTensor(q)) => format!("{:?}", q.dtype()).to_lowercase(),
            Self::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                format!("{:?}", w.dtype()).to_lowercase()
            }
            Self::Blocks(b) => format!("{:?}", b.dtype()).to_lowercase(),
        }
    }

    /// Applies the layer to `x` of shape `[.., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => {
                // Fold the leading dims into rows: one GEMM (or GEMV while decoding) against
                // the transposed weight, no broadcast copy of W.
                let dims = x.dims();
                let in_dim = dims.last().copied().unwrap_or(0);
                let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
                let x2 = if x.is_contiguous() {
                    x.reshape((rows, in_dim))?
                } else {
                    x.contiguous()?.reshape((rows, in_dim))?
                };
                let y = if rows <= crate::matvec::MAX_ROWS
                    && w.dtype() == DType::BF16
                    && x2.dtype() == DType::BF16
                    && w.device().is_cpu()
                    && w.is_contiguous()
                {
                    x2.apply_op2_no_bwd(w, &crate::matvec::Bf16MatVec)?
                } else {
                    x2.matmul(&w.t()?)?
                };
                let mut out_dims = dims.to_vec();
                if let Some(last) = out_dims.last_mut() {
                    *last = w.dim(0)?;
                }
                Ok(y.reshape(out_dims)?)
            }
            Self::Quantized(q) => {
                let x = if x.is_contiguous() {
                    x.clone()
                } else {
                    x.contiguous()?
                };
                Ok(q.forward(&x)?)
            }
            Self::Blocks(b) => {
                let dtype = x.dtype();
                let x = x.to_dtype(DType::F32)?.contiguous()?;
                let y = x.apply_op1_no_bwd(&BlockMatMul(b.clone()))?;
                Ok(if dtype == DType::F32 {
                    y
                } else {
                    y.to_dtype(dtype)?
                })
            }
        }
    }
}

impl Linear {
    /// `rows` rows of `x` (`rows * in` f32 values) through the layer on the CPU: the block
    /// kernels run on the slice itself, other weights go through a tensor.
    /// With `helper` and one row, the helper threads each take an equal share of the output
    /// rows (see `helper`).
    fn forward_rows(
        &self,
        x: Vec<f32>,
        rows: usize,
        helper: Option<&DecodeHelpers>,
    ) -> Result<Vec<f32>> {
        if let Self::Blocks(b) = self {
            let (out, cols) = b.dims();
            if x.len() != rows * cols {
                return Err(Error::InvalidArgument(format!(
                    "{} values for {rows} rows of a layer {cols} wide",
                    x.len()
                )));
            }
            let mut y = vec![0f32; rows * out];
            match helper {
                Some(h) if rows == 1 => h.split(b, b.quantize_input(&x, 1), &mut y),
                _ => b.matmul(&x, rows, &mut y),
            }
            return Ok(y);
        }
        let cols = x.len() / rows.max(1);
        let t = Tensor::from_vec(x, (rows, cols), &Device::Cpu)?;
        Ok(self
            .forward(&t)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

/// The token embedding table: dense, or quantized with rows dequantized on lookup (so the
/// table shared with the output projection is stored once, quantized).
#[derive(Debug, Clone)]
enum Embeddings {
    Dense(Tensor),
    Quantized(std::sync::Arc<QTensor>),
    Blocks(std::sync::Arc<BlockMatrix>),
}

impl Embeddings {
    fn from_weight(w: Weight) -> Self {
        match w {
            Weight::Dense(t) => Self::Dense(t),
            Weight::Quantized(q) => Self::Quantized(q),
            Weight::Blocks(b) => Self::Blocks(b),
        }
    }

    /// The rows of `ids` (flat u32) as `[n, D]` in `dtype`.
    fn lookup(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let rows = match self {
            Self::Dense(t) => t.embedding(ids)?,
            Self::Quantized(q) => q.embedding(ids)?,
            Self::Blocks(b) => {
                let ids = ids.to_vec1::<u32>()?;
                let (vocab, cols) = b.dims();
                let mut out = vec![0f32; ids.len() * cols];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(cols)) {
                    if id as usize >= vocab {
                        return Err(Error::TokenOutOfRange {
                            token: id,
                            vocab_size: vocab,
                        });
                    }
                    b.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)?
            }
        };
        Ok(if rows.dtype() == dtype {
            rows
        } else {
            rows.to_dtype(dtype)?
        })
    }
}

/// Precomputed RoPE tables for every position of the context.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// The same tables in f32 on the host, `[positions, head_dim / 2]` row-major, for the
    /// one-token path.
    cos_f32: Vec<f32>,
    sin_f32: Vec<f32>,
    half: usize,
}

impl Rope {
    fn new(cfg: &Config, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                1.0 / (cfg.rope_freq_constant as f32).powf(2.0 * i as f32 / cfg.head_dim as f32)
            })
            .collect();
        let positions = cfg.max_context_length;
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let t = Tensor::arange(0u32, positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((positions, 1))?;
        let freqs = t.broadcast_mul(&inv_freq)?;
        let (cos, sin) = (freqs.cos()?, freqs.sin()?);
        Ok(Self {
            cos_f32: cos.flatten_all()?.to_vec1()?,
            sin_f32: sin.flatten_all()?.to_vec1()?,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            half,
        })
    }

    /// The cos and sin angles of position `pos` (host f32), or an error past the context.
    fn angles(&self, pos: usize) -> Result<(&[f32], &[f32])> {
        let range = pos * self.half..(pos + 1) * self.half;
        match (self.cos_f32.get(range.clone()), self.sin_f32.get(range)) {
            (Some(c), Some(s)) => Ok((c, s)),
            _ => Err(Error::ContextOverflow {
                needed: pos + 1,
                limit: self.cos_f32.len() / self.half.max(1),
            }),
        }
    }

    /// Rotates `x` of shape `[B, H, S, hd]` for positions `offset..offset + S`.
    fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let s = x.dim(2)?;
        let cos = self.cos.narrow(0, offset, s)?;
        let sin = self.sin.narrow(0, offset, s)?;
        Ok(candle_nn::rotary_emb::rope(x, &cos, &sin)?)
    }
}

#[derive(Debug)]
struct Attention {
    qkv: Linear,
    out: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    /// `q_norm` and `k_norm` as host f32, for the one-token path.
    q_norm_f32: Option<Vec<f32>>,
    k_norm_f32: Option<Vec<f32>>,
    n_q: usize,
    n_kv: usize,
    head_dim: usize,
    eps: f32,
    cache: KvCache,
    /// The dtype the cache holds keys and values in (see [`Model::kv_cache_dtype`]).
    kv_dtype: DType,
}

impl Attention {
    fn forward(
        &mut self,
        x: &Tensor,
        rope: &Rope,
        offset: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (n_q, n_kv, hd) = (self.n_q, self.n_kv, self.head_dim);
        // [B, S, Hq + 2 Hkv, hd] -> [B, H, S, hd]; while decoding (S = 1) this is free.
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, s, n_q + 2 * n_kv, hd))?
            .transpose(1, 2)?;
        let q = qkv.narrow(1, 0, n_q)?.contiguous()?;
        let k = qkv.narrow(1, n_q, n_kv)?.contiguous()?;
        let v = qkv.narrow(1, n_q + n_kv, n_kv)?.contiguous()?;
        let q = match &self.q_norm {
            Some(w) => candle_nn::ops::rms_norm(&q, w, self.eps)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(w) => candle_nn::ops::rms_norm(&k, w, self.eps)?,
            None => k,
        };
        let q = rope.apply(&q, offset)?;
        let k = rope.apply(&k, offset)?.to_dtype(self.kv_dtype)?;
        let (k, v) = self.cache.append(&k, &v.to_dtype(self.kv_dtype)?)?;

        // Grouped-query attention without copying the KV heads: query heads g*rep..(g+1)*rep
        // share KV head g, so fold them into the row dimension of one matmul per KV head.
        let rep = n_q / n_kv;
        let scale = 1.0 / (hd as f64).sqrt();
        let q = (q * scale)?.reshape((b, n_kv, rep * s, hd))?;
        if q.dtype() == DType::F32
            && matches!(k.dtype(), DType::F32 | DType::F16)
            && q.device().is_cpu()
        {
            // One op, no score tensors (see `attention::CausalAttention`): the causal mask
            // (the only one the model makes) applied by position; out comes
            // `[B, G, S, R, hd]`.
            let y = q
                .contiguous()?
                .apply_op3_no_bwd(&k, &v, &crate::attention::CausalAttention { s })?
                .transpose(1, 2)?
                .reshape((b, s, n_q * hd))?;
            return self.out.forward(&y);
        }
        let (k, v) = (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?);
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(mask) => crate::elementwise::add_mask(&scores, mask)?,
            None => scores,
        };
        // candle sums a softmax row in the tensor's own dtype; in bf16/f16 a long row of small
        // probabilities loses mass, so normalise in f32.
        let probs = if scores.dtype() == DType::F32 {
            candle_nn::ops::softmax_last_dim(&scores)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
                .to_dtype(scores.dtype())?
        };
        let y = probs
            .matmul(&v)?
            .reshape((b, n_q, s, hd))?
            .transpose(1, 2)?
            .reshape((b, s, n_q * hd))?;
        self.out.forward(&y)
    }
}

impl Attention {
    /// One position of `b` sequences on host vectors: `x` is `b` rows of the model width;
    /// returns the attention output, the same shape. Same arithmetic as
    /// [`forward`](Self::forward) with one position, without its two dozen tensor ops.
    fn decode(
        &mut self,
        x: Vec<f32>,
        b: usize,
        rope: &Rope,
        offset: usize,
        helper: &DecodeHelpers,
        next: Option<&std::sync::Arc<BlockMatrix>>,
    ) -> Result<Vec<f32>> {
        let (n_q, n_kv, hd) = (self.n_q, self.n_kv, self.head_dim);
        let width = (n_q + 2 * n_kv) * hd;
        // The out-projection comes next for the helpers: they fetch its start while this
        // thread does the rope and the cache append, and again after their attention share
        // (which cuts the first fetch short).
        helper.next_up(self.out.block_matrix());
        let mut qkv = self.qkv.forward_rows(x, b, Some(helper))?;
        let (cos, sin) = rope.angles(offset)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut q = Vec::with_capacity(b * n_q * hd);
        let mut k = Vec::with_capacity(b * n_kv * hd);
        let mut v = Vec::with_capacity(b * n_kv * hd);
        for row in qkv.chunks_exact_mut(width) {
            let (qs, rest) = row.split_at_mut(n_q * hd);
            let (ks, vs) = rest.split_at_mut(n_kv * hd);
            for head in qs.chunks_exact_mut(hd) {
                if let Some(w) = &self.q_norm_f32 {
                    crate::decode::rms_norm_in_place(head, w, self.eps);
                }
                crate::decode::rotate(head, cos, sin);
                head.iter_mut().for_each(|x| *x *= scale);
            }
            for head in ks.chunks_exact_mut(hd) {
                if let Some(w) = &self.k_norm_f32 {
                    crate::decode::rms_norm_in_place(head, w, self.eps);
                }
                crate::decode::rotate(head, cos, sin);
            }
            q.extend_from_slice(qs);
            k.extend_from_slice(ks);
            v.extend_from_slice(vs);
        }
        let (k, v) = self
            .cache
            .append_rows(&k, &v, (b, n_kv, hd), self.kv_dtype)?;
        // Each thread takes an equal share of the query heads (see `helper`).
        let (share, starts) = crate::attention::decode_shares(
            q,
            (b, n_kv, n_q / n_kv, hd),
            &k,
            &v,
            helper.threads(),
        )?;
        let mut y = vec![0f32; b * n_q * hd];
        helper.next_up(self.out.block_matrix());
        helper.run(&mut y, std::sync::Arc::new(starts), share);
        helper.next_up(next);
        self.out.forward_rows(y, b, Some(helper))
    }
}

#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    attn: Attention,
    ffn_norm: Tensor,
    /// `attn_norm` and `ffn_norm` as host f32, for the one-token path.
    attn_norm_f32: Vec<f32>,
    ffn_norm_f32: Vec<f32>,
    proj_1: Linear,
    proj_2: Linear,
    eps: f32,
}

impl Layer {
    fn forward(
        &mut self,
        h: &Tensor,
        rope: &Rope,
        offset: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        use crate::elementwise::{add, swiglu};
        let x = candle_nn::ops::rms_norm(h, &self.attn_norm, self.eps)?;
        let h = add(h, &self.attn.forward(&x, rope, offset, mask)?)?;
        let x = candle_nn::ops::rms_norm(&h, &self.ffn_norm, self.eps)?;
        let x = swiglu(&self.proj_1.forward(&x)?)?;
        add(&h, &self.proj_2.forward(&x)?)
    }

    /// One position of `b` sequences on host vectors, `h` (`b` rows of the model width)
    /// updated in place: [`forward`](Self::forward)'s arithmetic for the decode step.
    fn decode(
        &mut self,
        h: &mut [f32],
        b: usize,
        rope: &Rope,
        offset: usize,
        helper: &DecodeHelpers,
        next: Option<&std::sync::Arc<BlockMatrix>>,
    ) -> Result<()> {
        use crate::decode::{add, rms_norm, swiglu};
        let x = rms_norm(h, &self.attn_norm_f32, self.eps);
        add(
            h,
            &self
                .attn
                .decode(x, b, rope, offset, helper, self.proj_1.block_matrix())?,
        );
        let x = rms_norm(h, &self.ffn_norm_f32, self.eps);
        helper.next_up(self.proj_2.block_matrix());
        let u = self.proj_1.forward_rows(x, b, Some(helper))?;
        helper.next_up(next);
        add(
            h,
            &self.proj_2.forward_rows(swiglu(&u, b), b, Some(helper))?,
        );
        Ok(())
    }
}

/// An OpenELM model with its KV cache.
///
/// Feed the prompt in one call to [`forward`](Model::forward) at offset 0, then one token
/// per call at the next offset; [`clear_kv_cache`](Model::clear_kv_cache) starts over.
///
/// Not `Clone` on purpose: the KV cache is written in place, so two clones would share and
/// corrupt each other's cache.
#[derive(Debug)]
pub struct Model {
    config: Config,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `norm` as host f32, for the one-token path.
    norm_f32: Vec<f32>,
    lm_head: Linear,
    rope: Rope,
    device: Device,
    dtype: DType,
    seq_len: usize,
    /// The decode steps' helper threads (see `helper`), made for the pool of the first
    /// step that runs on the host path and remade when a step runs on a pool of another
    /// size.
    helpers: std::sync::Mutex<Option<std::sync::Arc<DecodeHelpers>>>,
}

impl Model {
    /// Loads the model from a checkpoint: validates every tensor against `config` first, then
    /// copies the weights out of the map in `dtype`, calling `progress` with the fraction done.
    pub fn load(
        config: &Config,
        checkpoint: &Checkpoint,
        dtype: DType,
        device: &Device,
        progress: impl FnMut(f32),
    ) -> Result<Self> {
        Self::load_quantized(config, checkpoint, None, dtype, device, progress)
    }

    /// Like [`load`](Model::load), quantizing every projection matrix (and the shared
    /// embedding) to `quantize` while loading, one tensor at a time. Norms stay in `dtype`,
    /// which is also the activation dtype. Matrices whose rows are not a whole number of
    /// blocks fall back as [`quant_type_for`](crate::quant_type_for) says. `None` loads the
    /// float weights as stored.
    pub fn load_quantized(
        config: &Config,
        checkpoint: &Checkpoint,
        quantize: Option<GgmlDType>,
        dtype: DType,
        device: &Device,
        progress: impl FnMut(f32),
    ) -> Result<Self> {
        check_dtype(dtype)?;
        if dtype == DType::F16 && (config.head_dim >= 128 || config.model_dim >= 3072) {
            tracing::warn!(
                model_dim = config.model_dim,
                head_dim = config.head_dim,
                "f16 overflows on the larger OpenELM models; prefer bf16 or f32"
            );
        }
        checkpoint.validate(config)?;
        let mut source = SafetensorsSource {
            checkpoint,
            quantize,
            device: device.clone(),
        };
        Self::build(config, &mut source, dtype, device, progress)
    }

    /// Builds the model from named tensors (Hugging Face names, `[out, in]` layout), checking
    /// each name and shape against `config`. Tensors are converted to `dtype` if needed.
    pub fn from_tensors(
        config: &Config,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        check_dtype(dtype)?;
        let mut source = TensorMap {
            tensors,
            device: device.clone(),
        };
        Self::build(config, &mut source, dtype, device, |_| {})
    }

    /// The one constructor every format goes through: asks `source` for each tensor the
    /// config names, in the order of [`Config::expected_tensors`], reporting the fraction of
    /// parameters loaded after each.
    pub(crate) fn build(
        config: &Config,
        source: &mut dyn WeightSource,
        dtype: DType,
        device: &Device,
        mut progress: impl FnMut(f32),
    ) -> Result<Self> {
        check_dtype(dtype)?;
        let expected: HashMap<String, Vec<usize>> = config.expected_tensors().into_iter().collect();
        let total: usize = expected
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum::<usize>()
            .max(1);
        let mut done = 0usize;
        // Called once per tensor, after it is loaded.
        let mut step = |shape: &[usize]| {
            done += shape.iter().product::<usize>();
            progress(done as f32 / total as f32);
        };
        let shape_of = |name: &str| -> Result<Vec<usize>> {
            expected
                .get(name)
                .cloned()
                .ok_or_else(|| Error::InvalidArgument(format!("the config has no tensor `{name}`")))
        };
        let step = std::cell::RefCell::new(&mut step);
        let vector = |source: &mut dyn WeightSource, name: &str| -> Result<Tensor> {
            let shape = shape_of(name)?;
            let t = source.vector(name, &shape, dtype)?;
            (step.borrow_mut())(&shape);
            Ok(t)
        };
        let matrix = |source: &mut dyn WeightSource, name: &str| -> Result<Weight> {
            let shape = shape_of(name)?;
            let w = source.matrix(name, &shape, dtype)?.for_kernels(name)?;
            (step.borrow_mut())(&shape);
            Ok(w)
        };
        let eps = config.rms_norm_eps as f32;
        let embed = matrix(source, "transformer.token_embeddings.weight")?;
        let norm = vector(source, "transformer.norm.weight")?;
        let lm_head = if config.share_input_output_layers {
            // The same storage serves the lookup and the output projection.
            Linear::from_weight(embed.clone())?
        } else {
            Linear::from_weight(matrix(source, "lm_head.weight")?)?
        };
        let embeddings = Embeddings::from_weight(embed);
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = format!("transformer.layers.{i}");
            let (q_norm, k_norm) = if config.normalize_qk_projections {
                (
                    Some(vector(source, &format!("{p}.attn.q_norm.weight"))?),
                    Some(vector(source, &format!("{p}.attn.k_norm.weight"))?),
                )
            } else {
                (None, None)
            };
            let attn_norm = vector(source, &format!("{p}.attn_norm.weight"))?;
            let ffn_norm = vector(source, &format!("{p}.ffn_norm.weight"))?;
            layers.push(Layer {
                attn_norm_f32: host(&attn_norm)?,
                ffn_norm_f32: host(&ffn_norm)?,
                attn_norm,
                attn: Attention {
                    qkv: Linear::from_weight(matrix(
                        source,
                        &format!("{p}.attn.qkv_proj.weight"),
                    )?)?,
                    out: Linear::from_weight(matrix(
                        source,
                        &format!("{p}.attn.out_proj.weight"),
                    )?)?,
                    q_norm_f32: q_norm.as_ref().map(host).transpose()?,
                    k_norm_f32: k_norm.as_ref().map(host).transpose()?,
                    q_norm,
                    k_norm,
                    n_q: config.num_query_heads[i],
                    n_kv: config.num_kv_heads[i],
                    head_dim: config.head_dim,
                    eps,
                    cache: KvCache::new(KV_CACHE_STEP),
                    kv_dtype: dtype,
                },
                ffn_norm,
                proj_1: Linear::from_weight(matrix(source, &format!("{p}.ffn.proj_1.weight"))?)?,
                proj_2: Linear::from_weight(matrix(source, &format!("{p}.ffn.proj_2.weight"))?)?,
                eps,
            });
        }
        let mut model = Self {
            config: config.clone(),
            rope: Rope::new(config, dtype, device)?,
            embeddings,
            layers,
            norm_f32: host(&norm)?,
            norm,
            lm_head,
            device: device.clone(),
            dtype,
            seq_len: 0,
            helpers: std::sync::Mutex::new(None),
        };
        // Quantized weights on the CPU: the KV cache in f16 (see `kv_cache_dtype`).
        let quantized = model.layers.iter().any(|l| l.attn.qkv.is_block_quantized());
        if quantized && dtype == DType::F32 && device.is_cpu() {
            model.set_kv_cache_dtype(DType::F16)?;
        }
        Ok(model)
    }

    /// The dtype the KV cache holds keys and values in. It is the run dtype, except for a
    /// model with block-quantized weights (a quantized GGUF, or `LoadOptions::quantize`)
    /// running in f32 on the CPU: there it is f16, as in llama.cpp. That halves the cache's
    /// memory (for OpenELM-270M at 2048 positions, 33 MB instead of 65 MB) and what each
    /// generated token reads from it, for a rounding of keys and values to 11 significant
    /// bits, well inside what quantized weights already change.
    pub fn kv_cache_dtype(&self) -> DType {
        self.layers.first().map_or(self.dtype, |l| l.attn.kv_dtype)
    }

    /// Keeps the KV cache in `dtype` from now on: the run dtype, or f16 when the model runs
    /// in f32 (see [`kv_cache_dtype`](Self::kv_cache_dtype)). Empties the cache.
    pub fn set_kv_cache_dtype(&mut self, dtype: DType) -> Result<()> {
        if dtype != self.dtype && !(dtype == DType::F16 && self.dtype == DType::F32) {
            return Err(Error::InvalidArgument(format!(
                "KV cache dtype {dtype:?}: expected the run dtype ({:?}), or f16 when it is f32",
                self.dtype
            )));
        }
        self.clear_kv_cache();
        for layer in &mut self.layers {
            layer.attn.kv_dtype = dtype;
        }
        Ok(())
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The dtype the model runs in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How many projection matrices (the shared embedding counted once) use each weight type,
    /// as `("q8_0", 97)`, `("f32", 1)`: what quantizing at load or a GGUF file produced.
    pub fn weight_types(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        let mut add = |ty: String| *out.entry(ty).or_insert(0) += 1;
        if !self.config.share_input_output_layers {
            add(match &self.embeddings {
                Embeddings::Dense(t) => format!("{:?}", t.dtype()).to_lowercase(),
                Embeddings::Quantized(q) => format!("{:?}", q.dtype()).to_lowercase(),
                Embeddings::Blocks(b) => format!("{:?}", b.dtype()).to_lowercase(),
            });
        }
        add(self.lm_head.weight_type());
        for l in &self.layers {
            for p in [&l.attn.qkv, &l.attn.out, &l.proj_1, &l.proj_2] {
                add(p.weight_type());
            }
        }
        out
    }

    /// Bytes of weights one generated token reads: every projection, the output projection
    /// and the norms (the embedding lookup of one row is left out).
    pub fn weight_bytes(&self) -> usize {
        let dense = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let linear = |l: &Linear| match l {
            Linear::Dense(t) => dense(t),
            Linear::Quantized(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Linear::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => dense(t),
            Linear::Blocks(b) => b.size_in_bytes(),
        };
        let mut n = linear(&self.lm_head) + dense(&self.norm);
        for l in &self.layers {
            n += linear(&l.attn.qkv) + linear(&l.attn.out) + linear(&l.proj_1) + linear(&l.proj_2);
            n += dense(&l.attn_norm) + dense(&l.ffn_norm);
        }
        n
    }

    /// Positions held in the KV cache: the offset the next [`forward`](Model::forward) takes.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Empties the KV cache.
    pub fn clear_kv_cache(&mut self) {
        for layer in &mut self.layers {
            layer.attn.cache.reset();
        }
        self.seq_len = 0;
    }

    /// Runs `ids` (shape `[S]` or `[B, S]`, u32) at positions `offset..offset + S` and returns
    /// the logits of every position, `[B, S, vocab]` in f32. `offset` must equal
    /// [`seq_len`](Model::seq_len).
    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        on_pool(|| match self.hidden(ids, offset)? {
            Step::Logits(y, b) => self.logits_tensor(y, b),
            Step::Hidden(h) => self.logits(&h),
        })
    }

    /// Like [`forward`](Model::forward) but returns only the last position's logits,
    /// `[B, vocab]` in f32, which is all generation needs. A long `ids` goes through the
    /// layers 128 positions at a time (all of it checked first), so that its activations
    /// take one chunk's memory: a 1024-token prompt of the 270M model at Q8_0 peaked at 329
    /// instead of 501 MiB, and ran faster (712 against 609 tokens/s).
    pub fn forward_last(&mut self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        on_pool(|| {
            let logits = match self.last_hidden(ids, offset)? {
                Step::Logits(y, b) => self.logits_tensor(y, b)?,
                Step::Hidden(h) => {
                    let s = h.dim(1)?;
                    self.logits(&h.narrow(1, s - 1, 1)?)?
                }
            };
            Ok(logits.squeeze(1)?)
        })
    }

    /// Runs token ids given as a slice (batch 1) and returns the last position's logits
    /// (a long run in chunks, as [`forward_last`](Model::forward_last) does).
    pub fn forward_tokens(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let offset = self.seq_len;
        let t = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        // The one-token host path hands back its logits as they are (no tensor round trip).
        let logits = on_pool(|| match self.last_hidden(&t, offset)? {
            Step::Logits(y, _) => Ok(y),
            Step::Hidden(h) => {
                let s = h.dim(1)?;
                host(&self.logits(&h.narrow(1, s - 1, 1)?)?)
            }
        })?;
        if !all_finite(&logits) {
            return Err(Error::NonFiniteLogits {
                dtype: format!("{:?}", self.dtype).to_lowercase(),
            });
        }
        Ok(logits)
    }

    /// The hidden states of `ids` after the last layer (before the final norm); with one
    /// position on the host path and a block-quantized output projection, the logits
    /// instead, computed in the same decode step (one set of helper threads for the layers
    /// and the output projection).
    fn hidden(&mut self, ids: &Tensor, offset: usize) -> Result<Step> {
        let ids = self.checked_ids(ids, offset)?;
        self.run(&ids, offset)
    }

    /// Like [`hidden`](Self::hidden), for callers that need only the last position: a long
    /// run goes through the layers [`PROMPT_CHUNK`] positions at a time (every check made
    /// first, on all of it), so that its activations take the memory of one chunk, not of
    /// the whole prompt.
    fn last_hidden(&mut self, ids: &Tensor, offset: usize) -> Result<Step> {
        let ids = self.checked_ids(ids, offset)?;
        let s = ids.dim(1)?;
        let mut at = 0;
        while s - at > PROMPT_CHUNK {
            self.run(&ids.narrow(1, at, PROMPT_CHUNK)?, offset + at)?;
            at += PROMPT_CHUNK;
        }
        self.run(&ids.narrow(1, at, s - at)?, offset + at)
    }

    /// `ids` as `[B, S]`, checked against this model and its cache: at least one position,
    /// `offset` where the cache ends, room in the context, tokens in the vocabulary.
    fn checked_ids(&self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let ids = match ids.rank() {
            1 => ids.unsqueeze(0)?,
            2 => ids.clone(),
            r => {
                return Err(Error::InvalidArgument(format!(
                    "token ids must be [S] or [B, S], found rank {r}"
                )));
            }
        };
        let (_, s) = ids.dims2()?;
        if s == 0 {
            return Err(Error::InvalidArgument("no tokens to run".into()));
        }
        if offset != self.seq_len {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} but the KV cache holds {} positions; call clear_kv_cache() to start over",
                self.seq_len
            )));
        }
        let limit = self.config.max_context_length;
        if offset + s > limit {
            return Err(Error::ContextOverflow {
                needed: offset + s,
                limit,
            });
        }
        let vocab = self.config.vocab_size;
        if let Some(&bad) = ids
            .flatten_all()?
            .to_vec1::<u32>()?
            .iter()
            .find(|&&t| t as usize >= vocab)
        {
            return Err(Error::TokenOutOfRange {
                token: bad,
                vocab_size: vocab,
            });
        }
        Ok(ids)
    }

    /// [`hidden`](Self::hidden) on ids [`checked_ids`](Self::checked_ids) passed.
    fn run(&mut self, ids: &Tensor, offset: usize) -> Result<Step> {
        let (b, s) = ids.dims2()?;
        let mut h = self
            .embeddings
            .lookup(&ids.flatten_all()?, self.dtype)?
            .reshape((b, s, self.config.model_dim))?;
        let mask = if s > 1 {
            Some(causal_mask(s, offset, self.dtype, &self.device)?)
        } else {
            None
        };
        // One position in f32 on the CPU: the host-vector path, no tensor ops between the
        // matrix products.
        let on_host = s == 1 && self.dtype == DType::F32 && self.device.is_cpu();
        let result = (|| -> Result<Step> {
            if on_host {
                let mut hv = h.flatten_all()?.to_vec1::<f32>()?;
                let logits_here = matches!(self.lm_head, Linear::Blocks(_));
                let helpers = &*self.decode_helpers();
                let (layers, rope, lm_head) = (&mut self.layers, &self.rope, &self.lm_head);
                let (norm, eps) = (&self.norm_f32, self.config.rms_norm_eps as f32);
                // The pool's other threads serve a share of every matrix product for the
                // whole step (see `helper`), the output projection's included.
                let logits = (|| -> Result<Option<Vec<f32>>> {
                    // What each layer's last product is followed by.
                    let nexts: Vec<_> = layers
                        .iter()
                        .skip(1)
                        .map(|l| l.attn.qkv.block_matrix().cloned())
                        .chain([lm_head.block_matrix().cloned()])
                        .collect();
                    for (layer, next) in layers.iter_mut().zip(&nexts) {
                        layer.decode(&mut hv, b, rope, offset, helpers, next.as_ref())?;
                    }
                    if !logits_here {
                        return Ok(None);
                    }
                    let x = crate::decode::rms_norm(&hv, norm, eps);
                    Ok(Some(lm_head.forward_rows(x, b, Some(helpers))?))
                })()?;
                return Ok(match logits {
                    Some(y) => Step::Logits(y, b),
                    None => Step::Hidden(Tensor::from_vec(
                        hv,
                        (b, 1, self.config.model_dim),
                        &self.device,
                    )?),
                });
            }
            for layer in &mut self.layers {
                h = layer.forward(&h, &self.rope, offset, mask.as_ref())?;
            }
            Ok(Step::Hidden(h))
        })();
        match result {
            Ok(h) => {
                self.seq_len += s;
                Ok(h)
            }
            Err(e) => {
                // Some layers may have appended to their caches: the cache is no longer
                // consistent, so drop it rather than let the next call read garbage.
                self.clear_kv_cache();
                Err(e)
            }
        }
    }

    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        if let (Linear::Blocks(_), DType::F32, true, Ok((b, 1, _))) =
            (&self.lm_head, self.dtype, self.device.is_cpu(), h.dims3())
        {
            // One position: the host path, with the helpers, as for the layers.
            let x =
                crate::decode::rms_norm(&h.flatten_all()?.to_vec1::<f32>()?, &self.norm_f32, eps);
            let y = self
                .lm_head
                .forward_rows(x, b, Some(&self.decode_helpers()))?;
            let vocab = y.len() / b.max(1);
            return Ok(Tensor::from_vec(y, (b, 1, vocab), &self.device)?);
        }
        let h = candle_nn::ops::rms_norm(h, &self.norm, eps)?;
        Ok(self.lm_head.forward(&h)?.to_dtype(DType::F32)?)
    }
}

impl Model {
    /// The helpers for a decode step on the calling thread's pool, woken (see `helper`).
    fn decode_helpers(&self) -> std::sync::Arc<DecodeHelpers> {
        let want = rayon::current_num_threads().saturating_sub(1);
        let helpers = match self.helpers.lock() {
            Ok(mut held) => match held.as_ref().filter(|h| h.threads() == want + 1) {
                Some(h) => std::sync::Arc::clone(h),
                None => {
                    let h = std::sync::Arc::new(DecodeHelpers::new(want));
                    *held = Some(std::sync::Arc::clone(&h));
                    h
                }
            },
            // Poisoned only by a panic while swapping the Arc: use a fresh set.
            Err(_) => std::sync::Arc::new(DecodeHelpers::new(want)),
        };
        helpers.wake();
        helpers
    }
}

/// What [`Model::hidden`] computed: the last layer's hidden states, or the logits already.
enum Step {
    Hidden(Tensor),
    /// `b` rows of logits, on the host.
    Logits(Vec<f32>, usize),
}

impl Model {
    /// `b` rows of host logits as `[B, 1, vocab]`.
    fn logits_tensor(&self, y: Vec<f32>, b: usize) -> Result<Tensor> {
        let vocab = y.len() / b.max(1);
        Ok(Tensor::from_vec(y, (b, 1, vocab), &self.device)?)
    }
}

/// Whether every value is finite, in 16 interleaved lanes: `x * 0` is 0 for a finite `x`
/// and NaN for an infinity or a NaN, and NaN survives any sum.
fn all_finite(v: &[f32]) -> bool {
    let mut acc = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail = chunks.remainder().iter().all(|x| x.is_finite());
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x * 0.0;
        }
    }
    tail && acc.iter().all(|a| *a == 0.0)
}

/// Runs a forward pass on one of rayon's worker threads. The block kernels split every
/// matrix across rayon's threads; called from a worker, the caller's thread takes part in
/// that work, while from any other thread each of the ~65 matrix products of a token would
/// park the caller and wake it again (two context switches per product).
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// A vector's values as host f32.
fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn check_dtype(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(Error::InvalidArgument(format!(
            "run dtype {other:?} is not supported; use f32, f16 or bf16"
        ))),
    }
}

/// `[S, offset + S]`: 0 where position `offset + i` may attend to `j`, -inf after it.
fn causal_mask(s: usize, offset: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let t = offset + s;
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| {
            (0..t).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (s, t), device)?.to_dtype(dtype)?)
}

/// Seeded random weights with the shapes of `config` (normal, std 0.02; norms at 1; the same
/// config always gives the same weights), for benchmarks
/// and tests that need real shapes but no download.
pub fn random_tensors(
    config: &Config,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    // A seeded generator rather than candle's randn (which cannot be seeded on CPU): the same
    // config always gives the same weights, so tests and benchmarks repeat exactly.
    let mut state: u64 = 0x0e1f_5eed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        // 53 random bits in (0, 1].
        ((z ^ (z >> 31)) >> 11) as f64 * (1.0 / (1u64 << 53) as f64) + f64::EPSILON
    };
    let mut out = HashMap::new();
    for (name, shape) in config.expected_tensors() {
        let t = if shape.len() == 1 {
            Tensor::ones(shape, dtype, device)?
        } else {
            let n: usize = shape.iter().product();
            let mut values = Vec::with_capacity(n);
            while values.len() < n {
                // Box-Muller: two normals, standard deviation 0.02.
                let (u1, u2) = (next(), next());
                let r = (-2.0 * u1.ln()).sqrt() * 0.02;
                let a = std::f64::consts::TAU * u2;
                values.push((r * a.cos()) as f32);
                values.push((r * a.sin()) as f32);
            }
            values.truncate(n);
            Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// The index of the largest value of `v`, the first one when several are equal (greedy
/// decoding's choice among logits); NaN values are passed over, and an empty or all-NaN
/// slice gives 0.
///
/// ```
/// assert_eq!(elmroute_openelm::argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
/// ```
pub fn argmax(v: &[f32]) -> u32 {
    // The largest value in 16 interleaved lanes (NaN is passed over, as `f32::max` does),
    // then its first index: two passes that vectorize, where one compare-and-keep-the-index
    // pass is a chain of dependent selects (18 us per token at 32000 logits).
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = v.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let max = lanes.iter().fold(tail, |m, &x| m.max(x));
    v.iter().position(|&x| x == max).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn argmax_and_the_finite_check_see_every_position() {
        for n in [1, 15, 16, 17, 40, 32000] {
            for at in [0, n / 2, n - 1] {
                let mut v: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.1 - 1.0).collect();
                v[at] = 5.0;
                assert_eq!(argmax(&v), at as u32, "{n} values, max at {at}");
                assert!(all_finite(&v));
                // A tie goes to the first; NaN is passed over.
                v[n - 1] = 5.0;
                assert_eq!(argmax(&v), at as u32);
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut w = v.clone();
                    w[at] = bad;
                    assert!(!all_finite(&w), "{bad} at {at} of {n}");
                }
                let mut w = v.clone();
                w[(at + 1) % n] = f32::NAN;
                if (at + 1) % n != at && (at + 1) % n != n - 1 {
                    assert_eq!(argmax(&w), at as u32);
                }
            }
        }
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        assert!(all_finite(&[]));
    }

    #[test]
    fn quantized_linear_tracks_the_dense_one() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (64, 256), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (1, 3, 256), &dev)?;
        let dense = Linear::Dense(w.clone()).forward(&x)?;
        let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        let quant = Linear::quantized(std::sync::Arc::new(q))?.forward(&x)?;
        assert_eq!(quant.dims(), dense.dims());
        let diff = (quant - &dense)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = dense.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < scale * 0.02, "q8_0 off by {diff} at scale {scale}");
        Ok(())
    }

    #[test]
    fn dense_linear_folds_leading_dims() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 4), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4), &dev)?;
        let y = Linear::Dense(w.clone()).forward(&x)?;
        let want = x.broadcast_matmul(&w.t()?)?;
        let diff = (y - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5);
        Ok(())
    }
}
