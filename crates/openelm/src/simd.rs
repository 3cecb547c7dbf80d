//! f32 vector helpers for the decode path (dot products and `y += a * x`, attention over the
//! KV cache, `exp`), with AVX2 and FMA, or AVX-512, chosen at run time on x86-64.
//!
//! The crate is compiled for baseline x86-64, where LLVM vectorises these loops to 4-lane
//! SSE without fused multiply-adds. Attention over the KV cache is made of exactly these two
//! loops, so on CPUs that have them the 8-lane FMA versions in the `x86` submodule run
//! instead (16-lane with AVX-512, see [`Kernels`]); elsewhere (and as the reference in tests)
//! portable loops with several accumulators do the same arithmetic.

/// Whether the CPU has AVX2, FMA and F16C (checked once): the features the x86 kernels of
/// this crate are compiled for.
pub(crate) fn avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            has!("avx2") && has!("fma") && has!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Whether the CPU has AVX-512 F, BW and VNNI and GFNI as well (checked once), for the block
/// and attention kernels that use them: Intel from Ice Lake on and AMD from Zen 4 on (not
/// Cascade Lake, which has VNNI without GFNI and takes the AVX2 kernels).
/// `ELMROUTE_NO_AVX512` set in the environment turns them off (to compare, or on a CPU that
/// slows down on 512-bit work).
pub(crate) fn avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            std::env::var_os("ELMROUTE_NO_AVX512").is_none()
                && avx2()
                && has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vnni")
                && has!("gfni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Which loops [`attend`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernels {
    Portable,
    Avx2,
    Avx512,
}

impl Kernels {
    /// The fastest this CPU has.
    pub(crate) fn best() -> Self {
        if avx512() {
            Self::Avx512
        } else if avx2() {
            Self::Avx2
        } else {
            Self::Portable
        }
    }
}

/// `sum(a[i] * b[i])` over the shorter of the two.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: compiled for AVX2 and FMA, which `avx2()` found on this CPU.
        #[allow(unsafe_code)]
        return unsafe { x86::dot(a, b) };
    }
    dot_portable(a, b)
}

/// `y[i] += a * x[i]` over the shorter of the two.
#[inline]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let (y, x) = (&mut y[..n], &x[..n]);
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as for `dot`.
        #[allow(unsafe_code)]
        return unsafe { x86::axpy(y, a, x) };
    }
    axpy_portable(y, a, x)
}

/// What a KV cache holds: f32, or f16 (half the bytes to read; widened in registers).
pub(crate) trait CacheValue: Copy + Default + Send + Sync + 'static {
    /// `sum(q[i] * row[i])` over the shorter of the two.
    fn dot_row(q: &[f32], row: &[Self]) -> f32;
    /// `y[i] += a * row[i]` over the shorter of the two.
    fn axpy_row(y: &mut [f32], a: f32, row: &[Self]);
}

impl CacheValue for f32 {
    fn dot_row(q: &[f32], row: &[f32]) -> f32 {
        dot(q, row)
    }

    fn axpy_row(y: &mut [f32], a: f32, row: &[f32]) {
        axpy(y, a, row)
    }
}

impl CacheValue for half::f16 {
    fn dot_row(q: &[f32], row: &[Self]) -> f32 {
        q.iter().zip(row).map(|(&a, b)| a * b.to_f32()).sum()
    }

    fn axpy_row(y: &mut [f32], a: f32, row: &[Self]) {
        for (y, x) in y.iter_mut().zip(row) {
            *y += a * x.to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::Wide;
/// Elsewhere every [`CacheValue`] takes the portable loops.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait Wide: CacheValue {}
#[cfg(not(target_arch = "x86_64"))]
impl<T: CacheValue> Wide for T {}

/// Rows of a strided matrix: row `j` is `width` values at `start + j * stride`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows<'a, T = f32> {
    pub(crate) data: &'a [T],
    pub(crate) start: usize,
    pub(crate) stride: usize,
    pub(crate) width: usize,
}

impl<'a, T> Rows<'a, T> {
    /// Whether rows `0..count` all lie inside `data`.
    pub(crate) fn holds(&self, count: usize) -> bool {
        count == 0
            || (count - 1)
                .checked_mul(self.stride)
                .and_then(|o| o.checked_add(self.start + self.width))
                .is_some_and(|end| end <= self.data.len())
    }

    /// Rows `0..count` as one slice when they are contiguous (`stride == width`); empty
    /// otherwise or past the end of `data`.
    fn rows(&self, count: usize) -> &'a [T] {
        if self.stride != self.width {
            return &[];
        }
        self.data
            .get(self.start..self.start + count * self.width)
            .unwrap_or(&[])
    }

    /// Row `j` (empty past the end of `data`, which [`holds`](Self::holds) rules out).
    #[inline(always)]
    fn row(&self, j: usize) -> &'a [T] {
        let at = self.start + j * self.stride;
        self.data.get(at..at + self.width).unwrap_or(&[])
    }
}

