//! Where a model's weights come from: named float tensors, a safetensors checkpoint (as
//! stored, or quantized while loading) or a GGUF file. Every source answers in Hugging Face
//! names and `[out, in]` layout, so the model is built by one piece of code whatever the file
//! format or weight type.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::qmatvec::BlockMatrix;
use crate::weights::Checkpoint;

/// One weight as a source yields it.
#[derive(Debug, Clone)]
pub(crate) enum Weight {
    /// A float tensor in the run dtype.
    Dense(Tensor),
    /// A block-quantized matrix (never a float GGML type).
    Quantized(Arc<QTensor>),
    /// A Q8_0, Q4_0, Q4_K or Q6_K matrix repacked for this crate's CPU kernels.
    Blocks(Arc<BlockMatrix>),
}

impl Weight {
    /// Moves a quantized matrix on the CPU onto the fastest kernel this crate has for it:
    /// Q8_0 and Q4_0 onto its own block kernels, and on x86-64 with AVX2 Q4_K too, held as
    /// Q4_0 blocks with a per-block offset (see [`BlockMatrix::from_qtensor`]; candle's Q4_K
    /// decoding ran at a quarter of the speed), and with AVX-512 Q6_K in its own bytes on
    /// its own kernel. Every other block type (Q6_K without AVX-512, Q5_*, Q4_1, Q2_K,
    /// Q3_K), which candle multiplies one row at a time with scalar code on a baseline
    /// x86-64 build, is re-blocked to Q8_0: a finer grid than any of them, so almost no
    /// precision is lost, for up to 1.6x the bytes of a 5- or 6-bit type. llama.cpp's Q4_0
    /// files store the tied embedding as Q6_K, so this matters for the common case. Dense
    /// weights and other devices are returned as they are.
    pub(crate) fn for_kernels(self, name: &str) -> Result<Self> {
        let Weight::Quantized(q) = self else {
            return Ok(self);
        };
        // Q4_K on the block kernels with AVX2 or AVX-512 (x86-64): there they decode 4-5x
        // faster than candle's Q4_K kernels, and read prompts at 0.6-0.75x. Elsewhere (ARM,
        // where candle has NEON Q4_K kernels) it stays with candle.
        if !q.device().is_cpu() || (q.dtype() == GgmlDType::Q4K && !crate::simd::avx2()) {
            return Ok(Weight::Quantized(q));
        }
        if BlockMatrix::supports(q.dtype()) {
            return Ok(Weight::Blocks(Arc::new(BlockMatrix::from_qtensor(
                name, &q,
            )?)));
        }
        let cols = q.shape().dims().last().copied().unwrap_or(0);
        if cols % GgmlDType::Q8_0.block_size() != 0 {
            return Ok(Weight::Quantized(q));
        }
        let requant = |e: candle_core::Error| Error::Quantization {
            name: name.to_string(),
            dtype: format!("{:?} re-blocked to Q8_0", q.dtype()),
            detail: e.to_string(),
        };
        // A band of rows at a time, so that only one band is ever held in f32 (the tied
        // embedding of a 270M model would be 164 MB).
        let rows = q.shape().dims().first().copied().unwrap_or(0);
        let row_bytes = cols / q.dtype().block_size() * q.dtype().type_size();
        let data = q.data().map_err(requant)?;
        let mut q8_bytes = Vec::with_capacity(rows * cols / 32 * 34);
        for band in data.chunks(256 * row_bytes) {
            let n = band.len() / row_bytes;
            let storage =
                QStorage::from_data(std::borrow::Cow::Borrowed(band), &Device::Cpu, q.dtype())
                    .map_err(requant)?;
            let dense = QTensor::new(storage, (n, cols))
                .and_then(|t| t.dequantize(&Device::Cpu))
                .map_err(requant)?;
            let q8 = QTensor::quantize(&dense, GgmlDType::Q8_0).map_err(requant)?;
            q8_bytes.extend_from_slice(&q8.data().map_err(requant)?);
        }
        let storage = QStorage::from_data(
            std::borrow::Cow::Owned(q8_bytes),
            &Device::Cpu,
            GgmlDType::Q8_0,
        )
        .map_err(requant)?;
        let q8 = QTensor::new(storage, (rows, cols)).map_err(requant)?;
        Ok(Weight::Blocks(Arc::new(BlockMatrix::from_qtensor(
            name, &q8,
        )?)))
    }
}

