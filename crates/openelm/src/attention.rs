//! Attention over the KV cache on the CPU, without score tensors.
//!
//! [`CausalAttention`] is one op for any run of new positions (a prompt, or one decoded
//! position through the tensor path): the scores, the causal mask applied by position, the
//! softmax in f32 and the weighted sum of values in one pass, reading the cache through its
//! strides (no copy). A cache kept in f16 (see `Model::kv_cache_dtype`) is read at half the
//! bytes and widened to f32 in registers. As tensor ops, a prompt of 1024 tokens made score
//! tensors of 84 MB per layer, and while decoding candle's general matmul asked the OS for
//! the CPU topology on every call (reading `/proc/cpuinfo` when `RAYON_NUM_THREADS` is
//! unset), which cost more than the products themselves.
//!
//! The model's one-token path runs the same arithmetic as [`decode_shares`]: the query rows
//! cut into one part per thread, run by the decode helpers (see `helper`) like a product's
//! rows, with no tensor op at all. Through rayon, an op's tasks cost about 40% more than the
//! step's arithmetic on this machine.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::helper::Share;
use crate::simd::{Rows, Wide, attend};

/// The attention ops' name in the errors they share (the layouts' checks).
const NAME: &str = "openelm-attention";

/// The shapes of an attention step: `b` sequences, `g` KV heads of `r` query heads
/// each, heads of `hd` values, `t` cached positions.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    g: usize,
    r: usize,
    hd: usize,
    t: usize,
}

impl Dims {
    /// Checks `q`, `k` and `v`'s layouts against each other and `k` and `v`'s against their
    /// storages; `q_len` is the length of `q`'s storage.
    fn of<T>(
        (lq, lk, lv): (&Layout, &Layout, &Layout),
        q_len: usize,
        k: &[T],
        v: &[T],
    ) -> candle_core::Result<Self> {
        let Some((q0, q1)) = lq.contiguous_offsets() else {
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
        if q0 != 0 || q1 > q_len {
            candle_core::bail!("{NAME}: q must start its storage");
        }
        if lk.stride()[3] != 1 || lv.stride()[3] != 1 {
            candle_core::bail!("{NAME}: k and v rows must be contiguous");
        }
        let d = Self { b, g, r, hd, t };
        for bg in 0..b * g {
            if !d.rows(k, lk, bg).holds(t) || !d.rows(v, lv, bg).holds(t) {
                candle_core::bail!("{NAME}: the cache layout reaches past its storage");
            }
        }
        Ok(d)
    }

    /// The cached rows of KV head `bg` (sequence `bg / g`, head `bg % g`) in `data`, laid
    /// out as `l`.
    fn rows<'a, T>(&self, data: &'a [T], l: &Layout, bg: usize) -> Rows<'a, T> {
        let s = l.stride();
        Rows {
            data,
            start: l.start_offset() + (bg / self.g) * s[0] + (bg % self.g) * s[1],
            stride: s[2],
            width: self.hd,
        }
    }

    /// Query rows in all: one per query head of every sequence.
    fn query_rows(&self) -> usize {
        self.b * self.g * self.r
    }
}

/// Query rows `first..first + out.len() / hd` (counted over every sequence and head, `q`'s
/// row order) attending over the cache: each KV head the rows touch is read once for them.
fn attend_rows<T: Wide>(
    q: &[f32],
    (k, lk): (&[T], &Layout),
    (v, lv): (&[T], &Layout),
    d: Dims,
    first: usize,
    out: &mut [f32],
) {
    if d.hd == 0 || d.r == 0 {
        return;
    }
    let mut scores = Vec::new();
    let (mut row, mut rest) = (first, out);
    // One KV head's rows at a time: the first part may start inside a head.
    while !rest.is_empty() {
        let bg = row / d.r;
        let n = (d.r - row % d.r).min(rest.len() / d.hd);
        if n == 0 {
            break;
        }
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(n * d.hd);
        let qrows = q.get(row * d.hd..(row + n) * d.hd).unwrap_or(&[]);
        attend(
            qrows,
            d.rows(k, lk, bg),
            d.rows(v, lv, bg),
            d.t,
            &mut scores,
            mine,
        );
        row += n;
        rest = tail;
    }
}

/// `q [B, G, R * S, hd]` (already scaled, contiguous; row `r * S + i` is query head `r` of
/// KV head `g` at the `i`-th of `S` new positions), `k`, `v` `[B, G, T, hd]` (last dim
/// contiguous; the last `S` of the `T` positions are the new ones) -> `[B, G, S, R, hd]`:
/// causal attention of a prompt (or any run of new positions), new position `i` attending
/// over cached positions `0..T - S + i + 1`. `q` in f32; `k` and `v` both in f32 or both in
/// f16.
///
/// The same arithmetic as the scores, mask, softmax and product of tensor ops, without the
/// `[B, G, R * S, T]` score tensors: for a prompt of 1024 tokens those were 84 MB per layer
/// (and as much again for the mask's sum and the softmax), whose allocation, page faults
/// and passes cost more than the products. Each new position's `R` query heads read their
/// KV head's keys and values once, as a decode step's do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CausalAttention {
    /// New positions: the last `s` of the cached ones.
    pub(crate) s: usize,
}

