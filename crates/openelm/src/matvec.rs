//! A bf16 matrix-vector kernel for the CPU decode path.
//!
//! candle's CPU matmul (the `gemm` crate) is fast for f32 and f16 but about twenty times
//! slower for bf16 when only one row is multiplied, which is every decode step. Decoding is
//! bound by reading the weights, so a plain dot product that widens each bf16 weight to f32
//! (a 16-bit shift) and keeps f32 accumulators runs at memory speed: half the bytes of f32.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape};
use half::bf16;
use rayon::prelude::*;

/// Rows of `x` up to which the kernel is used; longer inputs (prompts) go to candle's GEMM.
pub(crate) const MAX_ROWS: usize = 4;

/// `x [rows, in] @ w[out, in]^T -> [rows, out]`, all bf16, f32 accumulation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bf16MatVec;

fn widen(v: bf16) -> f32 {
    f32::from_bits((v.to_bits() as u32) << 16)
}

fn dot(x: &[f32], w: &[bf16]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let mut xs = x.chunks_exact(LANES);
    let mut ws = w.chunks_exact(LANES);
    for (xc, wc) in (&mut xs).zip(&mut ws) {
        for j in 0..LANES {
            acc[j] += xc[j] * widen(wc[j]);
        }
    }
    let mut tail = 0f32;
    for (a, b) in xs.remainder().iter().zip(ws.remainder()) {
        tail += a * widen(*b);
    }
    acc.iter().sum::<f32>() + tail
}

impl CustomOp2 for Bf16MatVec {
    fn name(&self) -> &'static str {
        "openelm-bf16-matvec"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::BF16(x), CpuStorage::BF16(w)) = (s1, s2) else {
            candle_core::bail!("{}: both inputs must be bf16", self.name());
        };
        let (Some((x0, x1)), Some((w0, w1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("{}: inputs must be contiguous", self.name());
        };
        let (rows, k) = l1.shape().dims2()?;
        let (out, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("{}: x has {k} columns but w has {k2}", self.name());
        }
        let x = &x[x0..x1];
        let w = &w[w0..w1];
        let mut y = vec![bf16::ZERO; rows * out];
        for r in 0..rows {
            let xr: Vec<f32> = x[r * k..(r + 1) * k].iter().map(|v| widen(*v)).collect();
            // Blocks of output rows per task: enough work to amortise scheduling.
            y[r * out..(r + 1) * out]
                .par_chunks_mut(64)
                .enumerate()
                .for_each(|(block, ys)| {
                    let first = block * 64;
                    for (i, yv) in ys.iter_mut().enumerate() {
                        let o = first + i;
                        *yv = bf16::from_f32(dot(&xr, &w[o * k..(o + 1) * k]));
                    }
                });
        }
        Ok((CpuStorage::BF16(y), Shape::from((rows, out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn matches_f32_matmul_of_the_same_values() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (300, 77), &dev)?.to_dtype(DType::BF16)?;
        let x = Tensor::randn(0f32, 1.0, (3, 77), &dev)?.to_dtype(DType::BF16)?;
        let got = x.apply_op2_no_bwd(&w, &Bf16MatVec)?.to_dtype(DType::F32)?;
        let want = x
            .to_dtype(DType::F32)?
            .matmul(&w.to_dtype(DType::F32)?.t()?)?;
        let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        // Only the final rounding to bf16 differs: 2^-8 relative.
        assert!(diff <= scale / 128.0, "diff {diff} at scale {scale}");
        Ok(())
    }
}
