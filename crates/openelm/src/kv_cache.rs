//! One layer's KV cache: the keys and values of every position so far, each in one tensor
//! `[B, G, capacity, hd]` that grows in steps, so that appending a position writes only that
//! position.
//!
//! A prompt appends through [`KvCache::append`] (tensors, any device). The CPU decode step
//! appends its one position from host f32 rows with [`KvCache::append_rows`], which writes
//! them into the cache's storage in its dtype: no intermediate tensors, conversions or
//! copies (that bookkeeping cost about 4 us per layer per token with tensors).

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor};

use crate::{Error, Result};

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct KvCache {
    /// Keys and values, `[B, G, capacity, hd]`, allocated on the first append.
    k: Option<Tensor>,
    v: Option<Tensor>,
    /// Positions held.
    len: usize,
    /// Positions the tensors grow by when full.
    step: usize,
}

impl KvCache {
    /// An empty cache that grows `step` positions at a time.
    pub(crate) fn new(step: usize) -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
            step: step.max(1),
        }
    }

    /// Positions held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Forgets every position and frees the tensors.
    pub(crate) fn reset(&mut self) {
        self.k = None;
        self.v = None;
        self.len = 0;
    }

    /// Appends `k` and `v` (`[B, G, S, hd]`, the cache's dtype and device) and returns every
    /// cached key and value, `[B, G, len, hd]` views of the cache.
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, g, s, hd) = k.dims4()?;
        if v.dims4()? != (b, g, s, hd) {
            return Err(Error::InvalidArgument(format!(
                "KV cache: keys {:?} and values {:?} differ in shape",
                k.dims(),
                v.dims()
            )));
        }
        let pos = self.len;
        let (kc, vc) = self.reserve((b, g, hd), s, k.dtype(), k.device())?;
        kc.slice_set(&k.contiguous()?, 2, pos)?;
        vc.slice_set(&v.contiguous()?, 2, pos)?;
        self.len += s;
        self.views()
    }

    /// Appends one position of `b` sequences on the CPU from host f32 rows: `k` and `v` each
    /// hold `b * g * hd` values (sequence, then head, then the head's values), written into
    /// the cache in `dtype` (f32, f16 or bf16). Returns every cached key and value, as
    /// [`append`](Self::append) does.
    pub(crate) fn append_rows(
        &mut self,
        k: &[f32],
        v: &[f32],
        (b, g, hd): (usize, usize, usize),
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        if k.len() != b * g * hd || v.len() != b * g * hd {
            return Err(Error::InvalidArgument(format!(
                "KV cache: {} keys and {} values for {b} x {g} heads of {hd}",
                k.len(),
                v.len()
            )));
        }
        let pos = self.len;
        let (kc, vc) = self.reserve((b, g, hd), 1, dtype, &Device::Cpu)?;
        kc.inplace_op1(&WriteRows { rows: k, pos })?;
        vc.inplace_op1(&WriteRows { rows: v, pos })?;
        self.len += 1;
        self.views()
    }

    /// The keys and values held, `[B, G, len, hd]` views.
    fn views(&self) -> Result<(Tensor, Tensor)> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) => Ok((k.narrow(2, 0, self.len)?, v.narrow(2, 0, self.len)?)),
            _ => Err(Error::InvalidArgument("KV cache: nothing appended".into())),
        }
    }

    /// The cache's tensors with room for `more` positions after the held ones, allocated or
    /// grown (by whole steps, keeping what is held) as needed.
    fn reserve(
        &mut self,
        (b, g, hd): (usize, usize, usize),
        more: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(&Tensor, &Tensor)> {
        let need = self.len + more;
        let fits = |t: &Tensor| -> Result<bool> {
            let (tb, tg, cap, thd) = t.dims4()?;
            if (tb, tg, thd) != (b, g, hd) || t.dtype() != dtype {
                return Err(Error::InvalidArgument(format!(
                    "KV cache holds {:?} {:?}; appending [{b}, {g}, _, {hd}] {dtype:?}",
                    t.dims(),
                    t.dtype()
                )));
            }
            Ok(cap >= need)
        };
        let grow = |old: Option<&Tensor>, len: usize, step: usize| -> Result<Tensor> {
            let cap = need.div_ceil(step) * step;
            let t = Tensor::zeros((b, g, cap, hd), dtype, device)?;
            if let Some(old) = old.filter(|_| len > 0) {
                t.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            Ok(t)
        };
        let k = match self.k.take() {
            Some(t) if fits(&t)? => t,
            old => grow(old.as_ref(), self.len, self.step)?,
        };
        let v = match self.v.take() {
            Some(t) if fits(&t)? => t,
            old => grow(old.as_ref(), self.len, self.step)?,
        };
        Ok((&*self.k.insert(k), &*self.v.insert(v)))
    }
}

/// Writes `rows` (`B * G` rows of `hd` f32 values) at position `pos` of a `[B, G, cap, hd]`
/// cache tensor, converted to its dtype.
struct WriteRows<'a> {
    rows: &'a [f32],
    pos: usize,
}

