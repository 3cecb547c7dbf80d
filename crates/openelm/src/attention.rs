//! Attention of one new position over the KV cache (decoding), as one CPU op.
//!
//! While decoding, the two attention products are tiny (one query row per head against the
//! cached keys and values), and candle's general matmul asks the OS for the CPU topology on
//! every call (reading `/proc/cpuinfo` when `RAYON_NUM_THREADS` is unset): twice per layer
//! per token, which cost more than the products themselves. This op does the whole step —
//! scores, softmax in f32, weighted sum of values — in one pass, reading the cache through
//! its strides (no copy).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

/// `q [B, G, R, hd]` (already scaled, contiguous), `k`, `v` `[B, G, T, hd]` (last dim
/// contiguous) -> `[B, G, R, hd]`: for each KV head `g`, its `R` query heads attend over all
/// `T` cached positions. f32 only.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeAttention;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "openelm-decode-attention"
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
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (sq, sk, sv) else {
            candle_core::bail!("{}: q, k and v must be f32", self.name());
        };
        let Some((q0, _)) = lq.contiguous_offsets() else {
            candle_core::bail!("{}: q must be contiguous", self.name());
        };
        let (b, g, r, hd) = lq.shape().dims4()?;
        let (kb, kg, t, khd) = lk.shape().dims4()?;
        if lv.shape().dims4()? != (kb, kg, t, khd) || (kb, kg, khd) != (b, g, hd) {
            candle_core::bail!(
                "{}: q {:?}, k {:?}, v {:?} do not match",
                self.name(),
                lq.shape(),
                lk.shape(),
                lv.shape()
            );
        }
        let (ks, vs) = (lk.stride(), lv.stride());
        if ks[3] != 1 || vs[3] != 1 {
            candle_core::bail!("{}: k and v rows must be contiguous", self.name());
        }
        let mut out = vec![0f32; b * g * r * hd];
        // One task per (batch, KV head): its query heads, its slice of the cache.
        out.par_chunks_mut(r * hd)
            .enumerate()
            .for_each(|(bg, out)| {
                let (bi, gi) = (bg / g, bg % g);
                let kbase = lk.start_offset() + bi * ks[0] + gi * ks[1];
                let vbase = lv.start_offset() + bi * vs[0] + gi * vs[1];
                let mut p = vec![0f32; t];
                for (ri, orow) in out.chunks_exact_mut(hd).enumerate() {
                    let row = bg * r + ri;
                    let qrow = &q[q0 + row * hd..q0 + (row + 1) * hd];
                    for (j, pj) in p.iter_mut().enumerate() {
                        let at = kbase + j * ks[2];
                        *pj = dot(qrow, &k[at..at + hd]);
                    }
                    let max = p.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                    let mut sum = 0f32;
                    for pj in p.iter_mut() {
                        *pj = (*pj - max).exp();
                        sum += *pj;
                    }
                    let inv = 1.0 / sum;
                    for (j, &pj) in p.iter().enumerate() {
                        let at = vbase + j * vs[2];
                        let w = pj * inv;
                        for (o, &x) in orow.iter_mut().zip(&v[at..at + hd]) {
                            *o += w * x;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, g, r, hd))))
    }
}