/// Query rows attending over `n` cached positions of one KV head: for each row `q_i` of
/// `q` (rows `k.width` wide), `out_i = softmax(q_i . k_j) . v_j`, the softmax in f32 with
/// its max subtracted. `q` is already scaled; `out` (as many rows as `q`) is overwritten;
/// `scores` is scratch. The rows share the keys and values, so each key and value row is
/// read from memory once for all of them and then from L1.
pub(crate) fn attend<T: Wide>(
    q: &[f32],
    k: Rows<'_, T>,
    v: Rows<'_, T>,
    n: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_with(Kernels::best(), q, k, v, n, scores, out);
}

/// [`attend`] with the given kernels (which must be ones this CPU has).
fn attend_with<T: Wide>(
    kernels: Kernels,
    q: &[f32],
    k: Rows<'_, T>,
    v: Rows<'_, T>,
    n: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = k.width;
    if hd == 0 || v.width != hd {
        return;
    }
    let rows = q.len() / hd;
    scores.clear();
    scores.resize(rows * n, 0.0);
    // The x86 kernels take heads of 64 or 128 values whose cached rows are contiguous
    // (the KV cache's layout); anything else takes the portable loops.
    #[cfg(target_arch = "x86_64")]
    let fast = kernels != Kernels::Portable
        && matches!(hd, 64 | 128)
        && k.stride == hd
        && v.stride == hd
        && k.holds(n)
        && v.holds(n);
    #[cfg(not(target_arch = "x86_64"))]
    let fast = false;
    let (kc, vc) = (k.rows(n), v.rows(n));
    if fast {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: compiled for AVX2, FMA and F16C (the `_512` ones also for AVX-512 F),
        // which `Kernels::best` found on this CPU.
        #[allow(unsafe_code)]
        unsafe {
            match (hd, kernels) {
                (64, Kernels::Avx512) => x86::scores_512::<64, T>(q, kc, vc, n, scores),
                (_, Kernels::Avx512) => x86::scores_512::<128, T>(q, kc, vc, n, scores),
                (64, _) => x86::scores::<64, T>(q, kc, n, scores),
                _ => x86::scores::<128, T>(q, kc, n, scores),
            }
        };
    } else {
        for (qr, sr) in q.chunks_exact(hd).zip(scores.chunks_exact_mut(n.max(1))) {
            for (j, s) in sr.iter_mut().enumerate() {
                *s = T::dot_row(qr, k.row(j));
            }
        }
    }
    for sr in scores.chunks_exact_mut(n.max(1)) {
        softmax_in_place(sr);
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    if fast {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        #[allow(unsafe_code)]
        unsafe {
            match (hd, kernels) {
                (64, Kernels::Avx512) => x86::weighted_sums_512::<64, 4, T>(scores, vc, n, out),
                (_, Kernels::Avx512) => x86::weighted_sums_512::<128, 2, T>(scores, vc, n, out),
                (64, _) => x86::weighted_sums::<64, T>(scores, vc, n, out),
                _ => x86::weighted_sums::<128, T>(scores, vc, n, out),
            }
        };
    } else {
        for (sr, orow) in scores.chunks_exact(n.max(1)).zip(out.chunks_exact_mut(hd)) {
            for (j, &p) in sr.iter().enumerate() {
                T::axpy_row(orow, p, v.row(j));
            }
        }
    }
}

/// `x[i] = exp(x[i])` for every element. On AVX2 CPUs eight at a time with a degree-7
/// polynomial after range reduction: within 1.2e-7 relative of the C library's `expf` over
/// [-100, 88.7] (the test allows 4e-7); inputs below -103.9 give 0, above 88.7 give
/// infinity, as `expf` does.
pub(crate) fn exp_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: compiled for AVX2 and FMA, which `avx2()` found on this CPU.
        #[allow(unsafe_code)]
        unsafe {
            x86::exp_in_place(x)
        };
        return;
    }
    x.iter_mut().for_each(|v| *v = v.exp());
}

/// Asks for every 64-byte line of `s` in L1 (a hint: nothing is read). A no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch_l1<T>(s: &[T]) {
    prefetch_lines(s, false);
}

/// Asks for every 64-byte line of `s` in L2 (a hint: nothing is read). A no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch_l2<T>(s: &[T]) {
    prefetch_lines(s, true);
}