/// Yields the tensors of a model by Hugging Face name.
pub(crate) trait WeightSource {
    /// A vector (norm weight) of `shape`, as a float tensor in `dtype`.
    fn vector(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor>;
    /// A `[out, in]` matrix: dense in `dtype`, or quantized.
    fn matrix(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Weight>;
    /// What to name in an error about a tensor of this source.
    fn describe(&self) -> String;
}

/// Named float tensors already in memory (random weights, tests).
pub(crate) struct TensorMap {
    pub(crate) tensors: HashMap<String, Tensor>,
    pub(crate) device: Device,
}

impl TensorMap {
    fn take(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                expected: shape.to_vec(),
                files: self.describe(),
            })?;
        if t.dims() != shape {
            return Err(Error::TensorShape {
                file: self.describe().into(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        let t = t.to_device(&self.device)?;
        Ok(if t.dtype() == dtype {
            t
        } else {
            t.to_dtype(dtype)?
        })
    }
}

impl WeightSource for TensorMap {
    fn vector(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.take(name, shape, dtype)
    }

    fn matrix(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Weight> {
        Ok(Weight::Dense(self.take(name, shape, dtype)?))
    }

    fn describe(&self) -> String {
        "<tensors>".into()
    }
}

/// A safetensors checkpoint, matrices optionally quantized as they are loaded.
pub(crate) struct SafetensorsSource<'a> {
    pub(crate) checkpoint: &'a Checkpoint,
    pub(crate) quantize: Option<GgmlDType>,
    pub(crate) device: Device,
}

impl WeightSource for SafetensorsSource<'_> {
    fn vector(&mut self, name: &str, _shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.checkpoint.load(name, dtype, &self.device)
    }

    fn matrix(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Weight> {
        match self.quantize {
            None => Ok(Weight::Dense(self.checkpoint.load(
                name,
                dtype,
                &self.device,
            )?)),
            Some(q) => {
                // Quantize from f32 on the CPU, one tensor at a time, so the float copy of
                // only one matrix is ever alive.
                let t = self.checkpoint.load(name, DType::F32, &Device::Cpu)?;
                quantize_matrix(name, &t, q, dtype, &self.device, shape)
            }
        }
    }

    fn describe(&self) -> String {
        self.checkpoint
            .files()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Parses a GGML weight type as llama.cpp and candle spell it, case-insensitive: `f32`,
/// `f16`, `bf16`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q8_0`, `q2_k`, `q3_k`, `q4_k`, `q5_k`,
/// `q6_k` (also `q4k`, ...).
pub fn parse_quant_type(s: &str) -> Result<GgmlDType> {
    let t = match s.to_ascii_lowercase().replace('_', "").as_str() {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "bf16" => GgmlDType::BF16,
        "q40" => GgmlDType::Q4_0,
        "q41" => GgmlDType::Q4_1,
        "q50" => GgmlDType::Q5_0,
        "q51" => GgmlDType::Q5_1,
        "q80" => GgmlDType::Q8_0,
        "q2k" => GgmlDType::Q2K,
        "q3k" => GgmlDType::Q3K,
        "q4k" => GgmlDType::Q4K,
        "q5k" => GgmlDType::Q5K,
        "q6k" => GgmlDType::Q6K,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "unknown weight type `{s}`; expected one of f32, f16, bf16, q4_0, q4_1, q5_0, \
                 q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k"
            )));
        }
    };
    Ok(t)
}

/// The weight type actually used for a matrix whose rows hold `cols` values when `wanted`
/// was asked for: a row must be a whole number of blocks, so K-quants (256-value blocks) fall
/// back to Q8_0 and 32-value block types to the float run dtype (`None`) on narrow matrices,
/// as llama.cpp's quantizer does.
pub fn quant_type_for(wanted: GgmlDType, cols: usize) -> Option<GgmlDType> {
    match wanted {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => None,
        q if cols.is_multiple_of(q.block_size()) => Some(q),
        _ if cols.is_multiple_of(GgmlDType::Q8_0.block_size()) => Some(GgmlDType::Q8_0),
        _ => None,
    }
}

/// Quantizes one `[out, in]` matrix to `q` (or the fallback [`quant_type_for`] picks).
pub(crate) fn quantize_matrix(
    name: &str,
    t: &Tensor,
    q: GgmlDType,
    dtype: DType,
    device: &Device,
    shape: &[usize],
) -> Result<Weight> {
    if t.dims() != shape {
        return Err(Error::TensorShape {
            file: "<quantize>".into(),
            name: name.to_string(),
            expected: shape.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    let cols = shape.last().copied().unwrap_or(0);
    match quant_type_for(q, cols) {
        None => {
            if !matches!(q, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
                tracing::debug!(tensor = %name, cols, ?q, "rows too short to quantize; kept as float");
            }
            Ok(Weight::Dense(t.to_dtype(dtype)?.to_device(device)?))
        }
        Some(used) => {
            let qt = QTensor::quantize_onto(t, used, device).map_err(|e| Error::Quantization {
                name: name.to_string(),
                dtype: format!("{used:?}"),
                detail: e.to_string(),
            })?;
            Ok(Weight::Quantized(Arc::new(qt)))
        }
    }
}