/// [`CausalAttention`]'s name, in its errors.
const CAUSAL: &str = "openelm-causal-attention";

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        CAUSAL
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
                causal_attention(q, (lq, lk, lv), k, v, self.s)
            }
            (CpuStorage::F32(q), CpuStorage::F16(k), CpuStorage::F16(v)) => {
                causal_attention(q, (lq, lk, lv), k, v, self.s)
            }
            _ => candle_core::bail!("{CAUSAL}: q must be f32, and k and v both f32 or both f16"),
        }
    }
}

/// [`CausalAttention`] on cached keys and values of type `T`: one task per new position of
/// each KV head, spread over the pool.
fn causal_attention<T: Wide>(
    q: &[f32],
    (lq, lk, lv): (&Layout, &Layout, &Layout),
    k: &[T],
    v: &[T],
    s: usize,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let d = Dims::of((lq, lk, lv), q.len(), k, v)?;
    if s == 0 || !d.r.is_multiple_of(s) || d.t < s {
        candle_core::bail!(
            "{CAUSAL}: {} query rows per KV head and {} cached positions do not hold {s} new positions",
            d.r,
            d.t
        );
    }
    let (rep, past, hd) = (d.r / s, d.t - s, d.hd);
    let mut out = vec![0f32; d.query_rows() * hd];
    if rep * hd > 0 {
        out.par_chunks_mut(rep * hd).enumerate().for_each_init(
            || (Vec::new(), Vec::with_capacity(rep * hd)),
            |(scores, qs), (item, o)| {
                // Item `bg * s + i`: KV head `bg`, new position `i`; its query rows are
                // `r * s + i` of the head's `R * S`.
                let (bg, i) = (item / s, item % s);
                qs.clear();
                for r in 0..rep {
                    let at = (bg * d.r + r * s + i) * hd;
                    qs.extend_from_slice(q.get(at..at + hd).unwrap_or(&[]));
                }
                if qs.len() == rep * hd {
                    let (kr, vr) = (d.rows(k, lk, bg), d.rows(v, lv, bg));
                    attend(qs, kr, vr, past + i + 1, scores, o);
                }
            },
        );
    }
    Ok((CpuStorage::F32(out), Shape::from((d.b, d.g, s, rep, hd))))
}