/// [`prefetch_l1`] (`l2` false) or [`prefetch_l2`].
#[inline(always)]
fn prefetch_lines<T>(s: &[T], l2: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _MM_HINT_T1, _mm_prefetch};
        let at = s.as_ptr().cast::<i8>();
        for off in (0..std::mem::size_of_val(s)).step_by(64) {
            // SAFETY: a prefetch only hints (SSE, in every x86-64 CPU): it reads nothing
            // architecturally and cannot fault; `off` stays inside `s` in any case.
            #[allow(unsafe_code)]
            unsafe {
                if l2 {
                    _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(off));
                } else {
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(off));
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, l2);
}

/// `x = softmax(x)`: `exp(x_i - max x) / sum_j exp(x_j - max x)`. On AVX2 CPUs the max,
/// the exponentials and their sum run eight lanes at a time. A scalar fold is one long
/// chain of dependent adds: the softmax took 52 us of a token's 396 us of attention (one
/// thread, 160 positions), 39 us this way.
pub(crate) fn softmax_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: compiled for AVX2 and FMA, which `avx2()` found on this CPU.
        #[allow(unsafe_code)]
        unsafe {
            x86::softmax_in_place(x)
        };
        return;
    }
    softmax_portable(x);
}

fn softmax_portable(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    x.iter_mut().for_each(|v| *v = (*v - max).exp());
    let inv = 1.0 / x.iter().sum::<f32>();
    x.iter_mut().for_each(|v| *v *= inv);
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
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

fn axpy_portable(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// The AVX2 + FMA loops. Each function may only be called after [`avx2`] has found the
/// features; the slices have equal lengths (the callers cut them), and every load and store
/// is of exactly 8 floats taken from a checked 8-float array. (`unused_unsafe`: the blocks
/// around intrinsics are needed on older compilers and redundant on newer ones.)
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, unused_unsafe)]
mod x86 {
    use std::arch::x86_64::*;

    /// A [`super::CacheValue`] the x86 kernels load as f32 lanes.
    pub(crate) trait Wide: super::CacheValue {
        /// Eight values from a slice of exactly eight (zeros otherwise), as f32.
        ///
        /// # Safety
        /// The CPU must have AVX2 and F16C.
        unsafe fn load8(v: &[Self]) -> __m256;
        /// Sixteen values from a slice of exactly sixteen (zeros otherwise), as f32.
        ///
        /// # Safety
        /// The CPU must have AVX-512 F.
        unsafe fn load16(v: &[Self]) -> __m512;
    }

    impl Wide for f32 {
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn load8(v: &[f32]) -> __m256 {
            match <&[f32; 8]>::try_from(v) {
                // SAFETY: 8 readable floats; `loadu` needs no alignment.
                Ok(a) => unsafe { _mm256_loadu_ps(a.as_ptr()) },
                Err(_) => _mm256_setzero_ps(),
            }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load16(v: &[f32]) -> __m512 {
            match <&[f32; 16]>::try_from(v) {
                // SAFETY: 16 readable floats; `loadu` needs no alignment.
                Ok(a) => unsafe { _mm512_loadu_ps(a.as_ptr()) },
                Err(_) => _mm512_setzero_ps(),
            }
        }
    }

