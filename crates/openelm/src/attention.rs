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

use crate::simd::{Rows, attend};

/// `q [B, G, R, hd]` (already scaled, contiguous), `k`, `v` `[B, G, T, hd]` (last dim
/// contiguous) -> `[B, G, R, hd]`: for each KV head `g`, its `R` query heads attend over all
/// `T` cached positions. f32 only.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeAttention;

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
        let rows = |data, base, stride| Rows {
            data,
            start: base,
            stride,
            width: hd,
        };
        for bi in 0..b {
            for gi in 0..g {
                let kr = rows(&k[..], lk.start_offset() + bi * ks[0] + gi * ks[1], ks[2]);
                let vr = rows(&v[..], lv.start_offset() + bi * vs[0] + gi * vs[1], vs[2]);
                if !kr.holds(t) || !vr.holds(t) {
                    candle_core::bail!(
                        "{}: the cache layout reaches past its storage",
                        self.name()
                    );
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
                let kr = rows(&k[..], lk.start_offset() + bi * ks[0] + gi * ks[1], ks[2]);
                let vr = rows(&v[..], lv.start_offset() + bi * vs[0] + gi * vs[1], vs[2]);
                let row0 = first_row(*bg, i % tasks_per_head);
                let qrows = &q[q0 + row0 * hd..q0 + row0 * hd + orows.len()];
                attend(qrows, kr, vr, t, scores, orows);
            });
        Ok((CpuStorage::F32(out), Shape::from((b, g, r, hd))))
    }
}