/// The attention step of one decoded position as [`Share`]s for the decode helpers: `q`
/// `[B, G, R, hd]` (scaled, row-major), `k` and `v` the cache's `[B, G, T, hd]` views on the
/// CPU, both f32 or both f16. Returns the share and where each of the `parts` parts starts
/// in the `[B, G, R, hd]` output (and its end): equal numbers of query rows, so a KV head
/// may be split between two threads (each then reads its keys and values).
pub(crate) fn decode_shares(
    q: Vec<f32>,
    (b, g, r, hd): (usize, usize, usize, usize),
    k: &Tensor,
    v: &Tensor,
    parts: usize,
) -> crate::Result<(Share, Vec<usize>)> {
    let lq = Layout::contiguous((b, g, r, hd));
    let d = {
        let (ks, lk) = k.storage_and_layout();
        let (vs, lv) = v.storage_and_layout();
        match (&*ks, &*vs) {
            (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) => {
                Dims::of((&lq, lk, lv), q.len(), kd, vd)?
            }
            (Storage::Cpu(CpuStorage::F16(kd)), Storage::Cpu(CpuStorage::F16(vd))) => {
                Dims::of((&lq, lk, lv), q.len(), kd, vd)?
            }
            _ => {
                return Err(crate::Error::InvalidArgument(format!(
                    "{NAME}: the KV cache must be f32 or f16 on the CPU, found {:?} on {:?}",
                    k.dtype(),
                    k.device().location()
                )));
            }
        }
    };
    let rows = d.query_rows();
    let starts: Vec<usize> = (0..=parts.max(1))
        .map(|p| (p * rows / parts.max(1)) * hd)
        .collect();
    let row_starts: Vec<usize> = starts.iter().map(|s| s / hd.max(1)).collect();
    let (k, v) = (k.clone(), v.clone());
    let share: Share = Arc::new(move |p, out: &mut [f32]| {
        let first = row_starts.get(p).copied().unwrap_or(0);
        let (ks, lk) = k.storage_and_layout();
        let (vs, lv) = v.storage_and_layout();
        match (&*ks, &*vs) {
            (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) => {
                attend_rows(&q, (kd, lk), (vd, lv), d, first, out)
            }
            (Storage::Cpu(CpuStorage::F16(kd)), Storage::Cpu(CpuStorage::F16(vd))) => {
                attend_rows(&q, (kd, lk), (vd, lv), d, first, out)
            }
            // Checked above, and the step's views cannot change dtype.
            _ => {}
        }
    });
    Ok((share, starts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// `n` values in [-2, 2), a different run for each seed.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 2.0)
            .collect()
    }

    #[test]
    fn shares_of_any_count_give_what_the_op_gives() -> crate::Result<()> {
        let dev = Device::Cpu;
        // Odd KV-head counts, so that equal shares of query rows cut through a head.
        for (b, g, r, hd, t) in [(1, 3, 4, 64, 37), (2, 5, 2, 128, 9), (1, 1, 3, 24, 20)] {
            for dtype in [DType::F32, DType::F16] {
                let q = values(b * g * r * hd, 1);
                let qt = Tensor::from_vec(q.clone(), (b, g, r, hd), &dev)?;
                // The cache as the model holds it: views of a longer allocation.
                let cache = |seed| -> candle_core::Result<Tensor> {
                    Tensor::from_vec(values(b * g * 50 * hd, seed), (b, g, 50, hd), &dev)?
                        .to_dtype(dtype)?
                        .narrow(2, 0, t)
                };
                let (k, v) = (cache(2)?, cache(3)?);
                let want = qt
                    .apply_op3_no_bwd(&k, &v, &CausalAttention { s: 1 })?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                for parts in [1, 2, 3, 5] {
                    let (share, starts) = decode_shares(q.clone(), (b, g, r, hd), &k, &v, parts)?;
                    assert_eq!(starts.len(), parts + 1);
                    assert_eq!(starts.last(), Some(&want.len()));
                    let mut got = vec![f32::NAN; want.len()];
                    for (p, w) in starts.windows(2).enumerate() {
                        share(p, &mut got[w[0]..w[1]]);
                    }
                    assert_eq!(
                        got, want,
                        "{b}x{g}x{r}x{hd}, {t} positions, {dtype:?}, {parts} parts"
                    );
                }
            }
        }
        // A cache the kernels cannot read is refused up front, naming what is wrong.
        let k = Tensor::zeros((1, 2, 5, 8), DType::BF16, &dev)?;
        let err = decode_shares(vec![0.0; 2 * 8], (1, 2, 1, 8), &k, &k, 2)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("f32 or f16") && err.contains("BF16"), "{err}");
        Ok(())
    }

    #[test]
    fn causal_attention_gives_what_masked_tensor_ops_give() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // (sequences, KV heads, query heads per KV head, head width, positions before, new
        // positions): the x86 kernels' widths and a portable one, with and without earlier
        // positions, one new position and several.
        for (b, g, rep, hd, past, s) in [
            (1, 3, 4, 64, 0, 9),
            (2, 2, 2, 128, 5, 4),
            (1, 1, 3, 24, 7, 1),
            (1, 2, 1, 64, 0, 33),
        ] {
            let t = past + s;
            for dtype in [DType::F32, DType::F16] {
                let q =
                    Tensor::from_vec(values(b * g * rep * s * hd, 1), (b, g, rep * s, hd), &dev)?;
                let q = (q * 0.3)?;
                // The cache as the model holds it: views of a longer allocation.
                let cache = |seed| -> candle_core::Result<Tensor> {
                    Tensor::from_vec(values(b * g * 50 * hd, seed), (b, g, 50, hd), &dev)?
                        .to_dtype(dtype)?
                        .narrow(2, 0, t)
                };
                let (k, v) = (cache(2)?, cache(3)?);
                let got = q.apply_op3_no_bwd(&k, &v, &CausalAttention { s })?;
                assert_eq!(got.dims(), &[b, g, s, rep, hd]);
                // Row `r * s + i` may see positions `0..=past + i`.
                let mask: Vec<f32> = (0..rep * s)
                    .flat_map(|row| {
                        (0..t).map(move |j| {
                            if j > past + row % s {
                                f32::NEG_INFINITY
                            } else {
                                0.0
                            }
                        })
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (rep * s, t), &dev)?;
                let (k32, v32) = (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
                let scores = q.matmul(&k32.t()?)?.broadcast_add(&mask)?;
                let want = candle_nn::ops::softmax_last_dim(&scores)?
                    .matmul(&v32)?
                    .reshape((b, g, rep, s, hd))?
                    .transpose(2, 3)?;
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    diff < 1e-5,
                    "{b}x{g}x{rep}x{hd}, {past} + {s} positions, {dtype:?}: off by {diff}"
                );
            }
        }
        // New positions the cache cannot hold are refused, naming the op.
        let (q, k) = (
            Tensor::zeros((1, 1, 6, 8), DType::F32, &dev)?,
            Tensor::zeros((1, 1, 2, 8), DType::F32, &dev)?,
        );
        let err = q
            .apply_op3_no_bwd(&k, &k, &CausalAttention { s: 3 })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(CAUSAL), "{err}");
        Ok(())
    }

    #[test]
    fn an_f16_cache_gives_what_the_same_values_in_f32_give() -> candle_core::Result<()> {
        let dev = Device::Cpu;
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
                .apply_op3_no_bwd(&k16, &v16, &CausalAttention { s: 1 })?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let full = q
                .apply_op3_no_bwd(&k32, &v32, &CausalAttention { s: 1 })?
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
            assert!(
                q.apply_op3_no_bwd(&k16, &v32, &CausalAttention { s: 1 })
                    .is_err()
            );
        }
        Ok(())
    }
}