impl InplaceOp1 for WriteRows<'_> {
    fn name(&self) -> &'static str {
        "openelm-kv-cache-write"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (b, g, cap, hd) = layout.shape().dims4()?;
        let Some((start, _)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: the cache must be contiguous", self.name());
        };
        if self.pos >= cap || self.rows.len() != b * g * hd {
            candle_core::bail!(
                "{}: {} values at position {} of {:?}",
                self.name(),
                self.rows.len(),
                self.pos,
                layout.shape()
            );
        }
        /// Copies each source row to its place, converting with `f` (a whole row at a
        /// time: the slice conversions use the CPU's f16 instructions where it has them).
        fn write<T>(
            dst: &mut [T],
            rows: &[f32],
            (start, cap, hd, pos): (usize, usize, usize, usize),
            f: impl Fn(&mut [T], &[f32]),
        ) -> candle_core::Result<()> {
            for (i, row) in rows.chunks_exact(hd).enumerate() {
                let at = start + (i * cap + pos) * hd;
                let Some(d) = dst.get_mut(at..at + hd) else {
                    candle_core::bail!("KV cache write past its storage");
                };
                f(d, row);
            }
            Ok(())
        }
        use half::slice::HalfFloatSliceExt;
        let at = (start, cap, hd, self.pos);
        match storage {
            CpuStorage::F32(d) => write(d, self.rows, at, |d, r| d.copy_from_slice(r)),
            CpuStorage::F16(d) => write(d, self.rows, at, |d, r| d.convert_from_f32_slice(r)),
            CpuStorage::BF16(d) => write(d, self.rows, at, |d, r| d.convert_from_f32_slice(r)),
            _ => candle_core::bail!(
                "{}: the cache is {:?}; expected f32, f16 or bf16",
                self.name(),
                candle_core::backend::BackendStorage::dtype(storage)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    }

    #[test]
    fn rows_and_tensors_append_the_same_cache_across_growth() -> Result<()> {
        let dev = Device::Cpu;
        let (b, g, hd) = (2, 3, 8);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            // Step 4: the prompt of 3 fills most of the first step, and the decoded positions
            // grow the cache twice.
            let (mut by_rows, mut by_tensors) = (KvCache::new(4), KvCache::new(4));
            let prompt_k = Tensor::from_vec(values(b * g * 3 * hd, 1), (b, g, 3, hd), &dev)?
                .to_dtype(dtype)?;
            let prompt_v = (&prompt_k * 2.0)?;
            by_rows.append(&prompt_k, &prompt_v)?;
            by_tensors.append(&prompt_k, &prompt_v)?;
            let mut last = None;
            for step in 0..7 {
                let k = values(b * g * hd, 10 + step);
                let v = values(b * g * hd, 20 + step);
                let got = by_rows.append_rows(&k, &v, (b, g, hd), dtype)?;
                let kt = Tensor::from_vec(k, (b, g, 1, hd), &dev)?.to_dtype(dtype)?;
                let vt = Tensor::from_vec(v, (b, g, 1, hd), &dev)?.to_dtype(dtype)?;
                let want = by_tensors.append(&kt, &vt)?;
                last = Some((got, want));
            }
            let ((gk, gv), (wk, wv)) =
                last.ok_or_else(|| Error::InvalidArgument("no steps ran".into()))?;
            assert_eq!(by_rows.len(), 10);
            assert_eq!(gk.dims(), &[b, g, 10, hd]);
            let host = |t: &Tensor| -> Result<Vec<f32>> {
                Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
            };
            assert_eq!(host(&gk)?, host(&wk)?, "{dtype:?} keys");
            assert_eq!(host(&gv)?, host(&wv)?, "{dtype:?} values");
            // The prompt's positions survived the growth, unconverted beyond the dtype.
            assert_eq!(
                host(&gk.narrow(2, 0, 3)?)?,
                host(&prompt_k)?,
                "{dtype:?} prompt keys"
            );
        }
        Ok(())
    }

    #[test]
    fn mismatched_appends_are_refused_with_the_shapes() -> Result<()> {
        let mut c = KvCache::new(8);
        c.append_rows(&values(2 * 4, 1), &values(2 * 4, 2), (1, 2, 4), DType::F16)?;
        let err = c
            .append_rows(&values(3 * 4, 1), &values(3 * 4, 2), (1, 3, 4), DType::F16)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("appending [1, 3, _, 4]"), "{err}");
        let short = c.append_rows(&values(3, 1), &values(8, 2), (1, 2, 4), DType::F16);
        assert!(short.is_err());
        c.reset();
        assert_eq!(c.len(), 0);
        // After a reset any shape starts a new cache.
        c.append_rows(&values(3 * 4, 1), &values(3 * 4, 2), (1, 3, 4), DType::F32)?;
        assert_eq!(c.len(), 1);
        Ok(())
    }
}
