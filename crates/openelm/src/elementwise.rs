//! The prompt pass's element-wise steps (the residual adds, SwiGLU, the causal mask) as ops
//! that run on rayon's threads, the threads that run the matrix products.
//!
//! candle runs an element-wise op on 64K values or more on a thread pool of its own, and
//! that pool's thread then spins (25,000 pause instructions) before it sleeps. With as many
//! cores as rayon threads, the spinning thread takes a core from the matrix product that
//! comes next: 10% of a 128-token prompt's CPU samples here, and the prompt ran 1.10-1.12x
//! as fast with the spinning turned off. These ops do the same arithmetic for f32 tensors on
//! the CPU; other dtypes and devices go to candle's ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// Values per rayon task: enough that a task is worth its hand-off.
const CHUNK: usize = 16 * 1024;

/// Whether `t` can take the f32 path: a contiguous f32 tensor on the CPU.
fn f32_cpu(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && t.device().is_cpu() && t.is_contiguous()
}

/// `a + b` (same shape).
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if f32_cpu(a) && f32_cpu(b) && a.shape() == b.shape() {
        return Ok(a.apply_op2_no_bwd(b, &Add)?);
    }
    Ok((a + b)?)
}

/// SwiGLU over the last dimension: its first half through SiLU times its second half (as
/// `candle_nn::ops::swiglu`).
pub(crate) fn swiglu(x: &Tensor) -> Result<Tensor> {
    if f32_cpu(x) {
        return Ok(x.apply_op1_no_bwd(&SwiGlu)?);
    }
    Ok(candle_nn::ops::swiglu(x)?)
}

/// `scores` (rows of the mask's width, in runs of the mask's height) plus the `[s, t]` mask
/// on every run: the causal mask on each head's scores.
pub(crate) fn add_mask(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if f32_cpu(scores) && f32_cpu(mask) && mask.rank() == 2 {
        return Ok(scores.apply_op2_no_bwd(mask, &AddMask)?);
    }
    let (s, t) = mask.dims2()?;
    let dims = scores.dims();
    let runs = scores.elem_count() / (s * t).max(1);
    Ok(scores
        .reshape((runs, s, t))?
        .broadcast_add(mask)?
        .reshape(dims)?)
}

/// The values of a contiguous f32 storage.
fn values<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: the input must be f32");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: the input must be contiguous");
    };
    match v.get(start..end) {
        Some(v) => Ok(v),
        None => candle_core::bail!("{op}: the layout runs past the storage"),
    }
}

/// [`add`]'s op.
struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "openelm-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (values(self.name(), s1, l1)?, values(self.name(), s2, l2)?);
        if a.len() != b.len() {
            candle_core::bail!("{}: {} values and {}", self.name(), a.len(), b.len());
        }
        let mut out = a.to_vec();
        out.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .for_each(|(o, b)| crate::decode::add(o, b));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// [`swiglu`]'s op.
struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "openelm-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = values(self.name(), s, l)?;
        let mut dims = l.shape().dims().to_vec();
        let Some(last) = dims.last_mut() else {
            candle_core::bail!("{}: the input has no dimensions", self.name());
        };
        let width = *last;
        if width % 2 != 0 {
            candle_core::bail!("{}: last dimension {width} is odd", self.name());
        }
        *last = width / 2;
        if width == 0 {
            return Ok((CpuStorage::F32(Vec::new()), Shape::from(dims)));
        }
        // Whole rows per task.
        let rows = (CHUNK / width).max(1);
        let parts: Vec<Vec<f32>> = x
            .par_chunks(rows * width)
            .map(|part| crate::decode::swiglu(part, part.len() / width))
            .collect();
        Ok((CpuStorage::F32(parts.concat()), Shape::from(dims)))
    }
}

/// [`add_mask`]'s op.
struct AddMask;

impl CustomOp2 for AddMask {
    fn name(&self) -> &'static str {
        "openelm-add-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (scores, mask) = (values(self.name(), s1, l1)?, values(self.name(), s2, l2)?);
        let t = l2.shape().dims().last().copied().unwrap_or(0);
        if mask.is_empty() || scores.len() % mask.len() != 0 || l1.shape().dims().last() != Some(&t)
        {
            candle_core::bail!(
                "{}: scores {:?} are not runs of the mask {:?}",
                self.name(),
                l1.shape(),
                l2.shape()
            );
        }
        let mut out = scores.to_vec();
        // Whole runs of the mask per task.
        let runs = (CHUNK / mask.len()).max(1);
        out.par_chunks_mut(runs * mask.len()).for_each(|part| {
            for run in part.chunks_exact_mut(mask.len()) {
                crate::decode::add(run, mask);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn uniform(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 250.0 - 4.0)
            .collect()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) -> Result<()> {
        let (a, b) = (
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= tol * y.abs().max(1.0), "{i}: {x} vs {y}");
        }
        Ok(())
    }

    #[test]
    fn the_ops_give_what_candles_ops_give() -> Result<()> {
        let dev = Device::Cpu;
        // Sizes on both sides of a task (16K values) and of candle's own threshold (64K).
        for (rows, width) in [(3, 8), (128, 1280), (70, 2048)] {
            let a = Tensor::from_vec(uniform(rows * width, 1), (1, rows, width), &dev)?;
            let b = Tensor::from_vec(uniform(rows * width, 2), (1, rows, width), &dev)?;
            close(&add(&a, &b)?, &(&a + &b)?, 0.0)?;
            close(&swiglu(&a)?, &candle_nn::ops::swiglu(&a)?, 1e-5)?;
            // A strided view, and the same in f16, take candle's ops.
            let at = a.transpose(1, 2)?;
            assert!(!at.is_contiguous());
            close(
                &add(&at, &b.transpose(1, 2)?)?,
                &(&at + &b.transpose(1, 2)?)?,
                0.0,
            )?;
            let (a16, b16) = (a.to_dtype(DType::F16)?, b.to_dtype(DType::F16)?);
            assert_eq!(add(&a16, &b16)?.dtype(), DType::F16);
            close(
                &add(&a16, &b16)?.to_dtype(DType::F32)?,
                &(&a16 + &b16)?.to_dtype(DType::F32)?,
                0.0,
            )?;
        }
        // Scores of 2 sequences x 3 heads x 5 query rows against 7 keys, and a 5 x 7 mask.
        let scores = Tensor::from_vec(uniform(2 * 3 * 5 * 7, 3), (2, 3, 5, 7), &dev)?;
        let mask = Tensor::from_vec(uniform(5 * 7, 4), (5, 7), &dev)?;
        let want = scores.broadcast_add(&mask)?;
        close(&add_mask(&scores, &mask)?, &want, 0.0)?;
        close(
            &add_mask(&scores.to_dtype(DType::F16)?, &mask.to_dtype(DType::F16)?)?
                .to_dtype(DType::F32)?,
            &want,
            4e-3,
        )?;
        Ok(())
    }

    #[test]
    fn mismatched_inputs_are_refused_with_their_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let scores = Tensor::zeros((2, 5, 7), DType::F32, &dev)?;
        let mask = Tensor::zeros((4, 7), DType::F32, &dev)?;
        let err = add_mask(&scores, &mask).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("[2, 5, 7]") && e.contains("[4, 7]")),
            "{err:?}"
        );
        let odd = Tensor::zeros((2, 5), DType::F32, &dev)?;
        let err = swiglu(&odd).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("odd")), "{err:?}");
        Ok(())
    }
}
