//! The element-wise steps of decoding one token on host f32 vectors: RMS norm, rotary
//! embedding, SwiGLU and the residual sum.
//!
//! While decoding, every activation is one row of a few thousand values, so the cost of a
//! tensor op is its bookkeeping (an allocation, a layout, often a thread-pool round trip),
//! not its arithmetic; a layer made of two dozen such ops spent about a fifth of a quantized
//! token's time outside the matrix products. The model's one-token path
//! (`Model::hidden` with one position, f32 on the CPU) runs these plain loops between its
//! matrix products instead, with the same arithmetic as candle's ops.

/// RMS norm of each `w.len()`-wide row of `x`, scaled by `w`: `x / sqrt(mean(x^2) + eps) * w`.
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    rms_norm_in_place(&mut out, w, eps);
    out
}

/// [`rms_norm`] in place.
pub(crate) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    if d == 0 {
        return;
    }
    for row in x.chunks_exact_mut(d) {
        let mean = sum_of_squares(row) / d as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * inv * g;
        }
    }
}

/// `sum(x[i]^2)`, in 16 interleaved partial sums: a single running sum is one chain of
/// dependent adds (four cycles each), which made the norms of a token cost more than its
/// attention arithmetic.
fn sum_of_squares(x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Rotary embedding of one head in place, GPT-NeoX style (the first half of the head
/// rotates with the second): `cos` and `sin` hold the position's `head.len() / 2` angles.
pub(crate) fn rotate(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = head.len() / 2;
    let (a, b) = head.split_at_mut(half);
    for (((x1, x2), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
        let (u, v) = (*x1, *x2);
        *x1 = u * c - v * s;
        *x2 = u * s + v * c;
    }
}

/// SwiGLU of each row of `u` (`rows` rows of `2F`): `silu(first half) * second half`, `F`
/// values per row.
pub(crate) fn swiglu(u: &[f32], rows: usize) -> Vec<f32> {
    let width = u.len().checked_div(rows).unwrap_or(0);
    let f = width / 2;
    let mut out = Vec::with_capacity(rows * f);
    if f == 0 {
        return out;
    }
    for row in u.chunks_exact(width) {
        out.extend(row[..f].iter().map(|g| -g));
    }
    crate::simd::exp_in_place(&mut out);
    for (o, row) in out.chunks_exact_mut(f).zip(u.chunks_exact(width)) {
        let (gate, up) = row.split_at(f);
        for ((o, &g), &v) in o.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + *o) * v;
        }
    }
    out
}

/// `h += d`, element by element.
pub(crate) fn add(h: &mut [f32], d: &[f32]) {
    for (h, d) in h.iter_mut().zip(d) {
        *h += d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::tests::values;
    use candle_core::{Device, Tensor};

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    #[test]
    fn rms_norm_matches_candle() -> candle_core::Result<()> {
        let (x, w) = (values(3 * 40, 1), values(40, 2));
        let want = candle_nn::ops::rms_norm(
            &Tensor::from_vec(x.clone(), (3, 40), &Device::Cpu)?,
            &Tensor::from_vec(w.clone(), 40, &Device::Cpu)?,
            1e-6,
        )?
        .flatten_all()?
        .to_vec1::<f32>()?;
        close(&rms_norm(&x, &w, 1e-6), &want, 1e-5);
        Ok(())
    }

    #[test]
    fn rotate_matches_candle_rope() -> candle_core::Result<()> {
        let hd = 16;
        let x = values(2 * hd, 3);
        let angles: Vec<f32> = (0..hd / 2).map(|i| 0.3 + i as f32 * 0.7).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let dev = Device::Cpu;
        let want = candle_nn::rotary_emb::rope(
            &Tensor::from_vec(x.clone(), (1, 2, 1, hd), &dev)?,
            &Tensor::from_vec(cos.clone(), (1, hd / 2), &dev)?,
            &Tensor::from_vec(sin.clone(), (1, hd / 2), &dev)?,
        )?
        .flatten_all()?
        .to_vec1::<f32>()?;
        let mut got = x;
        for head in got.chunks_exact_mut(hd) {
            rotate(head, &cos, &sin);
        }
        close(&got, &want, 1e-6);
        Ok(())
    }

    #[test]
    fn swiglu_matches_candle() -> candle_core::Result<()> {
        let u = values(2 * 24, 4)
            .iter()
            .map(|v| v * 8.0)
            .collect::<Vec<_>>();
        let want = candle_nn::ops::swiglu(&Tensor::from_vec(u.clone(), (2, 24), &Device::Cpu)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        close(&swiglu(&u, 2), &want, 1e-6);
        assert!(swiglu(&[], 0).is_empty());
        Ok(())
    }
}
