//! Attention of one new position over the KV cache (decoding), as one CPU op.
//!
//! While decoding, the two attention products are tiny (one query row per head against the
//! cached keys and values), and candle's general matmul asks the OS for the CPU topology on
//! every call (reading `/proc/cpuinfo` when `RAYON_NUM_THREADS` is unset): twice per layer
//! per token, which cost more than the products themselves. This op does the whole step —
//! scores, softmax in f32, weighted sum of values — in one pass, reading the cache through
//! its strides (no copy). A cache kept in f16 (see `Model::kv_cache_dtype`) is read at half
//! the bytes and widened to f32 in registers.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

use crate::simd::{Rows, Wide, attend};

/// `q [B, G, R, hd]` (already scaled, contiguous), `k`, `v` `[B, G, T, hd]` (last dim
/// contiguous) -> `[B, G, R, hd]`: for each KV head `g`, its `R` query heads attend over all
/// `T` cached positions. `q` in f32; `k` and `v` both in f32 or both in f16.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeAttention;

/// The op's name, in its errors.
const NAME: &str = "openelm-decode-attention";

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match (sq, sk, sv) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                decode_attention(q, (lq, lk, lv), k, v)
            }
            (CpuStorage::F32(q), CpuStorage::F16(k), CpuStorage::F16(v)) => {
                decode_attention(q, (lq, lk, lv), k, v)
            }
            _ => candle_core::bail!("{NAME}: q must be f32, and k and v both f32 or both f16"),
        }
    }
}

/// [`DecodeAttention`] on cached keys and values of type `T`.
fn decode_attention<T: Wide>(
    q: &[f32],
    (lq, lk, lv): (&Layout, &Layout, &Layout),
    k: &[T],
    v: &[T],
) -> candle_core::Result<(CpuStorage, Shape)> {
    let Some((q0, _)) = lq.contiguous_offsets() else {
        candle_core::bail!("{NAME}: q must be contiguous");
    };
    let (b, g, r, hd) = lq.shape().dims4()?;
    let (kb, kg, t, khd) = lk.shape().dims4()?;
    if lv.shape().dims4()? != (kb, kg, t, khd) || (kb, kg, khd) != (b, g, hd) {
        candle_core::bail!(
            "{NAME}: q {:?}, k {:?}, v {:?} do not match",
            lq.shape(),
            lk.shape(),
            lv.shape()
        );
    }
    let (ks, vs) = (lk.stride(), lv.stride());
    if ks[3] != 1 || vs[3] != 1 {
        candle_core::bail!("{NAME}: k and v rows must be contiguous");
    }
    let mut out = vec![0f32; b * g * r * hd];
    let rows = |data, base, stride| Rows {
        data,
        start: base,
        stride,
        width: hd,
    };
    for bi in 0..b {
        for gi in 0..g {
            let kr = rows(k, lk.start_offset() + bi * ks[0] + gi * ks[1], ks[2]);
            let vr = rows(v, lv.start_offset() + bi * vs[0] + gi * vs[1], vs[2]);
            if !kr.holds(t) || !vr.holds(t) {
                candle_core::bail!("{NAME}: the cache layout reaches past its storage");
            }
        }
    }
    // One task per group of query rows that share a KV head: each key and value row
    // is read once per group. A model has 3 to 5 KV heads per layer; when they do not
    // split evenly over the threads, each group is halved so the threads stay busy.
    let threads = rayon::current_num_threads().max(1);
    let per_task = if (b * g) % threads == 0 {
        r
    } else {
        r.div_ceil(2)
    };
    let tasks_per_head = r.div_ceil(per_task);
    let mut parts: Vec<(usize, &mut [f32])> = Vec::with_capacity(b * g * tasks_per_head);
    for (bg, head) in out.chunks_mut(r * hd).enumerate() {
        for part in head.chunks_mut(per_task * hd) {
            parts.push((bg, part));
        }
    }
    let first_row = |bg: usize, part: usize| bg * r + part * per_task;
    parts
        .par_iter_mut()
        .enumerate()
        .for_each_init(Vec::new, |scores, (i, (bg, orows))| {
            let (bi, gi) = (*bg / g, *bg % g);
            let kr = rows(k, lk.start_offset() + bi * ks[0] + gi * ks[1], ks[2]);
            let vr = rows(v, lv.start_offset() + bi * vs[0] + gi * vs[1], vs[2]);
            let row0 = first_row(*bg, i % tasks_per_head);
            let qrows = &q[q0 + row0 * hd..q0 + row0 * hd + orows.len()];
            attend(qrows, kr, vr, t, scores, orows);
        });
    Ok((CpuStorage::F32(out), Shape::from((b, g, r, hd))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn an_f16_cache_gives_what_the_same_values_in_f32_give() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 2.0)
                .collect()
        };
        let (g, r, hd) = (2, 3, 64);
        for t in [1, 17, 40] {
            let q = Tensor::from_vec(values(g * r * hd, 1), (1, g, r, hd), &dev)?;
            // Cached rows as the KV cache holds them: a prefix of a longer allocation.
            let cache = |seed| -> candle_core::Result<Tensor> {
                Tensor::from_vec(values(g * 50 * hd, seed), (1, g, 50, hd), &dev)?
                    .to_dtype(DType::F16)?
                    .narrow(2, 0, t)
            };
            let (k16, v16) = (cache(2)?, cache(3)?);
            let (k32, v32) = (k16.to_dtype(DType::F32)?, v16.to_dtype(DType::F32)?);
            let half = q
                .apply_op3_no_bwd(&k16, &v16, &DecodeAttention)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let full = q
                .apply_op3_no_bwd(&k32, &v32, &DecodeAttention)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            // Widening is exact and the block kernels are the same; only the keys after the
            // last whole block are summed in another order.
            for (i, (a, b)) in half.iter().zip(&full).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{t} positions, {i}: {a} vs {b}"
                );
            }
            // Mixed caches are refused.
            assert!(q.apply_op3_no_bwd(&k16, &v32, &DecodeAttention).is_err());
        }
        Ok(())
    }
}