    impl Wide for half::f16 {
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn load8(v: &[Self]) -> __m256 {
            match <&[Self; 8]>::try_from(v) {
                // SAFETY: 16 readable bytes; `loadu` needs no alignment.
                Ok(a) => unsafe { _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().cast())) },
                Err(_) => _mm256_setzero_ps(),
            }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load16(v: &[Self]) -> __m512 {
            match <&[Self; 16]>::try_from(v) {
                // SAFETY: 32 readable bytes; `loadu` needs no alignment.
                Ok(a) => unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(a.as_ptr().cast())) },
                Err(_) => _mm512_setzero_ps(),
            }
        }
    }

    /// Lane `i` of the result is the sum of the 8 lanes of `a[i]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn sums8(a: [__m256; 8]) -> __m256 {
        let h01 = _mm256_hadd_ps(a[0], a[1]);
        let h23 = _mm256_hadd_ps(a[2], a[3]);
        let h45 = _mm256_hadd_ps(a[4], a[5]);
        let h67 = _mm256_hadd_ps(a[6], a[7]);
        let lo = _mm256_hadd_ps(h01, h23);
        let hi = _mm256_hadd_ps(h45, h67);
        _mm256_add_ps(
            _mm256_permute2f128_ps(lo, hi, 0x20),
            _mm256_permute2f128_ps(lo, hi, 0x31),
        )
    }

    /// The most values a cached row may have: the kernels take heads of 64 or 128.
    const MAX_HD: usize = 128;

    /// Rows `from..to` of `rows` (`width` values each), clipped to the slice.
    fn rows_at<T>(rows: &[T], width: usize, from: usize, to: usize) -> &[T] {
        let len = rows.len();
        rows.get((from * width).min(len)..(to * width).min(len))
            .unwrap_or(&[])
    }

    /// A block of `keys` key rows (`HD` values each) for the score kernels: `block` itself
    /// when it is whole, else (the last block) its rows copied into `pad` and followed by
    /// zero rows, whose scores the caller drops. Before, the last block's keys took one
    /// scalar dot product each (f16 widened value by value): 41 of the 186 us that the
    /// scores of a token took at 160 positions, on one thread.
    fn padded<'a, T: Copy + Default, const HD: usize>(
        block: &'a [T],
        keys: usize,
        pad: &'a mut [T; 16 * MAX_HD],
    ) -> &'a [T] {
        let len = keys * HD;
        if block.len() == len {
            return block;
        }
        let Some(pad) = pad.get_mut(..len) else {
            return &[];
        };
        let (rows, zeros) = pad.split_at_mut(block.len().min(len));
        rows.copy_from_slice(&block[..rows.len()]);
        zeros.iter_mut().for_each(|v| *v = T::default());
        pad
    }

    /// Row `i` of `scores` (`n` per row) gets `q_i . k_j` for the `n` contiguous rows of
    /// `k` (`HD` values each), eight keys at a time: eight independent accumulators, one
    /// combined horizontal sum, and each block of eight key rows stays in L1 for every query
    /// row. The last, partial block runs zero-padded.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores<const HD: usize, T: Wide>(
        q: &[f32],
        k: &[T],
        n: usize,
        scores: &mut [f32],
    ) {
        // SAFETY: loads go through `Wide::load8` (checked arrays of 8), stores to a checked
        // 8-float array; register arithmetic otherwise.
        unsafe {
            let zero = [T::default(); HD];
            let mut pad = [T::default(); 16 * MAX_HD];
            for (b, block) in k.chunks(8 * HD).enumerate() {
                let count = block.len() / HD;
                let block = padded::<T, HD>(block, 8, &mut pad);
                if block.len() != 8 * HD {
                    continue;
                }
                let rows: [&[T; HD]; 8] = std::array::from_fn(|i| {
                    <&[T; HD]>::try_from(&block[i * HD..(i + 1) * HD]).unwrap_or(&zero)
                });
                for (qr, sr) in q.chunks_exact(HD).zip(scores.chunks_exact_mut(n)) {
                    let Ok(qr) = <&[f32; HD]>::try_from(qr) else {
                        continue;
                    };
                    let mut acc = [_mm256_setzero_ps(); 8];
                    for c in 0..HD / 8 {
                        let qv = f32::load8(&qr[8 * c..8 * c + 8]);
                        for i in 0..8 {
                            acc[i] =
                                _mm256_fmadd_ps(qv, T::load8(&rows[i][8 * c..8 * c + 8]), acc[i]);
                        }
                    }
                    let mut out = [0f32; 8];
                    _mm256_storeu_ps(out.as_mut_ptr(), sums8(acc));
                    if let Some(dst) = sr.get_mut(8 * b..8 * b + count) {
                        dst.copy_from_slice(&out[..count]);
                    }
                }
            }
        }
    }

    /// Row `i` of `out` gets `sum_j p_ij * v_j` (`p` holds `n` weights per row) over the
    /// `n` contiguous rows of `v` (`HD` values each): the output row stays in `HD / 8`
    /// registers while the value rows stream past.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sums<const HD: usize, T: Wide>(
        p: &[f32],
        v: &[T],
        n: usize,
        out: &mut [f32],
    ) {
        // SAFETY: as for `scores`.
        unsafe {
            for (pr, orow) in p.chunks_exact(n).zip(out.chunks_exact_mut(HD)) {
                let mut acc = [_mm256_setzero_ps(); 16];
                for (&pj, vrow) in pr.iter().zip(v.chunks_exact(HD)) {
                    let Ok(vrow) = <&[T; HD]>::try_from(vrow) else {
                        continue;
                    };
                    let w = _mm256_set1_ps(pj);
                    for c in 0..HD / 8 {
                        acc[c] = _mm256_fmadd_ps(w, T::load8(&vrow[8 * c..8 * c + 8]), acc[c]);
                    }
                }
                for (c, o) in orow.chunks_exact_mut(8).enumerate() {
                    if let Ok(o) = <&mut [f32; 8]>::try_from(o) {
                        _mm256_storeu_ps(o.as_mut_ptr(), acc[c % 16]);
                    }
                }
            }
        }
    }

    /// Per 128-bit lane: `[x0 + x2, y0 + y2, x1 + x3, y1 + y3]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn pair16(x: __m512, y: __m512) -> __m512 {
        _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y))
    }

    /// Of two [`pair16`] results `(w, x)` and `(y, z)`: per 128-bit lane the partial sums
    /// `[w, x, y, z]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quad16(a: __m512, b: __m512) -> __m512 {
        let (a, b) = (_mm512_castps_pd(a), _mm512_castps_pd(b));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        )
    }

    /// 128-bit lanes `0 + 1` and `2 + 3` of `x`, then of `y`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lanes16(x: __m512, y: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
        )
    }

    /// Lane `i` of the result is the sum of the 16 lanes of `a[i]`: pairs of accumulators
    /// interleaved and added, halving their count at each of four steps.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sums16(a: &[__m512; 16]) -> __m512 {
        // SAFETY: register arithmetic only; the caller has AVX-512 F.
        unsafe {
            let t = [
                pair16(a[0], a[1]),
                pair16(a[2], a[3]),
                pair16(a[4], a[5]),
                pair16(a[6], a[7]),
                pair16(a[8], a[9]),
                pair16(a[10], a[11]),
                pair16(a[12], a[13]),
                pair16(a[14], a[15]),
            ];
            let u = [
                quad16(t[0], t[1]),
                quad16(t[2], t[3]),
                quad16(t[4], t[5]),
                quad16(t[6], t[7]),
            ];
            lanes16(lanes16(u[0], u[1]), lanes16(u[2], u[3]))
        }
    }

    /// [`scores`] with 512-bit vectors, sixteen keys at a time. While a block is scored,
    /// the keys two blocks on and this block's values (`v`, which the weighted sums read
    /// after the softmax) are fetched into L1: the cache is read once per token, mostly from
    /// memory, and its rows otherwise arrive one miss at a time.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn scores_512<const HD: usize, T: Wide>(
        q: &[f32],
        k: &[T],
        v: &[T],
        n: usize,
        scores: &mut [f32],
    ) {
        // SAFETY: loads go through `Wide::load16` (checked arrays of 16), stores to a checked
        // 16-float array; prefetches only hint; register arithmetic otherwise.
        unsafe {
            let mut pad = [T::default(); 16 * MAX_HD];
            super::prefetch_l1(rows_at(k, HD, 0, 32));
            for (b, block) in k.chunks(16 * HD).enumerate() {
                super::prefetch_l1(rows_at(k, HD, 16 * b + 32, 16 * b + 48));
                super::prefetch_l1(rows_at(v, HD, 16 * b, 16 * b + 16));
                let count = block.len() / HD;
                let block = padded::<T, HD>(block, 16, &mut pad);
                if block.len() != 16 * HD {
                    continue;
                }
                for (qr, sr) in q.chunks_exact(HD).zip(scores.chunks_exact_mut(n)) {
                    let mut acc = [_mm512_setzero_ps(); 16];
                    for c in 0..HD / 16 {
                        let qv = f32::load16(&qr[16 * c..16 * c + 16]);
                        for (i, a) in acc.iter_mut().enumerate() {
                            let at = i * HD + 16 * c;
                            *a = _mm512_fmadd_ps(qv, T::load16(&block[at..at + 16]), *a);
                        }
                    }
                    if count == 16 {
                        if let Some(Ok(out)) = sr
                            .get_mut(16 * b..16 * b + 16)
                            .map(<&mut [f32; 16]>::try_from)
                        {
                            _mm512_storeu_ps(out.as_mut_ptr(), sums16(&acc));
                        }
                    } else {
                        let mut out = [0f32; 16];
                        _mm512_storeu_ps(out.as_mut_ptr(), sums16(&acc));
                        if let Some(dst) = sr.get_mut(16 * b..16 * b + count) {
                            dst.copy_from_slice(&out[..count]);
                        }
                    }
                }
            }
        }
    }

    /// [`weighted_sums`] with 512-bit vectors, `R` query rows at a time (`R * HD / 16` of
    /// them fit the 16 accumulators): each value row is loaded once for the `R` rows.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sums_512<const HD: usize, const R: usize, T: Wide>(
        p: &[f32],
        v: &[T],
        n: usize,
        out: &mut [f32],
    ) {
        // SAFETY: as for `scores_512`.
        unsafe {
            let chunks = HD / 16;
            for (pr, orows) in p.chunks(R * n).zip(out.chunks_mut(R * HD)) {
                let rows = orows.len() / HD;
                let mut acc = [_mm512_setzero_ps(); 16];
                for (j, vrow) in v.chunks_exact(HD).take(n).enumerate() {
                    let mut vs = [_mm512_setzero_ps(); 8];
                    for (c, x) in vs.iter_mut().enumerate().take(chunks) {
                        *x = T::load16(&vrow[16 * c..16 * c + 16]);
                    }
                    for r in 0..R.min(rows) {
                        let w = _mm512_set1_ps(pr.get(r * n + j).copied().unwrap_or(0.0));
                        for c in 0..chunks {
                            acc[r * chunks + c] = _mm512_fmadd_ps(w, vs[c], acc[r * chunks + c]);
                        }
                    }
                }
                for (r, orow) in orows.chunks_exact_mut(HD).enumerate() {
                    for (c, o) in orow.chunks_exact_mut(16).enumerate() {
                        if let (Ok(o), Some(a)) =
                            (<&mut [f32; 16]>::try_from(o), acc.get(r * chunks + c))
                        {
                            _mm512_storeu_ps(o.as_mut_ptr(), *a);
                        }
                    }
                }
            }
        }
    }

    /// `exp` of eight lanes: `x = n ln2 + r` with `|r| <= ln2 / 2`, `e^r` by a polynomial,
    /// `2^n` built in the exponent bits. Lanes below -103.9 give 0 and above 88.7 give
    /// infinity; NaN stays NaN.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let big = _mm256_cmp_ps(x, _mm256_set1_ps(88.72), _CMP_GT_OQ);
        let tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-103.9), _CMP_LT_OQ);
        let xc = _mm256_max_ps(
            _mm256_min_ps(x, _mm256_set1_ps(88.72)),
            _mm256_set1_ps(-103.9),
        );
        let n = _mm256_round_ps(
            _mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // ln 2 split in two so that n * LN2_HI is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        // Taylor coefficients 1/k! for k = 7 down to 2, then 1 + r + r^2 * (...).
        let mut p = _mm256_set1_ps(1.0 / 5040.0);
        for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let e = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // 2^n as two factors 2^(n/2) and 2^(n - n/2), each a normal float for n in
        // [-150, 128]: their product reaches the subnormal results near -103 and the
        // largest finite ones near 88.7 without overflowing an exponent field.
        let ni = _mm256_cvtps_epi32(n);
        let half = _mm256_srai_epi32(ni, 1);
        let s1 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(half, _mm256_set1_epi32(127)),
            23,
        ));
        let s2 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)),
            23,
        ));
        let y = _mm256_mul_ps(_mm256_mul_ps(e, s1), s2);
        let y = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), big);
        let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), tiny);
        // NaN inputs: the comparisons are false and the clamps pass NaN through `min`/`max`
        // unevenly, so put them back explicitly.
        let nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
        _mm256_blendv_ps(y, x, nan)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_in_place(x: &mut [f32]) {
        // SAFETY: 8-float loads and stores on checked 8-float arrays.
        unsafe {
            let mut chunks = x.chunks_exact_mut(8);
            for c in &mut chunks {
                if let Ok(c) = <&mut [f32; 8]>::try_from(c) {
                    _mm256_storeu_ps(c.as_mut_ptr(), exp8(_mm256_loadu_ps(c.as_ptr())));
                }
            }
            let rest = chunks.into_remainder();
            if !rest.is_empty() {
                let mut tmp = [0f32; 8];
                tmp[..rest.len()].copy_from_slice(rest);
                _mm256_storeu_ps(tmp.as_mut_ptr(), exp8(_mm256_loadu_ps(tmp.as_ptr())));
                let n = rest.len();
                rest.copy_from_slice(&tmp[..n]);
            }
        }
    }

    /// The largest of the eight lanes of `v`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn max8(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        _mm_cvtss_f32(m)
    }

    /// The sum of the eight lanes of `v`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn sum8(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// [`super::softmax_in_place`] eight lanes at a time; the last partial chunk is padded
    /// with `-inf`, whose exponential adds nothing to the sum.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_in_place(x: &mut [f32]) {
        // SAFETY: 8-float loads and stores on checked 8-float arrays; register arithmetic
        // otherwise.
        unsafe {
            let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut chunks = x.chunks_exact(8);
            for c in &mut chunks {
                if let Ok(c) = <&[f32; 8]>::try_from(c) {
                    m = _mm256_max_ps(m, _mm256_loadu_ps(c.as_ptr()));
                }
            }
            let max = chunks.remainder().iter().fold(max8(m), |a, &v| a.max(v));
            let shift = _mm256_set1_ps(max);
            let mut sum = _mm256_setzero_ps();
            let mut chunks = x.chunks_exact_mut(8);
            for c in &mut chunks {
                if let Ok(c) = <&mut [f32; 8]>::try_from(c) {
                    let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), shift));
                    _mm256_storeu_ps(c.as_mut_ptr(), e);
                    sum = _mm256_add_ps(sum, e);
                }
            }
            let rest = chunks.into_remainder();
            let mut tmp = [f32::NEG_INFINITY; 8];
            tmp[..rest.len()].copy_from_slice(rest);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(tmp.as_ptr()), shift));
            _mm256_storeu_ps(tmp.as_mut_ptr(), e);
            let n = rest.len();
            rest.copy_from_slice(&tmp[..n]);
            let inv = _mm256_set1_ps(1.0 / sum8(_mm256_add_ps(sum, e)));
            let mut chunks = x.chunks_exact_mut(8);
            for c in &mut chunks {
                if let Ok(c) = <&mut [f32; 8]>::try_from(c) {
                    _mm256_storeu_ps(
                        c.as_mut_ptr(),
                        _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), inv),
                    );
                }
            }
            let inv = _mm256_cvtss_f32(inv);
            chunks.into_remainder().iter_mut().for_each(|v| *v *= inv);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: 8-float loads from checked 8-float arrays; register arithmetic otherwise.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 2];
            let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
            let tail: f32 = ca
                .remainder()
                .iter()
                .zip(cb.remainder())
                .map(|(x, y)| x * y)
                .sum();
            for (i, (x, y)) in ca.zip(cb).enumerate() {
                let (Ok(x), Ok(y)) = (<&[f32; 8]>::try_from(x), <&[f32; 8]>::try_from(y)) else {
                    continue;
                };
                acc[i % 2] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(x.as_ptr()),
                    _mm256_loadu_ps(y.as_ptr()),
                    acc[i % 2],
                );
            }
            let v = _mm256_add_ps(acc[0], acc[1]);
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s) + tail
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        // SAFETY: 8-float loads and stores on checked 8-float arrays.
        unsafe {
            let av = _mm256_set1_ps(a);
            let mut cy = y.chunks_exact_mut(8);
            let mut cx = x.chunks_exact(8);
            for (yc, xc) in (&mut cy).zip(&mut cx) {
                let (Ok(yc), Ok(xc)) = (<&mut [f32; 8]>::try_from(yc), <&[f32; 8]>::try_from(xc))
                else {
                    continue;
                };
                let r = _mm256_fmadd_ps(
                    av,
                    _mm256_loadu_ps(xc.as_ptr()),
                    _mm256_loadu_ps(yc.as_ptr()),
                );
                _mm256_storeu_ps(yc.as_mut_ptr(), r);
            }
            for (y, &x) in cy.into_remainder().iter_mut().zip(cx.remainder()) {
                *y += a * x;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-0.5, 0.5), a different sequence per seed.
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect()
    }

    #[test]
    fn dot_and_axpy_match_plain_loops_at_every_length() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200] {
            let (a, b) = (values(n, 1), values(n, 2));
            let want: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            let got = dot(&a, &b);
            assert!(
                (f64::from(got) - want).abs() < 1e-4,
                "n={n}: {got} vs {want}"
            );
            assert_eq!(got, dot(&a, &b), "n={n}: not deterministic");

            let mut y = values(n, 3);
            let want: Vec<f32> = y.iter().zip(&a).map(|(y, x)| y + 0.75 * x).collect();
            axpy(&mut y, 0.75, &a);
            for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-6, "n={n} i={i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn exp_matches_the_c_library_across_the_range() {
        let mut x: Vec<f32> = (0..20_001).map(|i| -100.0 + i as f32 * 0.0095).collect();
        x.extend([
            0.0,
            -0.0,
            88.7,
            88.8,
            -87.3,
            -87.4,
            -103.0,
            -104.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
        ]);
        let want: Vec<f32> = x.iter().map(|v| v.exp()).collect();
        let mut got = x.clone();
        exp_in_place(&mut got);
        let mut worst = 0f32;
        for ((g, w), v) in got.iter().zip(&want).zip(&x) {
            if *w == 0.0 || w.is_infinite() || *w < f32::MIN_POSITIVE {
                assert!(
                    *g == *w || (*g - *w).abs() < 1e-44,
                    "exp({v}) = {g}, want {w}"
                );
            } else {
                let rel = ((g - w) / w).abs();
                worst = worst.max(rel);
                assert!(rel < 4e-7, "exp({v}) = {g}, want {w}");
            }
        }
        eprintln!("exp: worst relative difference from the C library {worst:e}");
        let mut nan = [f32::NAN; 3];
        exp_in_place(&mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    /// Softmax attention of each query row over `n` rows of `k` and `v`, in f64.
    fn naive_attention(q: &[f32], k: &[f32], v: &[f32], n: usize, hd: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for qr in q.chunks_exact(hd) {
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    qr.iter()
                        .zip(&k[j * hd..(j + 1) * hd])
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum()
                })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let total: f64 = e.iter().sum();
            for c in 0..hd {
                let o: f64 = (0..n)
                    .map(|j| e[j] / total * f64::from(v[j * hd + c]))
                    .sum();
                out.push(o as f32);
            }
        }
        out
    }

    #[test]
    fn attention_matches_a_plain_softmax_for_every_kernel() {
        // Every kernel set this CPU has (64 and 128 take the x86 kernels, 24 the portable
        // loops); position counts below, at and past multiples of eight and sixteen, and a
        // cache with spare capacity after the live rows.
        let mut sets = vec![Kernels::Portable];
        if avx2() {
            sets.push(Kernels::Avx2);
        }
        if avx512() {
            sets.push(Kernels::Avx512);
        }
        for (kernels, hd) in sets
            .into_iter()
            .flat_map(|s| [24, 64, 128].map(|hd| (s, hd)))
        {
            for n in [1, 7, 8, 9, 15, 16, 17, 40, 131] {
                for rows in [1, 2, 3, 4, 5] {
                    let q: Vec<f32> = values(rows * hd, 7).iter().map(|x| x * 4.0).collect();
                    let k = values((n + 3) * hd, 8);
                    let v = values((n + 3) * hd, 9);
                    let want = naive_attention(&q, &k, &v, n, hd);
                    let (kr, vr) = (
                        Rows {
                            data: &k,
                            start: 0,
                            stride: hd,
                            width: hd,
                        },
                        Rows {
                            data: &v,
                            start: 0,
                            stride: hd,
                            width: hd,
                        },
                    );
                    let mut out = vec![f32::NAN; rows * hd];
                    attend_with(kernels, &q, kr, vr, n, &mut Vec::new(), &mut out);
                    for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() < 1e-5,
                            "{kernels:?} hd {hd} n {n} rows {rows} at {i}: {g} vs {w}"
                        );
                    }
                    // An f16 cache: the same against the rounded values.
                    let half = |m: &[f32]| -> Vec<half::f16> {
                        m.iter().map(|&x| half::f16::from_f32(x)).collect()
                    };
                    let (k16, v16) = (half(&k), half(&v));
                    let widen =
                        |m: &[half::f16]| -> Vec<f32> { m.iter().map(|x| x.to_f32()).collect() };
                    let want = naive_attention(&q, &widen(&k16), &widen(&v16), n, hd);
                    let rows16 = |data| Rows {
                        data,
                        start: 0,
                        stride: hd,
                        width: hd,
                    };
                    attend_with(
                        kernels,
                        &q,
                        rows16(&k16),
                        rows16(&v16),
                        n,
                        &mut Vec::new(),
                        &mut out,
                    );
                    for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() < 1e-5,
                            "f16 {kernels:?} hd {hd} n {n} rows {rows} at {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn strided_cache_rows_take_the_portable_path_with_the_same_result() {
        let (hd, n) = (64, 19);
        let q = values(2 * hd, 3);
        let k = values(n * hd, 4);
        let v = values(n * hd, 5);
        // The same rows laid out with a gap of 16 values after each.
        let spread = |m: &[f32]| -> Vec<f32> {
            m.chunks_exact(hd)
                .flat_map(|r| r.iter().copied().chain([0.0; 16]))
                .collect()
        };
        let (ks, vs) = (spread(&k), spread(&v));
        let rows = |data, stride| Rows {
            data,
            start: 0,
            stride,
            width: hd,
        };
        let mut dense = vec![0f32; 2 * hd];
        let mut strided = vec![0f32; 2 * hd];
        attend(
            &q,
            rows(&k, hd),
            rows(&v, hd),
            n,
            &mut Vec::new(),
            &mut dense,
        );
        let (kr, vr) = (rows(&ks, hd + 16), rows(&vs, hd + 16));
        attend(&q, kr, vr, n, &mut Vec::new(), &mut strided);
        for (a, b) in dense.iter().zip(&strided) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn portable_dot_and_axpy_match_the_dispatched_ones() {
        for n in [0, 5, 8, 13, 64, 100] {
            let (a, b) = (values(n, 11), values(n, 12));
            assert!((dot_portable(&a, &b) - dot(&a, &b)).abs() < 1e-5, "n={n}");
            let (mut y1, mut y2) = (values(n, 13), values(n, 13));
            axpy_portable(&mut y1, -1.5, &a);
            axpy(&mut y2, -1.5, &a);
            for (p, q) in y1.iter().zip(&y2) {
                assert!((p - q).abs() < 1e-6, "n={n}: {p} vs {q}");
            }
        }
    }

    #[test]
    fn unequal_lengths_use_the_shorter() {
        let (a, b) = (values(20, 1), values(12, 2));
        assert_eq!(dot(&a, &b), dot(&a[..12], &b));
        let mut y = vec![1f32; 5];
        axpy(&mut y, 2.0, &[1.0; 9]);
        assert_eq!(y, vec![3.0; 5]);
    }
}
