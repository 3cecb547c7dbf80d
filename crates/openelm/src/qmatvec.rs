//! 8-, 6- and 4-bit block-quantized matrices (GGML's Q8_0, Q6_K and Q4_0, and Q4_K held
//! as Q4_0 blocks with a per-block offset factor) and the CPU kernels that multiply them by
//! activations. Q6_K has AVX-512 and AVX2 kernels of its own, on activations quantized per
//! 256-value super-block (see [`Quants::Q6K`]); the rest of this note is about the others.
//!
//! Decoding one token reads every weight once, so its speed is set by how fast the weights
//! stream from memory and how few instructions each byte costs. The kernels follow
//! llama.cpp's recipe: the activation row is quantized to 8 bits per 32-value block once per
//! call, each weight block's integer dot product is taken in 32-bit lanes, and one
//! multiply-add per block applies both scales. Rows of the output are split across rayon's
//! threads.
//!
//! The crate is built for baseline x86-64 (SSE2), where LLVM cannot use the 8-bit
//! multiply-adds these dot products need, so on x86-64 the inner loop is written with AVX2
//! intrinsics in the `x86` submodule and chosen at run time when the CPU has AVX2, FMA and
//! F16C; that submodule and its call sites are the only `unsafe` code here. Elsewhere
//! (and as the reference in tests) a portable Rust loop does the same arithmetic.
//!
//! With AVX2 (and AVX-512: F, BW, VNNI and GFNI) Q4_0 matrices are laid out for the tile
//! kernels: in tiles of four rows, group by group, each group's bytes interleaved in 4-byte
//! steps (see [`tile_in_place`] and [`tile_pos`]). A 64-byte load then holds a step of four
//! rows' four blocks, four `vpdpbusd` leave each 32-bit lane with one block's whole product
//! (AVX2 takes each step as two 32-byte halves, with `vpmaddubsw`), and one conversion and
//! one multiply-add apply sixteen blocks' scales. The activations come
//! laid out to match (`Activations::q_steps`). The decode and the prompt kernels read the
//! tiles in place, the prompt kernel for four activation rows per load; each group keeps
//! GGML's byte order, so that both nibbles of a byte belong to the same block (see
//! [`BlockMatrix::block_groups`]). The row-at-a-time paths (the embedding lookup, rows cut
//! off by a range's ends) copy their rows out first.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::simd::{avx2, avx512};

/// Values per block, for both formats.
const BLOCK: usize = 32;

/// Values whose first one starts a 64-byte cache line, so that the kernels' 64-byte loads
/// (and every second 32-byte one) do not straddle two lines. Large vectors come from the
/// allocator 16 bytes past a line, so every 512-bit load of weights took two.
#[derive(Debug, Clone)]
pub(crate) struct Aligned<T> {
    buf: Vec<T>,
    start: usize,
}

impl<T: Copy + Default> Aligned<T> {
    /// Room for `len` values, none held yet: fill with [`extend`](Self::extend) or
    /// [`extend_from_slice`](Self::extend_from_slice), within `len` (past it the values
    /// stay correct but may lose the alignment).
    fn with_capacity(len: usize) -> Self {
        let pad = 64 / std::mem::size_of::<T>().max(1);
        let mut buf: Vec<T> = Vec::with_capacity(len + pad);
        let start = buf.as_ptr().align_offset(64).min(pad);
        buf.resize(start, T::default());
        Self { buf, start }
    }

    /// `len` copies of the default value.
    fn zeroed(len: usize) -> Self {
        let mut a = Self::with_capacity(len);
        a.buf.resize(a.start + len, T::default());
        a
    }

    /// A copy of `v`.
    fn from_slice(v: &[T]) -> Self {
        let mut a = Self::with_capacity(v.len());
        a.buf.extend_from_slice(v);
        a
    }

    fn extend(&mut self, values: impl IntoIterator<Item = T>) {
        self.buf.extend(values);
    }

    fn extend_from_slice(&mut self, values: &[T]) {
        self.buf.extend_from_slice(values);
    }
}

impl<T> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.buf.get(self.start..).unwrap_or(&[])
    }
}

impl<T> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let start = self.start;
        self.buf.get_mut(start..).unwrap_or(&mut [])
    }
}

/// The quantized values of a [`BlockMatrix`].
#[derive(Debug)]
enum Quants {
    /// One signed byte per value.
    Q8(Aligned<i8>),
    /// Two values per byte, offset by 8, packed by pairs of blocks: byte `j` (0..32) of the
    /// pair holds value `j` of the first block in its low nibble and value `j` of the second
    /// in its high nibble, so one 32-byte load and two masks give both blocks in activation
    /// order. A row's last block, when the row has an odd count, keeps GGML's order (byte `j`
    /// of 16: values `j` and `j + 16`). In a matrix laid out for the tile kernels
    /// ([`BlockMatrix::block_groups`]) each row's whole groups of [`GROUP`] blocks keep GGML's
    /// order instead, and only the blocks after them are packed by pairs.
    Q4(Aligned<u8>),
    /// Q6_K super-blocks of [`SUPER`] values: per super-block the 128 bytes of low nibbles
    /// and then the 64 bytes of high bit pairs, in GGML's order (192 bytes, three cache
    /// lines, so every super-block starts on one); the sixteen 16-value sub-block scales
    /// (`i8`) in their own array, and the super-block's f16 scale in
    /// [`BlockMatrix::scales`]. Value `v` is `d sc[v / 16] (q - 32)` with `q` in 0..64.
    Q6K {
        /// Low nibbles and high bit pairs, [`Q6K_BYTES`] per super-block.
        q: Aligned<u8>,
        /// Sub-block scales, 16 per super-block.
        sc: Aligned<i8>,
    },
}

/// Values per K-quant super-block.
const SUPER: usize = 256;
/// Bytes of a Q6_K super-block's values: 128 of low nibbles, 64 of high bit pairs.
const Q6K_BYTES: usize = 192;

/// A `[rows, cols]` matrix of Q8_0 or Q4_0 blocks, in the byte layout GGUF stores (an f16
/// scale per 32 values), split into a scale array and a value array so that the kernels read
/// each as one stream; with AVX2 (and AVX-512), Q4_0 runs of four rows are tiled for the
/// tile kernels.
#[derive(Debug)]
pub struct BlockMatrix {
    rows: usize,
    cols: usize,
    /// f16 bits of each block's scale (`rows * cols / 32`), in the order of `quants`; for
    /// Q6_K, of each super-block's (`rows * cols / 256`).
    scales: Vec<u16>,
    quants: Quants,
    /// Whether runs of [`TILE`] rows are stored tiled (see [`tile_in_place`]) for the
    /// tile kernels (AVX2 and AVX-512), which read four rows as one stream. Rows after the last whole run
    /// are row-major, where they would be anyway.
    tiled: bool,
    /// Q4_0 laid out for the tile kernels and the AVX-512 row kernels: each row's whole
    /// groups of [`GROUP`] blocks in GGML's order, so that the low and the high nibbles of a
    /// 4-byte lane belong to the same block and one chain of integer products, one
    /// conversion and one multiply-add serve both (with the pair layout each needed its
    /// own). Kept by [`untiled`](Self::untiled) copies.
    block_groups: bool,
    /// Q4_K weights held as Q4_0 blocks: per block (f16 bits, in the order of `scales`,
    /// tiled alike) the factor `e` of its offset term. A Q4_0 block is `d (q - 8)`: the
    /// kernels add `-8 d` times the activation block's scaled sum. A Q4_K sub-block is
    /// `s q + m`; held as `d = s` with `e = -m / 8`, the same kernels compute it when they
    /// take `e` in place of `d` in that term. Empty for Q8_0 and Q4_0.
    offsets: Vec<u16>,
}

/// Rows per tile of a tiled [`BlockMatrix`].
const TILE: usize = 4;

/// Blocks per group: what the AVX-512 kernels take per step.
const GROUP: usize = 8;

/// Where element `i` of block `b` (of [`GROUP`]) of row `k` (of [`TILE`]) goes in a tile's
/// group of `unit`-element blocks. The group is two runs of four blocks; each run holds its
/// blocks' elements in steps of `c` (4 for values, 16 bytes a block; 1 for scales): step
/// `s` of the four rows' four blocks, then step `s + 1`. For Q4_0 values that puts bytes
/// `4s..4s + 4` of row `k`'s block `4h + j` in 32-bit lane `4k + j` of the run's 64-byte
/// step `s`, so that a `vpdpbusd` chain over the four steps ends with each lane holding one
/// block's whole product, and one 16-value scale load matches the lanes.
fn tile_pos(k: usize, b: usize, i: usize, unit: usize) -> usize {
    let c = if unit.is_multiple_of(4) { 4 } else { 1 };
    let (h, j, s, e) = (b / 4, b % 4, i / c, i % c);
    h * TILE * 4 * unit + s * TILE * 4 * c + k * 4 * c + j * c + e
}

/// Re-lays `v`, rows of `nb` blocks of `unit` elements (values or scales) stored row after
/// row, so that in each run of [`TILE`] rows the rows' first groups of [`GROUP`] blocks come
/// together (interleaved as [`tile_pos`] says), then their second groups, and so on, then
/// the rows' leftover blocks (`nb % GROUP`) row after row. A run keeps its place and size,
/// so rows after the last whole run, and every run's offset, are as in the row-major order.
/// In place, a run at a time.
fn tile_in_place<T: Copy + Default>(v: &mut [T], rows: usize, nb: usize, unit: usize) {
    let row_len = nb * unit;
    let (groups, g_len) = (nb / GROUP, GROUP * unit);
    let mut run = vec![T::default(); TILE * row_len];
    for tile in v.chunks_exact_mut(TILE * row_len).take(rows / TILE) {
        run.copy_from_slice(tile);
        for g in 0..groups {
            let out = &mut tile[g * TILE * g_len..(g + 1) * TILE * g_len];
            for k in 0..TILE {
                let src = &run[k * row_len + g * g_len..k * row_len + (g + 1) * g_len];
                for (b, block) in src.chunks_exact(unit).enumerate() {
                    for (i, &x) in block.iter().enumerate() {
                        out[tile_pos(k, b, i, unit)] = x;
                    }
                }
            }
        }
        let mut at = TILE * groups * g_len;
        for k in 0..TILE {
            let s = k * row_len + groups * g_len;
            let n = row_len - groups * g_len;
            tile[at..at + n].copy_from_slice(&run[s..s + n]);
            at += n;
        }
    }
}

/// Rows `first..first + n` of `v` (laid out by [`tile_in_place`] when `tiled`) in row-major
/// order.
fn untile_rows<T: Copy>(
    v: &[T],
    (first, n): (usize, usize),
    (rows, nb, unit): (usize, usize, usize),
    tiled: bool,
) -> Vec<T> {
    let row_len = nb * unit;
    let (groups, g_len) = (nb / GROUP, GROUP * unit);
    let tiled_rows = if tiled { rows / TILE * TILE } else { 0 };
    let mut out = Vec::with_capacity(n * row_len);
    for r in first..first + n {
        if r >= tiled_rows {
            out.extend_from_slice(&v[r * row_len..(r + 1) * row_len]);
            continue;
        }
        let (base, k) = (r / TILE * TILE * row_len, r % TILE);
        for g in 0..groups {
            let group = &v[base + g * TILE * g_len..base + (g + 1) * TILE * g_len];
            out.extend((0..g_len).map(|e| group[tile_pos(k, e / unit, e % unit, unit)]));
        }
        let left = row_len - groups * g_len;
        let s = base + TILE * groups * g_len + k * left;
        out.extend_from_slice(&v[s..s + left]);
    }
    out
}

/// One row-major weight row as the AVX-512 prompt kernel for rows reads it: its whole groups
/// of [`GROUP`] blocks, then its leftover blocks.
#[derive(Debug, Clone, Copy)]
struct RowGroups<'a, T> {
    /// The row's whole groups, one after the other.
    values: &'a [T],
    /// Their scales, in the same order.
    scales: &'a [u16],
    /// The blocks after the last whole group, and their scales.
    tail: &'a [T],
    tail_scales: &'a [u16],
    /// The offset factors of `scales` and `tail_scales` (see [`BlockMatrix::offsets`]);
    /// empty without them.
    offsets: &'a [u16],
    tail_offsets: &'a [u16],
}

impl BlockMatrix {
    /// Row `r` of `v` (this matrix's values, `unit` elements per block) as [`RowGroups`];
    /// empty for a row in a tile, whose blocks are interleaved with its tile's other rows.
    fn row_groups<'a, T>(&'a self, v: &'a [T], unit: usize, r: usize) -> RowGroups<'a, T> {
        let nb = self.cols / BLOCK;
        let kept = nb / GROUP * GROUP;
        let (at, s_at) = (r * nb * unit, r * nb);
        let (values, scales, offsets) = if r < self.tiled_rows() {
            (&[][..], &[][..], &[][..])
        } else {
            (
                v.get(at..at + nb * unit).unwrap_or(&[]),
                self.scales.get(s_at..s_at + nb).unwrap_or(&[]),
                self.offsets.get(s_at..s_at + nb).unwrap_or(&[]),
            )
        };
        let split = |x: &'a [T], n: usize| x.split_at(n.min(x.len()));
        let split16 = |x: &'a [u16], n: usize| x.split_at(n.min(x.len()));
        let ((values, tail), (scales, tail_scales), (offsets, tail_offsets)) = (
            split(values, kept * unit),
            split16(scales, kept),
            split16(offsets, kept),
        );
        RowGroups {
            values,
            scales,
            tail,
            tail_scales,
            offsets,
            tail_offsets,
        }
    }

    /// Whether [`from_qtensor`](Self::from_qtensor) takes tensors of this type.
    pub fn supports(dtype: GgmlDType) -> bool {
        match dtype {
            GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q4K => true,
            // The AVX-512 and AVX2 kernels; elsewhere the portable loop would be the slowest
            // projection of a step, and Q8_0 takes its place.
            GgmlDType::Q6K => avx2(),
            _ => false,
        }
    }

    /// Repacks a 2-D Q8_0, Q4_0 or Q4_K tensor (CPU). `name` is for errors.
    ///
    /// Q4_K is held as Q4_0 blocks plus a per-block offset factor: each 32-value sub-block
    /// of a Q4_K super-block is `s q + m` with `s = d * scale` and `m = -dmin * min`, kept
    /// as the block's scale `s` and offset factor `-m / 8`, both in f16 (a relative
    /// rounding of at most 2^-11 on each, well inside Q4_K's own steps). That is 5 bits per
    /// value instead of 4.5, on the Q4_0 kernels.
    ///
    /// Q6_K keeps its own bytes (6.5625 bits per value) and runs on its own kernels
    /// (AVX-512 or AVX2; a portable loop otherwise), which take activations quantized per
    /// 256-value super-block.
    pub fn from_qtensor(name: &str, q: &QTensor) -> Result<Self> {
        match q.dtype() {
            GgmlDType::Q4K => Self::from_q4k(name, q, avx2()),
            GgmlDType::Q6K => Self::from_q6k(name, q),
            _ => Self::repack(name, q, avx2()),
        }
    }

    /// [`from_qtensor`](Self::from_qtensor) for Q6_K: GGML's super-block (128 bytes of
    /// low nibbles, 64 of high bit pairs, 16 `i8` scales, an f16 scale: 210 bytes) split
    /// into the three arrays of [`Quants::Q6K`] and [`scales`](Self::scales).
    fn from_q6k(name: &str, q: &QTensor) -> Result<Self> {
        const BYTES: usize = 210;
        let (rows, cols, data) = block_data(name, q, (SUPER, BYTES))?;
        let supers = rows * cols / SUPER;
        let mut values = Aligned::with_capacity(supers * Q6K_BYTES);
        let mut sc = Aligned::with_capacity(supers * 16);
        let mut scales = Vec::with_capacity(supers);
        for sb in data.chunks_exact(BYTES) {
            let (v, rest) = sb.split_at(Q6K_BYTES);
            let (s, d) = rest.split_at(16);
            values.extend_from_slice(v);
            sc.extend(s.iter().map(|&b| b as i8));
            scales.push(u16::from_le_bytes([d[0], d[1]]));
        }
        Ok(Self {
            rows,
            cols,
            scales,
            quants: Quants::Q6K { q: values, sc },
            tiled: false,
            block_groups: false,
            offsets: Vec::new(),
        })
    }

    /// [`from_qtensor`](Self::from_qtensor) for Q4_K.
    fn from_q4k(name: &str, q: &QTensor, tiled: bool) -> Result<Self> {
        // A super-block: d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 of values.
        const BYTES: usize = 144;
        let (rows, cols, data) = block_data(name, q, (SUPER, BYTES))?;
        let mut q4 = Vec::with_capacity(rows * cols / BLOCK * (2 + BLOCK / 2));
        let mut offsets = Vec::with_capacity(rows * cols / BLOCK);
        for sb in data.chunks_exact(BYTES) {
            let d = f16_to_f32(u16::from_le_bytes([sb[0], sb[1]]));
            let dmin = f16_to_f32(u16::from_le_bytes([sb[2], sb[3]]));
            let (sc, qs) = sb[4..].split_at(12);
            for b in 0..SUPER / BLOCK {
                let (scale, min) = q4k_scale_min(sc, b);
                let s = half::f16::from_f32(d * f32::from(scale));
                // `-m / 8` with `m = -dmin * min`.
                offsets.push(half::f16::from_f32(dmin * f32::from(min) / 8.0).to_bits());
                // Sub-block `2j` is the low nibbles of bytes `32j..32j + 32`, `2j + 1` the
                // high ones; a Q4_0 block holds value `i` and `i + 16` in byte `i`.
                let run = &qs[32 * (b / 2)..32 * (b / 2) + 32];
                let v = |i: usize| {
                    if b % 2 == 0 {
                        run[i] & 0x0F
                    } else {
                        run[i] >> 4
                    }
                };
                q4.extend_from_slice(&s.to_bits().to_le_bytes());
                q4.extend((0..BLOCK / 2).map(|i| v(i) | (v(i + 16) << 4)));
            }
        }
        let storage = candle_core::quantized::QStorage::from_data(
            std::borrow::Cow::Owned(q4),
            &candle_core::Device::Cpu,
            GgmlDType::Q4_0,
        )?;
        let as_q4 = QTensor::new(storage, (rows, cols))?;
        let mut m = Self::repack(name, &as_q4, tiled)?;
        if m.tiled {
            tile_in_place(&mut offsets, rows, cols / BLOCK, 1);
        }
        m.offsets = offsets;
        Ok(m)
    }

    /// [`from_qtensor`](Self::from_qtensor), with Q4_0 tiled for the tile kernels or not.
    fn repack(name: &str, q: &QTensor, tiled: bool) -> Result<Self> {
        let block_bytes = match q.dtype() {
            GgmlDType::Q8_0 => 2 + BLOCK,
            GgmlDType::Q4_0 => 2 + BLOCK / 2,
            other => {
                return Err(Error::Quantization {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                    detail: format!("{other:?} has no block kernel"),
                });
            }
        };
        let (rows, cols, data) = block_data(name, q, (BLOCK, block_bytes))?;
        let blocks = rows * cols / BLOCK;
        let mut scales = Vec::with_capacity(blocks);
        // Only Q4_0 has a tile kernel (Q8_0 rows, twice as long, decode as fast one by one).
        let block_groups = tiled && q.dtype() == GgmlDType::Q4_0;
        let quants = match q.dtype() {
            GgmlDType::Q8_0 => {
                let mut v = Aligned::with_capacity(rows * cols);
                for b in data.chunks_exact(block_bytes) {
                    scales.push(u16::from_le_bytes([b[0], b[1]]));
                    v.extend(b[2..].iter().map(|&x| x as i8));
                }
                Quants::Q8(v)
            }
            _ => {
                let nb = cols / BLOCK;
                let mut v = Aligned::with_capacity(rows * cols / 2);
                for row in data.chunks_exact(nb * block_bytes) {
                    let blocks: Vec<&[u8]> = row.chunks_exact(block_bytes).collect();
                    for b in &blocks {
                        scales.push(u16::from_le_bytes([b[0], b[1]]));
                    }
                    // GGML's value `e` of a block's 16 bytes.
                    let value = |qs: &[u8], e: usize| {
                        if e < 16 {
                            qs[e] & 0x0F
                        } else {
                            qs[e - 16] >> 4
                        }
                    };
                    // For the AVX-512 kernels the whole groups keep GGML's bytes.
                    let kept = if block_groups { nb / GROUP * GROUP } else { 0 };
                    for b in &blocks[..kept] {
                        v.extend_from_slice(&b[2..]);
                    }
                    for pair in blocks[kept..].chunks(2) {
                        match pair {
                            [a, b] => v.extend(
                                (0..BLOCK).map(|e| value(&a[2..], e) | (value(&b[2..], e) << 4)),
                            ),
                            [a] => v.extend_from_slice(&a[2..]),
                            _ => {}
                        }
                    }
                }
                Quants::Q4(v)
            }
        };
        let mut m = Self {
            rows,
            cols,
            scales,
            quants,
            tiled: false,
            block_groups,
            offsets: Vec::new(),
        };
        if let (true, Quants::Q4(v)) = (block_groups, &mut m.quants) {
            let nb = cols / BLOCK;
            tile_in_place(v, rows, nb, BLOCK / 2);
            tile_in_place(&mut m.scales, rows, nb, 1);
            m.tiled = true;
        }
        Ok(m)
    }

    /// Rows stored in tiles: the whole runs of [`TILE`] rows, when tiled.
    fn tiled_rows(&self) -> usize {
        if self.tiled {
            self.rows / TILE * TILE
        } else {
            0
        }
    }

    /// Rows `first..first + n` as a row-major matrix of their own (for the kernels that read
    /// a row at a time).
    fn untiled(&self, first: usize, n: usize) -> Self {
        // Q6_K is never tiled: the rows as they are.
        if let Quants::Q6K { q, sc } = &self.quants {
            let supers = self.cols / SUPER;
            let rows = |v: usize| first * supers * v..(first + n) * supers * v;
            return Self {
                rows: n,
                cols: self.cols,
                scales: self.scales.get(rows(1)).unwrap_or(&[]).to_vec(),
                quants: Quants::Q6K {
                    q: Aligned::from_slice(q.get(rows(Q6K_BYTES)).unwrap_or(&[])),
                    sc: Aligned::from_slice(sc.get(rows(16)).unwrap_or(&[])),
                },
                tiled: false,
                block_groups: false,
                offsets: Vec::new(),
            };
        }
        let nb = self.cols / BLOCK;
        let shape = |unit| (self.rows, nb, unit);
        Self {
            rows: n,
            cols: self.cols,
            scales: untile_rows(&self.scales, (first, n), shape(1), self.tiled),
            quants: match &self.quants {
                Quants::Q8(v) => Quants::Q8(Aligned::from_slice(&untile_rows(
                    v,
                    (first, n),
                    shape(BLOCK),
                    self.tiled,
                ))),
                Quants::Q4(v) => Quants::Q4(Aligned::from_slice(&untile_rows(
                    v,
                    (first, n),
                    shape(BLOCK / 2),
                    self.tiled,
                ))),
                // Returned above.
                Quants::Q6K { .. } => Quants::Q8(Aligned::zeroed(0)),
            },
            tiled: false,
            block_groups: self.block_groups,
            offsets: if self.offsets.is_empty() {
                Vec::new()
            } else {
                untile_rows(&self.offsets, (first, n), shape(1), self.tiled)
            },
        }
    }

    /// Where share `p` of `parts` of the rows starts (`p == parts`: the end), on a tile
    /// boundary, so that each share of a decode step runs whole tiles.
    pub(crate) fn share_start(&self, p: usize, parts: usize) -> usize {
        if p >= parts {
            return self.rows;
        }
        (p * self.rows / parts.max(1)) / TILE * TILE
    }

    /// Whether the values are Q4_0 (whose tile and AVX-512 kernels read activations re-laid
    /// out).
    fn is_q4(&self) -> bool {
        matches!(self.quants, Quants::Q4(_))
    }

    /// `m` activation rows of `cols` values quantized for this matrix's kernels.
    pub(crate) fn quantize_input(&self, x: &[f32], m: usize) -> Activations {
        match self.quants {
            Quants::Q6K { .. } => Activations::quantize_super(x, m, self.cols),
            _ => Activations::quantize(x, m, self.cols, self.layouts(m)),
        }
    }

    /// Which re-laid-out copies of `m` activation rows this matrix's kernels read: none for
    /// Q8_0; the steps for the tile kernels; the halves for the AVX-512 row kernels, which
    /// a decode product (`m == 1`) of whole tiles never runs (its shares and chunks start
    /// on tile boundaries), so it is spared building them.
    fn layouts(&self, m: usize) -> Layouts {
        match self.is_q4() {
            false => Layouts::None,
            true if m == 1 && self.tiled && self.rows.is_multiple_of(TILE) => Layouts::Steps,
            true => Layouts::StepsAndHalves,
        }
    }

    /// Rows `first..first + ys.len()` against one quantized activation row, on the calling
    /// thread (the decode helper's halves).
    pub(crate) fn rows_decode(&self, act: &Activations, first: usize, ys: &mut [f32]) {
        rows(self, act, first, ys, 1);
    }

    /// Hints the CPU to bring the weights of rows `first..end` into L2, at most `max_bytes`
    /// of values (with their scales and offsets), in pieces of 4 KB; stops early when
    /// `go_on()` turns false. For a thread with nothing to do until its share of this
    /// matrix's product arrives.
    pub(crate) fn prefetch_rows(
        &self,
        (first, end): (usize, usize),
        max_bytes: usize,
        mut go_on: impl FnMut() -> bool,
    ) {
        let (blocks, end) = (self.cols / BLOCK, end.min(self.rows));
        if first >= end || blocks == 0 {
            return;
        }
        let row_bytes = match &self.quants {
            Quants::Q8(_) => self.cols,
            Quants::Q4(_) => self.cols / 2,
            Quants::Q6K { .. } => self.cols / SUPER * Q6K_BYTES,
        };
        // Rows, scales and offsets are stored in the same row order (whole tiles in range).
        let rows = (end - first).min(max_bytes.div_ceil(row_bytes.max(1)));
        // Scales per row: one per block, or per super-block for Q6_K.
        let per_row = self.scales.len() / self.rows.max(1);
        let (a, b) = (first * per_row, (first + rows) * per_row);
        let scales = self.scales.get(a..b).unwrap_or(&[]);
        crate::simd::prefetch_l2(scales);
        crate::simd::prefetch_l2(self.offsets.get(a..b).unwrap_or(&[]));
        if let Quants::Q6K { sc, .. } = &self.quants {
            crate::simd::prefetch_l2(sc.get(a * 16..b * 16).unwrap_or(&[]));
        }
        let piece = 4096 / row_bytes.max(1) + 1;
        for r in (first..first + rows).step_by(piece) {
            if !go_on() {
                return;
            }
            let n = piece.min(first + rows - r);
            match &self.quants {
                Quants::Q8(v) => crate::simd::prefetch_l2(
                    v.get(r * row_bytes..(r + n) * row_bytes).unwrap_or(&[]),
                ),
                Quants::Q4(v) | Quants::Q6K { q: v, .. } => crate::simd::prefetch_l2(
                    v.get(r * row_bytes..(r + n) * row_bytes).unwrap_or(&[]),
                ),
            }
        }
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The GGML type the weights came in (Q4_K is held as Q4_0 blocks with offsets).
    pub fn dtype(&self) -> GgmlDType {
        match self.quants {
            Quants::Q8(_) => GgmlDType::Q8_0,
            Quants::Q4(_) if !self.offsets.is_empty() => GgmlDType::Q4K,
            Quants::Q4(_) => GgmlDType::Q4_0,
            Quants::Q6K { .. } => GgmlDType::Q6K,
        }
    }

    /// Bytes of weight data (scales, offsets and values): what one pass over the matrix
    /// reads.
    pub fn size_in_bytes(&self) -> usize {
        (self.scales.len() + self.offsets.len()) * 2
            + match &self.quants {
                Quants::Q8(v) => v.len(),
                Quants::Q4(v) => v.len(),
                Quants::Q6K { q, sc } => q.len() + sc.len(),
            }
    }

    /// Row `r` dequantized into `out` (`cols` values): the embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if r < self.tiled_rows() {
            self.untiled(r, 1).dequantize_row(0, out);
            return;
        }
        if let Quants::Q6K { q, sc } = &self.quants {
            let supers = self.cols / SUPER;
            let at = |v: usize| r * supers * v..(r + 1) * supers * v;
            let (q, sc, ds) = (&q[at(Q6K_BYTES)], &sc[at(16)], &self.scales[at(1)]);
            for (((o, qb), scb), &d) in out
                .chunks_exact_mut(SUPER)
                .zip(q.chunks_exact(Q6K_BYTES))
                .zip(sc.chunks_exact(16))
                .zip(ds)
            {
                let d = f16_to_f32(d);
                // Sixteen values at a time, each run's bytes in place (the embedding lookup
                // of every token; `q6k_value` per value cost about 0.6 us more a row).
                for (j, (o, &sc)) in o.chunks_exact_mut(16).zip(scb).enumerate() {
                    let (h, l) = (j / 8, j % 8 * 16);
                    let (g, i) = (l / 32, l % 32);
                    let low = &qb[h * 64 + g % 2 * 32 + i..][..16];
                    let high = &qb[128 + h * 32 + i..][..16];
                    let s = d * f32::from(sc);
                    for ((o, &lo), &hi) in o.iter_mut().zip(low).zip(high) {
                        let lo = if g < 2 { lo & 0x0F } else { lo >> 4 };
                        let q6 = i32::from(lo | (((hi >> (2 * g)) & 3) << 4)) - 32;
                        *o = s * q6 as f32;
                    }
                }
            }
            return;
        }
        let nb = self.cols / BLOCK;
        let scales = &self.scales[r * nb..(r + 1) * nb];
        match &self.quants {
            Quants::Q8(q) => {
                let q = &q[r * self.cols..(r + 1) * self.cols];
                for ((o, qb), &d) in out
                    .chunks_exact_mut(BLOCK)
                    .zip(q.chunks_exact(BLOCK))
                    .zip(scales)
                {
                    let d = f16_to_f32(d);
                    for (o, &v) in o.iter_mut().zip(qb) {
                        *o = f32::from(v) * d;
                    }
                }
            }
            Quants::Q4(q) => {
                let q = &q[r * self.cols / 2..(r + 1) * self.cols / 2];
                let offsets = self.offsets.get(r * nb..(r + 1) * nb).unwrap_or(&[]);
                for (b, (o, &d)) in out.chunks_exact_mut(BLOCK).zip(scales).enumerate() {
                    let d = f16_to_f32(d);
                    // `d (q - 8)`, or with an offset factor `e`: `d q - 8 e`.
                    let shift = offsets.get(b).map_or(0.0, |&e| 8.0 * (d - f16_to_f32(e)));
                    for (e, o) in o.iter_mut().enumerate() {
                        let v = f32::from(q4_value(q, (nb, self.block_groups), b, e) as i8 - 8);
                        *o = v * d + shift;
                    }
                }
            }
            // Returned above.
            Quants::Q6K { .. } => {}
        }
    }

    /// `y[r] = dot(row r, x)` for each activation row: `x` is `m` rows of `cols` values,
    /// `y` is `[m, rows]` row-major.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let act = self.quantize_input(x, m);
        if m == 1 {
            // Decode: split the output rows into a few chunks per thread.
            let chunk = chunk_rows(self.rows).next_multiple_of(TILE);
            y.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(c, ys)| rows(self, &act, c * chunk, ys, 1));
        } else {
            // Prefill: each task takes a band of weight rows and runs every activation row
            // against it while the band is in cache; the result comes out transposed. Each
            // band reads all the activations again (four copies of each step: 2.6 MB for
            // 128 rows of 5120), so bands of up to 128 rows rather than 16: on 128 rows, 2
            // threads, 1.05-1.15x as fast on 1280x5120, 1152x1280 and 10240x1280 matrices.
            // Whole tiles, so that no band starts inside one.
            let chunk = chunk_rows(self.rows).min(128).next_multiple_of(TILE);
            let mut yt = vec![0f32; self.rows * m];
            yt.par_chunks_mut(chunk * m)
                .enumerate()
                .for_each(|(c, ys)| rows(self, &act, c * chunk, ys, m));
            transpose_into(&yt, self.rows, m, y);
        }
    }
}

/// `y [m, rows] = yt [rows, m]` transposed, in 16 x 16 tiles (16 cache lines read and 16
/// written per tile, instead of a line and a page per value) and across threads by bands of
/// 16 rows of `y`.
fn transpose_into(yt: &[f32], rows: usize, m: usize, y: &mut [f32]) {
    const T: usize = 16;
    if rows == 0 || m == 0 {
        return;
    }
    y[..m * rows]
        .par_chunks_mut(T * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let i0 = band * T;
            let height = out.len() / rows;
            for r0 in (0..rows).step_by(T) {
                let width = T.min(rows - r0);
                for ii in 0..height {
                    let dst = &mut out[ii * rows + r0..ii * rows + r0 + width];
                    for (k, d) in dst.iter_mut().enumerate() {
                        *d = yt[(r0 + k) * m + i0 + ii];
                    }
                }
            }
        });
}

/// Value `e` (0..16, offset by 8) of block `b` of a Q4 row of `nb` blocks in the layout of
/// [`Quants::Q4`] (with its whole groups in GGML's order when `block_groups`).
#[inline(always)]
fn q4_value(row: &[u8], (nb, block_groups): (usize, bool), b: usize, e: usize) -> u8 {
    let ggml_order = block_groups && b < nb / GROUP * GROUP;
    if !ggml_order && b / 2 * 2 + 1 < nb {
        let byte = row[b / 2 * BLOCK + e];
        if b.is_multiple_of(2) {
            byte & 0x0F
        } else {
            byte >> 4
        }
    } else {
        let byte = row[b * BLOCK / 2 + e % 16];
        if e < 16 { byte & 0x0F } else { byte >> 4 }
    }
}

/// A block-quantized tensor's rows, columns and bytes, checked: two dimensions, rows of
/// whole blocks of `values`, `bytes` per block. `name` is for errors.
fn block_data<'a>(
    name: &str,
    q: &'a QTensor,
    (values, bytes): (usize, usize),
) -> Result<(usize, usize, std::borrow::Cow<'a, [u8]>)> {
    let bad = |detail: String| Error::Quantization {
        name: name.to_string(),
        dtype: format!("{:?}", q.dtype()),
        detail,
    };
    let (rows, cols) = q.shape().dims2().map_err(|e| bad(e.to_string()))?;
    if cols % values != 0 {
        return Err(bad(format!(
            "rows of {cols} values are not whole blocks of {values}"
        )));
    }
    let data = q.data()?;
    let want = rows * cols / values * bytes;
    if data.len() != want {
        return Err(bad(format!(
            "{} bytes of data, expected {want}",
            data.len()
        )));
    }
    Ok((rows, cols, data))
}

/// Value `v` (0..256, in 0..64: offset by 32) of a Q6_K super-block's 192 bytes of
/// [`Quants::Q6K`] values, as GGML packs them: each half of 128 values has 64 bytes of low
/// nibbles (values 0-31 and 32-63 in the low nibbles of bytes 0-31 and 32-63, values 64-95
/// and 96-127 in their high nibbles) and 32 bytes of high bit pairs (byte `i` holds those of
/// values `i`, `i + 32`, `i + 64` and `i + 96`, two bits each from the bottom).
#[inline(always)]
fn q6k_value(q: &[u8], v: usize) -> u8 {
    let (h, l) = (v / 128, v % 128);
    let (g, i) = (l / 32, l % 32);
    let low = q[h * 64 + g % 2 * 32 + i];
    let low = if g < 2 { low & 0x0F } else { low >> 4 };
    let high = (q[128 + h * 32 + i] >> (2 * g)) & 3;
    low | (high << 4)
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K super-block from its 12 packed
/// bytes, as GGML packs them: sub-blocks 0-3 in the low six bits of bytes 0-3 and 4-7, 4-7
/// split between the nibbles of bytes 8-11 and the top two bits of bytes 0-7.
fn q4k_scale_min(packed: &[u8], j: usize) -> (u8, u8) {
    let at = |i: usize| packed.get(i).copied().unwrap_or(0);
    if j < 4 {
        (at(j) & 63, at(j + 4) & 63)
    } else {
        (
            (at(j + 4) & 0x0F) | ((at(j - 4) >> 6) << 4),
            (at(j + 4) >> 4) | ((at(j) >> 6) << 4),
        )
    }
}

/// What a row's offset factors `es` (see [`BlockMatrix::offsets`]) add to the products of
/// a kernel that took its scales `ws` as those factors: `8 (d - e)` times each activation
/// block's scaled sum `t`.
fn offset_shift(ws: &[u16], es: &[u16], t: &[f32]) -> f32 {
    ws.iter()
        .zip(es)
        .zip(t)
        .map(|((&d, &e), &t)| 8.0 * (f16_to_f32(d) - f16_to_f32(e)) * t)
        .sum()
}

/// Output rows per parallel task: about eight tasks per thread, at least 16 rows.
fn chunk_rows(rows: usize) -> usize {
    let tasks = rayon::current_num_threads().max(1) * 8;
    rows.div_ceil(tasks).max(16)
}

/// The re-laid-out copies of quantized activations to build (see [`Activations`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layouts {
    None,
    Steps,
    StepsAndHalves,
}

/// Activation rows quantized to 8 bits per 32-value block, with an f32 scale per block; for
/// Q6_K ([`Activations::quantize_super`]) per 256-value super-block, with the sums of
/// each 16 values.
pub(crate) struct Activations {
    q: Aligned<i8>,
    /// With AVX-512 only (else empty): `q` with each run of four blocks laid out as their
    /// first halves (values 0-15 of each) and then their second halves (16-31), so that one
    /// 64-byte load gives what the low nibbles of four Q4_0 blocks in GGML's order multiply,
    /// and the next load what their high nibbles multiply. Blocks after the last whole run
    /// stay in place.
    q_halves: Aligned<i8>,
    /// With AVX2 (else empty): `q_halves`' order with each 64-byte run's 4-byte steps
    /// gathered, step `s` of its four blocks' halves (16 bytes) then step `s + 1`, and each
    /// step's 16 bytes written [`STEP_COPIES`] times: one 64-byte load of it (32 bytes with
    /// AVX2) is what a step of the tile kernels' weights multiplies (see [`tile_pos`]).
    /// Plain loads ran the prompt kernel 1.2x as fast as 16-byte broadcasts.
    q_steps: Aligned<i8>,
    scales: Vec<f32>,
    /// Per block, the scale times the sum of its quantized values (Q4_0's offset term).
    sums: Vec<f32>,
    /// For Q6_K only (else empty): the sum of each 16 quantized values, what the `- 32` of
    /// a Q6_K sub-block's values multiplies.
    sums16: Vec<i16>,
    cols: usize,
}

impl Activations {
    /// `layouts`: also lay the rows out for the tile and AVX-512 Q4_0 kernels (when the CPU
    /// has them).
    fn quantize(x: &[f32], m: usize, cols: usize, layouts: Layouts) -> Self {
        let mut q = Aligned::zeroed(m * cols);
        let mut scales = vec![0f32; m * cols / BLOCK];
        let mut sums = vec![0f32; m * cols / BLOCK];
        let avx2 = avx2();
        for (((xb, qb), s), sum) in x[..m * cols]
            .chunks_exact(BLOCK)
            .zip(q.chunks_exact_mut(BLOCK))
            .zip(scales.iter_mut())
            .zip(sums.iter_mut())
        {
            if let (Ok(xb), Ok(qb)) = (
                <&[f32; BLOCK]>::try_from(xb),
                <&mut [i8; BLOCK]>::try_from(qb),
            ) {
                let (d, total) = quantize_block(avx2, xb, qb);
                *s = d;
                *sum = d * total as f32;
            }
        }
        let (q_halves, q_steps) = if layouts != Layouts::None && avx2 {
            // The halves are read by the AVX-512 row kernels only.
            let halves = match avx512() && layouts == Layouts::StepsAndHalves {
                true => halves_first(&q, cols),
                false => Aligned::zeroed(0),
            };
            (halves, steps_first(&q, cols))
        } else {
            (Aligned::zeroed(0), Aligned::zeroed(0))
        };
        Self {
            q,
            q_halves,
            q_steps,
            scales,
            sums,
            sums16: Vec::new(),
            cols,
        }
    }

    /// Rows quantized for the Q6_K kernels, as llama.cpp quantizes activations for its
    /// K-quants: 8 bits per [`SUPER`]-value super-block with its scale `max |x| / 127`
    /// (rounding as [`quantize_block`] does), and the sum of each 16 quantized values. One
    /// scale per super-block lets a kernel add a whole super-block's integer products
    /// before it converts them. `cols` is a multiple of [`SUPER`] (as every Q6_K row is).
    fn quantize_super(x: &[f32], m: usize, cols: usize) -> Self {
        let n = m * cols / SUPER * SUPER;
        let mut q = Aligned::zeroed(n);
        let mut scales = Vec::with_capacity(n / SUPER);
        let mut sums16 = Vec::with_capacity(n / 16);
        let avx2 = avx2();
        for (xb, qb) in x[..n].chunks_exact(SUPER).zip(q.chunks_exact_mut(SUPER)) {
            let (Ok(xb), Ok(qb)) = (
                <&[f32; SUPER]>::try_from(xb),
                <&mut [i8; SUPER]>::try_from(qb),
            ) else {
                continue;
            };
            scales.push(quantize_super_block(avx2, xb, qb, &mut sums16));
        }
        Self {
            q,
            q_halves: Aligned::zeroed(0),
            q_steps: Aligned::zeroed(0),
            scales,
            sums: Vec::new(),
            sums16,
            cols,
        }
    }
}

/// Rows of `cols` quantized activations with each run of four blocks laid out as their first
/// halves, then their second halves (see [`Activations::q_halves`]).
fn halves_first(q: &[i8], cols: usize) -> Aligned<i8> {
    const HALF: usize = BLOCK / 2;
    let mut out = Aligned::from_slice(q);
    if cols == 0 {
        return out;
    }
    for (src, dst) in q.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        for (s4, d4) in src
            .chunks_exact(4 * BLOCK)
            .zip(dst.chunks_exact_mut(4 * BLOCK))
        {
            // Half `h` of block `k` goes to slot `4h + k`.
            for (i, half) in s4.chunks_exact(HALF).enumerate() {
                let to = (i % 2 * 4 + i / 2) * HALF;
                d4[to..to + HALF].copy_from_slice(half);
            }
        }
    }
    out
}

/// Rows of `cols` quantized activations `q` in the order of [`Activations::q_steps`]: each
/// whole run of four blocks as its first halves' 4-byte steps, then its second halves',
/// each step (those 4 bytes of the four blocks) written [`STEP_COPIES`] times; zeros for the
/// blocks after the last whole run. Written in order, in one pass.
fn steps_first(q: &[i8], cols: usize) -> Aligned<i8> {
    let mut out = Aligned::with_capacity(STEP_COPIES * q.len());
    if cols == 0 {
        return out;
    }
    let whole = cols / (4 * BLOCK) * 4 * BLOCK;
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        let mut run_out = [0i8; 4 * BLOCK * STEP_COPIES];
        for row in q.chunks_exact(cols) {
            for run in row[..whole].chunks_exact(4 * BLOCK) {
                if let Ok(run) = <&[i8; 4 * BLOCK]>::try_from(run) {
                    // SAFETY: compiled for AVX-512 F, which `avx512()` found on this CPU.
                    #[allow(unsafe_code)]
                    unsafe {
                        x86::steps_512(run, &mut run_out);
                    }
                    out.extend_from_slice(&run_out);
                }
            }
            out.extend(std::iter::repeat_n(0, STEP_COPIES * (cols - whole)));
        }
        return out;
    }
    for row in q.chunks_exact(cols) {
        for run in row[..whole].chunks_exact(4 * BLOCK) {
            for at in (0..BLOCK).step_by(4) {
                // Bytes `at..at + 4` of each of the four blocks: one step.
                let mut step = [0i8; 16];
                for (dst, block) in step.chunks_exact_mut(4).zip(run.chunks_exact(BLOCK)) {
                    dst.copy_from_slice(&block[at..at + 4]);
                }
                for _ in 0..STEP_COPIES {
                    out.extend_from_slice(&step);
                }
            }
        }
        out.extend(std::iter::repeat_n(0, STEP_COPIES * (cols - whole)));
    }
    out
}

/// Copies of each 16-byte step in `Activations::q_steps`: four, one per 128-bit lane.
const STEP_COPIES: usize = 4;

/// One block of 32 activations to 8 bits with scale `max |x| / 127`; returns the scale and
/// the sum of the quantized values. The AVX2 version gives the same bits.
#[inline(always)]
fn quantize_block(avx2: bool, xb: &[f32; BLOCK], qb: &mut [i8; BLOCK]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: compiled for AVX2, which `avx2()` found on this CPU.
        #[allow(unsafe_code)]
        return unsafe { x86::quantize_block(xb, qb) };
    }
    let _ = avx2;
    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut total = 0i32;
    for (o, v) in qb.iter_mut().zip(xb) {
        // Round half away from zero as `f32::round` does, without its libm call (baseline
        // x86-64 has no rounding instruction): |v * inv| <= 127.
        let r = v * inv;
        *o = (r + 0.5f32.copysign(r)) as i8;
        total += i32::from(*o);
    }
    (d, total)
}

/// One super-block of 256 activations to 8 bits with scale `max |x| / 127`, rounding as
/// [`quantize_block`] does; pushes the sums of each 16 quantized values onto `sums16` and
/// returns the scale. The AVX2 version gives the same bits, in a quarter of the time (1.26
/// against 4.87 us for 5120 values).
#[inline(always)]
fn quantize_super_block(
    avx2: bool,
    xb: &[f32; SUPER],
    qb: &mut [i8; SUPER],
    sums16: &mut Vec<i16>,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: compiled for AVX2, which `avx2()` found on this CPU.
        #[allow(unsafe_code)]
        return unsafe { x86::quantize_super_block(xb, qb, sums16) };
    }
    let _ = avx2;
    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (o, v) in qb.iter_mut().zip(xb) {
        let r = v * inv;
        *o = (r + 0.5f32.copysign(r)) as i8;
    }
    sums16.extend(
        qb.chunks_exact(16)
            .map(|c| c.iter().map(|&v| i16::from(v)).sum::<i16>()),
    );
    d
}

/// f16 bits to f32 without branches (normal and subnormal values exact; the exponent of
/// infinities and NaNs is not preserved, which only a corrupt file would hold).
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let magnitude = f32::from_bits((h & 0x7FFF) << 13) * f32::from_bits(0x7780_0000); // 2^112
    f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
}

/// The dot product of one Q8_0 weight row with one activation row, block by block.
#[inline(always)]
fn dot_q8(w: &[i8], ws: &[u16], x: &[i8], xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for ((wb, xb), (&d, &dx)) in w
        .chunks_exact(BLOCK)
        .zip(x.chunks_exact(BLOCK))
        .zip(ws.iter().zip(xs))
    {
        let s = f16_to_f32(d) * dx;
        for l in 0..16 {
            let p = i32::from(wb[2 * l]) * i32::from(xb[2 * l])
                + i32::from(wb[2 * l + 1]) * i32::from(xb[2 * l + 1]);
            acc[l] += p as f32 * s;
        }
    }
    acc.iter().sum()
}

/// The dot product of one Q4_0 weight row with one activation row, block by block (the row's
/// whole groups in GGML's order when `block_groups`).
#[inline(always)]
fn dot_q4(w: &[u8], ws: &[u16], x: &[i8], xs: &[f32], block_groups: bool) -> f32 {
    let nb = (ws.len(), block_groups);
    let mut acc = [0f32; 16];
    for (b, (xb, (&d, &dx))) in x.chunks_exact(BLOCK).zip(ws.iter().zip(xs)).enumerate() {
        let s = f16_to_f32(d) * dx;
        let v: [i8; BLOCK] = std::array::from_fn(|e| q4_value(w, nb, b, e) as i8 - 8);
        for l in 0..16 {
            let p = i32::from(v[2 * l]) * i32::from(xb[2 * l])
                + i32::from(v[2 * l + 1]) * i32::from(xb[2 * l + 1]);
            acc[l] += p as f32 * s;
        }
    }
    acc.iter().sum()
}

/// One weight row against one activation row.
#[inline(always)]
fn dot(
    avx2: bool,
    w: &BlockMatrix,
    r: usize,
    (x, xp): (&[i8], &[i8]),
    xs: &[f32],
    xsum: &[f32],
) -> f32 {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let ws = &w.scales[r * nb..(r + 1) * nb];
    match &w.quants {
        Quants::Q8(q) => {
            let q = &q[r * cols..(r + 1) * cols];
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the kernel is compiled for AVX2, FMA and F16C, which `avx2()` found
                // on this CPU (and the AVX-512 one for the features `avx512()` found).
                #[allow(unsafe_code)]
                return unsafe {
                    if avx512() {
                        x86::dot_q8_512(q, ws, x, xs, xsum)
                    } else {
                        x86::dot_q8(q, ws, x, xs)
                    }
                };
            }
            let _ = avx2;
            dot_q8(q, ws, x, xs)
        }
        Quants::Q4(q) => {
            let q = &q[r * cols / 2..(r + 1) * cols / 2];
            let es = w.offsets.get(r * nb..(r + 1) * nb).unwrap_or(&[]);
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: as for Q8_0.
                #[allow(unsafe_code)]
                match (
                    w.block_groups,
                    avx512() && xp.len() == x.len(),
                    es.is_empty(),
                ) {
                    (true, true, true) => {
                        return unsafe { x86::dot_q4_512::<false>(q, (ws, ws), xp, x, xs, xsum) };
                    }
                    (true, true, false) => {
                        return unsafe { x86::dot_q4_512::<true>(q, (ws, es), xp, x, xs, xsum) };
                    }
                    (false, _, true) => {
                        return unsafe { x86::dot_q4::<false>(q, (ws, ws), x, xs, xsum) };
                    }
                    (false, _, false) => {
                        return unsafe { x86::dot_q4::<true>(q, (ws, es), x, xs, xsum) };
                    }
                    // Only the AVX-512 kernels read the whole groups in GGML's order.
                    (true, false, _) => {}
                }
            }
            let _ = xp;
            // The portable loop takes the scales as offset factors: add the difference.
            dot_q4(q, ws, x, xs, w.block_groups) + offset_shift(ws, es, xsum)
        }
        // Q6_K rows go through `rows_q6k`.
        Quants::Q6K { .. } => f32::NAN,
    }
}

/// Weight rows `first..first + ys.len() / m` against every activation row; `ys` holds the
/// results row by row (`m` values per weight row).
fn rows(w: &BlockMatrix, act: &Activations, first: usize, ys: &mut [f32], m: usize) {
    let n = ys.len() / m.max(1);
    if n == 0 {
        return;
    }
    if let Quants::Q6K { q, sc } = &w.quants {
        return rows_q6k(w, (q, sc), act, first, ys, m);
    }
    let tiled = first < w.tiled_rows();
    #[cfg(target_arch = "x86_64")]
    if tiled && avx2() && tiles_ready(w, act) {
        // The whole tiles in range on the tile kernels, any other row on its own.
        let end = first + n;
        let t0 = first.next_multiple_of(TILE).min(end);
        let t1 = (end.min(w.tiled_rows()) / TILE * TILE).max(t0);
        // Rows of a tile cut by the range's ends, read row by row.
        let mid = end.min(w.tiled_rows()).max(t1);
        let (head, rest) = ys.split_at_mut((t0 - first) * m);
        let (tiles, rest) = rest.split_at_mut((t1 - t0) * m);
        let (part, after) = rest.split_at_mut((mid - t1) * m);
        tile_rows(w, act, t0, tiles, m);
        for (at, out) in [(first, head), (t1, part)] {
            if !out.is_empty() {
                rows(&w.untiled(at, out.len() / m), act, 0, out, m);
            }
        }
        // Rows after the last tile are stored row-major.
        return rows(w, act, mid, after, m);
    }
    // Prefill: groups of four activation rows against every weight row of this band (the
    // band and the group stay in L1), each weight block loaded and unpacked once per group.
    #[cfg(target_arch = "x86_64")]
    let done = if m >= 4 && !tiled && avx512() && fours_decode(w, act) {
        prompt_512(w, act, first, ys, m);
        m / 4 * 4
    } else if avx2() && m >= 4 && !tiled && !w.block_groups {
        for g in 0..m / 4 {
            for (i, out) in ys.chunks_exact_mut(m).enumerate() {
                four_rows(w, act, first + i, g, &mut out[4 * g..4 * g + 4]);
            }
        }
        m / 4 * 4
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    if done == m {
        return;
    }
    if tiled {
        // The band in row-major order for the row-by-row loop.
        return rows_after(&w.untiled(first, n), act, 0, ys, m, done);
    }
    rows_after(w, act, first, ys, m, done);
}

/// The tiles of weight rows `first..` against every activation row into `out` (`m` values
/// per weight row). With AVX-512: groups of four activation rows on the prompt kernel, the
/// others one at a time on the decode kernel; with AVX2 only, every row on its decode
/// kernel. Only called when `avx2()` and [`tiles_ready`] hold, with `first` a multiple of
/// [`TILE`] and whole tiles in range.
#[cfg(target_arch = "x86_64")]
fn tile_rows(w: &BlockMatrix, act: &Activations, first: usize, out: &mut [f32], m: usize) {
    /// Row `j` of `v` (rows of `len`).
    fn nth<T>(v: &[T], j: usize, len: usize) -> &[T] {
        v.get(j * len..(j + 1) * len).unwrap_or(&[])
    }
    let (cols, nb) = (w.cols, w.cols / BLOCK);
    let Quants::Q4(q) = &w.quants else {
        return;
    };
    let (values, scales) = (
        q.get(first * cols / 2..).unwrap_or(&[]),
        w.scales.get(first * nb..).unwrap_or(&[]),
    );
    // Q4_K's offset factors; none for Q4_0 (`get` would find an empty tail there).
    let offsets = match w.offsets.is_empty() {
        true => None,
        false => w.offsets.get(first * nb..),
    };
    let steps = STEP_COPIES * cols;
    // Groups of four activation rows on the AVX-512 prompt kernel; AVX2 takes every row on
    // its own (a four-row AVX2 kernel ran 0.93-0.95x as fast: 16 vector registers).
    let wide = avx512();
    let grouped = if wide { m / 4 * 4 } else { 0 };
    for g in 0..grouped / 4 {
        let at = |k: usize| 4 * g + k;
        let x = (
            (
                std::array::from_fn(|k| nth(&act.q_steps, at(k), steps)),
                std::array::from_fn(|k| nth(&act.scales, at(k), nb)),
                std::array::from_fn(|k| nth(&act.sums, at(k), nb)),
            ),
            std::array::from_fn(|k| nth(&act.q, at(k), cols)),
        );
        // SAFETY: compiled for AVX-512 F, BW, VNNI, GFNI, AVX2, FMA and F16C, which
        // `avx512()` found above.
        #[allow(unsafe_code)]
        unsafe {
            match offsets {
                Some(es) => x86::tiles4_q4_512::<true>(values, (scales, es), x, (out, m, g)),
                None => x86::tiles4_q4_512::<false>(values, (scales, scales), x, (out, m, g)),
            }
        }
    }
    for j in grouped..m {
        let x = (
            nth(&act.q_steps, j, steps),
            nth(&act.q, j, cols),
            nth(&act.scales, j, nb),
            nth(&act.sums, j, nb),
        );
        let (s, e, o) = (scales, offsets.unwrap_or(scales), (&mut *out, m, j));
        // SAFETY: the AVX-512 kernels only when `avx512()` found their features; the AVX2
        // ones need AVX2, FMA and F16C, which the caller checked with `avx2()`.
        #[allow(unsafe_code)]
        unsafe {
            match (wide, offsets.is_some()) {
                (true, true) => x86::tiles_q4_512::<true>(values, (s, e), x, o),
                (true, false) => x86::tiles_q4_512::<false>(values, (s, e), x, o),
                (false, true) => x86::tiles_q4_256::<true>(values, (s, e), x, o),
                (false, false) => x86::tiles_q4_256::<false>(values, (s, e), x, o),
            }
        }
    }
}

/// [`rows`] for Q6_K: each weight row against each activation row, on the AVX-512 kernel
/// when the CPU has it. Activations not quantized by [`Activations::quantize_super`] (which
/// the crate never passes) give NaN rather than wrong numbers.
fn rows_q6k(
    w: &BlockMatrix,
    (q, sc): (&[u8], &[i8]),
    act: &Activations,
    first: usize,
    ys: &mut [f32],
    m: usize,
) {
    let supers = w.cols / SUPER;
    if act.sums16.len() != m * w.cols / 16 || act.scales.len() != m * supers {
        ys.fill(f32::NAN);
        return;
    }
    let at = |r: usize, v: usize| r * supers * v..(r + 1) * supers * v;
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        let n = ys.len() / m;
        let span = |v: usize| first * supers * v..(first + n) * supers * v;
        let (Some(wq), Some(wsc), Some(wd)) = (
            q.get(span(Q6K_BYTES)),
            sc.get(span(16)),
            w.scales.get(span(1)),
        ) else {
            ys.fill(f32::NAN);
            return;
        };
        let row = |j: usize| {
            (
                &act.q[at(j, SUPER)],
                &act.scales[at(j, 1)],
                &act.sums16[at(j, 16)],
            )
        };
        let w = (wq, wsc, wd);
        // A prompt's activation rows four at a time, the rest one by one.
        let fours = m / 4 * 4;
        for j in (0..m).skip(fours).chain((0..fours).step_by(4)) {
            // SAFETY: the AVX-512 kernel is compiled for AVX-512 F, BW, VNNI, GFNI, AVX2,
            // FMA and F16C, which `avx512()` found on this CPU; the AVX2 one for AVX2, FMA
            // and F16C, which `avx2()` found.
            #[allow(unsafe_code)]
            unsafe {
                match (avx512(), j < fours) {
                    (true, true) => x86::rows_q6k_512(
                        w,
                        [row(j), row(j + 1), row(j + 2), row(j + 3)],
                        (&mut *ys, m, j),
                    ),
                    (true, false) => x86::rows_q6k_512(w, [row(j)], (&mut *ys, m, j)),
                    (false, true) => x86::rows_q6k_256(
                        w,
                        [row(j), row(j + 1), row(j + 2), row(j + 3)],
                        (&mut *ys, m, j),
                    ),
                    (false, false) => x86::rows_q6k_256(w, [row(j)], (&mut *ys, m, j)),
                }
            }
        }
        return;
    }
    for (i, out) in ys.chunks_exact_mut(m).enumerate() {
        let r = first + i;
        let (Some(wq), Some(wsc), Some(wd)) = (
            q.get(at(r, Q6K_BYTES)),
            sc.get(at(r, 16)),
            w.scales.get(at(r, 1)),
        ) else {
            out.fill(f32::NAN);
            continue;
        };
        for (j, o) in out.iter_mut().enumerate() {
            let x = (
                &act.q[at(j, SUPER)],
                &act.scales[at(j, 1)],
                &act.sums16[at(j, 16)],
            );
            *o = dot_q6k((wq, wsc, wd), x);
        }
    }
}

/// One Q6_K weight row (values, sub-block scales, super-block scales) against one
/// activation row quantized per super-block (values, scales, sums of 16): per super-block
/// the integer products of each 16-value sub-block, less 32 times the activations' sum,
/// times its scale, added up, then scaled once.
fn dot_q6k((q, sc, ds): (&[u8], &[i8], &[u16]), (x, xs, xsum): (&[i8], &[f32], &[i16])) -> f32 {
    let mut total = 0f32;
    for ((((qb, scb), &d), (xb, &dx)), sums) in q
        .chunks_exact(Q6K_BYTES)
        .zip(sc.chunks_exact(16))
        .zip(ds)
        .zip(x.chunks_exact(SUPER).zip(xs))
        .zip(xsum.chunks_exact(16))
    {
        let mut acc = 0i32;
        for (j, (&s, &t)) in scb.iter().zip(sums).enumerate() {
            let p: i32 = (16 * j..16 * j + 16)
                .map(|v| i32::from(q6k_value(qb, v)) * i32::from(xb[v]))
                .sum();
            acc += i32::from(s) * (p - 32 * i32::from(t));
        }
        total += f16_to_f32(d) * dx * acc as f32;
    }
    total
}

/// The rest of [`rows`] for a row-major band: activation rows `done..m` one at a time.
fn rows_after(
    w: &BlockMatrix,
    act: &Activations,
    first: usize,
    ys: &mut [f32],
    m: usize,
    done: usize,
) {
    let avx2 = avx2();
    let nb = w.cols / BLOCK;
    for (i, out) in ys.chunks_exact_mut(m).enumerate() {
        let r = first + i;
        for (j, o) in out.iter_mut().enumerate().skip(done) {
            let x = &act.q[j * act.cols..(j + 1) * act.cols];
            let xp = act
                .q_halves
                .get(j * act.cols..(j + 1) * act.cols)
                .unwrap_or(&[]);
            let xs = &act.scales[j * nb..(j + 1) * nb];
            let xsum = &act.sums[j * nb..(j + 1) * nb];
            *o = dot(avx2, w, r, (x, xp), xs, xsum);
        }
    }
}

/// The prompt pass of [`rows`] for Q4_0 with the AVX-512 kernel on row-major rows (after
/// the tiles, or copied out of them): weight rows `first..` against activation rows
/// `0..m / 4 * 4`, four at a time. Each row's place and each group's activation slices are
/// worked out once, not per kernel call. Only called when `avx512()` and [`fours_decode`]
/// hold.
#[cfg(target_arch = "x86_64")]
fn prompt_512(w: &BlockMatrix, act: &Activations, first: usize, ys: &mut [f32], m: usize) {
    /// Rows `4g..4g + 4` of `v` (rows of `len`).
    fn four<T>(v: &[T], g: usize, len: usize) -> [&[T]; 4] {
        std::array::from_fn(|k| {
            v.get((4 * g + k) * len..(4 * g + k + 1) * len)
                .unwrap_or(&[])
        })
    }
    let (cols, nb) = (w.cols, w.cols / BLOCK);
    let n = ys.len() / m.max(1);
    let Quants::Q4(q) = &w.quants else {
        return;
    };
    let views: Vec<RowGroups<'_, u8>> = (first..first + n)
        .map(|r| w.row_groups(q, BLOCK / 2, r))
        .collect();
    for g in 0..m / 4 {
        let (xp, x) = (four(&act.q_halves, g, cols), four(&act.q, g, cols));
        let (xs, xsum) = (four(&act.scales, g, nb), four(&act.sums, g, nb));
        for (view, out) in views.iter().zip(ys.chunks_exact_mut(m)) {
            // SAFETY: compiled for AVX-512 F, BW, VNNI, GFNI, AVX2, FMA and F16C, which the
            // caller checked with `avx512()`.
            #[allow(unsafe_code)]
            let y = unsafe {
                if view.offsets.is_empty() {
                    x86::dot4_q4_512::<false>(*view, xp, x, xs, xsum)
                } else {
                    x86::dot4_q4_512::<true>(*view, xp, x, xs, xsum)
                }
            };
            out[4 * g..4 * g + 4].copy_from_slice(&y);
        }
    }
}

/// Whether the AVX-512 Q4_0 row kernel ([`prompt_512`]) takes this matrix and these
/// activations: Q4_0 with whole groups in GGML's order, the activations in halves.
#[cfg(target_arch = "x86_64")]
fn fours_decode(w: &BlockMatrix, act: &Activations) -> bool {
    w.block_groups && act.q_halves.len() == act.q.len()
}

/// Whether the tile kernels ([`tile_rows`]) take this matrix and these activations: Q4_0
/// laid out for them, the activations in steps.
#[cfg(target_arch = "x86_64")]
fn tiles_ready(w: &BlockMatrix, act: &Activations) -> bool {
    w.block_groups && act.q_steps.len() == STEP_COPIES * act.q.len()
}

/// Weight row `r` against activation rows `4g..4g + 4`, into `out` (4 values). Only called
/// when `avx2()` holds, and for a row-major row (not in a tile); Q4_0 with AVX-512 goes
/// through [`prompt_512`] instead.
#[cfg(target_arch = "x86_64")]
fn four_rows(w: &BlockMatrix, act: &Activations, r: usize, g: usize, out: &mut [f32]) {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let ws = w.scales.get(r * nb..(r + 1) * nb).unwrap_or(&[]);
    let x: [&[i8]; 4] = std::array::from_fn(|k| &act.q[(4 * g + k) * cols..(4 * g + k + 1) * cols]);
    let xs: [&[f32]; 4] =
        std::array::from_fn(|k| &act.scales[(4 * g + k) * nb..(4 * g + k + 1) * nb]);
    let xsum: [&[f32]; 4] =
        std::array::from_fn(|k| &act.sums[(4 * g + k) * nb..(4 * g + k + 1) * nb]);
    let y = match &w.quants {
        // SAFETY: compiled for AVX2, FMA and F16C, which the caller checked with `avx2()`.
        #[allow(unsafe_code)]
        Quants::Q8(q) => unsafe {
            let wr = q.get(r * cols..(r + 1) * cols).unwrap_or(&[]);
            if avx512() {
                x86::dot4_q8_512(wr, ws, x, xs, xsum)
            } else {
                x86::dot4_q8(wr, ws, x, xs)
            }
        },
        // SAFETY: as above.
        #[allow(unsafe_code)]
        Quants::Q4(q) => unsafe {
            let wr = q.get(r * cols / 2..(r + 1) * cols / 2).unwrap_or(&[]);
            match w.offsets.get(r * nb..(r + 1) * nb) {
                Some(es) => x86::dot4_q4::<true>(wr, (ws, es), x, xs, xsum),
                None => x86::dot4_q4::<false>(wr, (ws, ws), x, xs, xsum),
            }
        },
        // Q6_K rows go through `rows_q6k`.
        Quants::Q6K { .. } => [f32::NAN; 4],
    };
    out.copy_from_slice(&y);
}

/// The x86 kernels: explicit AVX2, since the crate is compiled for baseline x86-64 and LLVM
/// does not find `vpmaddubsw` on its own, and also AVX-512 (F, BW, VNNI, GFNI): 64-byte
/// vectors and `vpdpbusd`, which does `vpmaddubsw` + `vpmaddwd` in one instruction. Every
/// function is compiled with the features its attribute names and may only be called after
/// [`avx2`] (and for the `_512` ones [`avx512`]) has found them; inside, the memory accesses
/// are unaligned loads of exactly 16, 32 or 64 bytes from arrays of that length, and
/// prefetch hints. (The `unsafe` blocks around intrinsics are needed on older compilers and
/// redundant on newer ones, hence `unused_unsafe`.)
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, unused_unsafe)]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Q6K_BYTES, SUPER};

    /// One block of 32 activations to 8 bits, exactly as the portable loop in
    /// `Activations::quantize` does it (same scale, same multiply, rounding half away from
    /// zero by adding a signed 0.5 and truncating): returns the scale and the sum of the
    /// quantized values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_block(x: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, i32) {
        // SAFETY: 32-byte loads from checked 8-float arrays, one 32-byte store to the
        // 32-byte output array; register arithmetic otherwise.
        unsafe {
            let v: [__m256; 4] =
                std::array::from_fn(|i| match <&[f32; 8]>::try_from(&x[8 * i..8 * i + 8]) {
                    Ok(c) => _mm256_loadu_ps(c.as_ptr()),
                    Err(_) => _mm256_setzero_ps(),
                });
            let m = v
                .iter()
                .fold(_mm256_setzero_ps(), |m, &a| _mm256_max_ps(m, abs(a)));
            let d = hmax(m) / 127.0;
            let i = round_to_i32(v, if d > 0.0 { 1.0 / d } else { 0.0 });
            let total =
                _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            store_i8(i, q);
            (d, hsum_i32(total))
        }
    }

    /// `|a|`, lane by lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn abs(a: __m256) -> __m256 {
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), a)
    }

    /// The largest of eight lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hmax(m: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
    }

    /// The sum of eight 32-bit lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum_i32(t: __m256i) -> i32 {
        let t = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        let t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b01_00_11_10));
        _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0b10_11_00_01)))
    }

    /// 32 values times `inv`, rounded half away from zero (a signed 0.5 added, then
    /// truncated) as the portable loops round.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn round_to_i32(v: [__m256; 4], inv: f32) -> [__m256i; 4] {
        let (inv, half, sign) = (
            _mm256_set1_ps(inv),
            _mm256_set1_ps(0.5),
            _mm256_set1_ps(-0.0),
        );
        v.map(|v| {
            let r = _mm256_mul_ps(v, inv);
            let h = _mm256_or_ps(half, _mm256_and_ps(sign, r));
            _mm256_cvttps_epi32(_mm256_add_ps(r, h))
        })
    }

    /// 32 values of at most 127 in magnitude stored as bytes, in order.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store_i8(i: [__m256i; 4], q: &mut [i8; BLOCK]) {
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(i[0], i[1]),
            _mm256_packs_epi32(i[2], i[3]),
        );
        // The packs interleave 128-bit lanes; put the 4-byte groups back in order.
        let ordered =
            _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: a 32-byte store into a 32-byte array.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), ordered) };
    }

    /// A run of four quantized activation blocks (128 bytes) in the order of
    /// `Activations::q_steps`: step `s` (bytes `4s..4s + 4` of each block) four times, for
    /// each of the eight steps. Each 64-byte step is one `vpermt2d` of the run's 32 dwords:
    /// dword `s` of block `j` is dword `8j + s`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn steps_512(run: &[i8; 4 * BLOCK], out: &mut [i8; 16 * BLOCK]) {
        // SAFETY: two 64-byte loads from the 128-byte run, eight 64-byte stores into the
        // 512-byte output; register arithmetic otherwise.
        unsafe {
            let a = _mm512_loadu_si512(run.as_ptr().cast());
            let b = _mm512_loadu_si512(run[64..].as_ptr().cast());
            // Dword `s` of blocks 0-3, in each 128-bit lane.
            let first = _mm512_broadcast_i32x4(_mm_setr_epi32(0, 8, 16, 24));
            for s in 0..8 {
                let idx = _mm512_add_epi32(first, _mm512_set1_epi32(s));
                let step = _mm512_permutex2var_epi32(a, idx, b);
                _mm512_storeu_si512(out[64 * s as usize..].as_mut_ptr().cast(), step);
            }
        }
    }

    /// `super::quantize_super_block` with AVX2: the same scale, multiply and rounding.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_super_block(
        x: &[f32; super::SUPER],
        q: &mut [i8; super::SUPER],
        sums16: &mut Vec<i16>,
    ) -> f32 {
        // SAFETY: 32-byte loads from checked 8-float arrays, 32-byte stores to checked
        // 32-byte arrays; register arithmetic otherwise.
        unsafe {
            let (xv, _) = x.as_chunks::<8>();
            let m = xv.iter().fold(_mm256_setzero_ps(), |m, c| {
                _mm256_max_ps(m, abs(_mm256_loadu_ps(c.as_ptr())))
            });
            let d = hmax(m) / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (xb, qb) in xv.chunks_exact(4).zip(q.as_chunks_mut::<BLOCK>().0) {
                let i = round_to_i32(
                    std::array::from_fn(|k| _mm256_loadu_ps(xb[k].as_ptr())),
                    inv,
                );
                // The sums of values 0-15 and 16-31 (at most 16 * 127: inside i16).
                sums16.push(hsum_i32(_mm256_add_epi32(i[0], i[1])) as i16);
                sums16.push(hsum_i32(_mm256_add_epi32(i[2], i[3])) as i16);
                store_i8(i, qb);
            }
            d
        }
    }

    /// How far ahead of the decode kernels' reads, in bytes of quantized values, they ask
    /// for the weights: about 6 KB, tuned on this machine's EPYC (4 to 8 KB did as well; 1 to
    /// 2 KB hurt). The hardware prefetchers alone do not keep enough reads in flight while
    /// the kernel computes: with these hints a 2-thread Q4_0 pass over small matrices went
    /// from 39 to 43-45 GB/s and a Q8_0 pass over one large matrix from 61 to 74-78 GB/s
    /// (`examples/kernels.rs`). A prefetch past the end of the matrix is only a hint: the
    /// address is never read.
    const PREFETCH_AHEAD: usize = 6144;

    /// Prefetch hints (into L1) for the 64-byte lines at `at + PREFETCH_AHEAD` bytes, for
    /// `lines` lines, and for the scale line `scales_at + scale_ahead` elements ahead.
    #[inline(always)]
    fn prefetch_ahead<T>(at: *const u8, lines: usize, scales_at: *const T, scale_ahead: usize) {
        for l in 0..lines {
            // SAFETY: `prefetcht0` is a hint: it reads nothing architecturally and cannot
            // fault, whatever the address (here possibly past the end of the weights; the
            // pointer is formed with `wrapping_add` and never dereferenced).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_AHEAD + 64 * l).cast()) };
        }
        // SAFETY: as above.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(scales_at.wrapping_add(scale_ahead).cast()) };
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load32(v: &[i8; BLOCK]) -> __m256i {
        // SAFETY: `v` is 32 readable bytes; `loadu` needs no alignment.
        unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
    }

    /// 8 lanes of i32, each the sum of 4 products `w * x`. `|w|` and `x * sign(w)` make the
    /// left side unsigned, as `vpmaddubsw` needs, without changing any product; pairs of
    /// u8 * i8 fit i16 since |w| <= 128 and |x| <= 127.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot_i8(w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: arithmetic on registers only.
        unsafe {
            let aw = _mm256_sign_epi8(w, w);
            let sx = _mm256_sign_epi8(x, w);
            _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1))
        }
    }

    /// An f16 scale as f32 (`vcvtph2ps`).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn f16_scale(h: u16) -> f32 {
        // SAFETY: arithmetic on registers only.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h)))) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: arithmetic on registers only.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// One Q8_0 block against one activation block: 8 lanes of `w * x` sums, scaled.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_block(acc: __m256, w: &[i8; BLOCK], x: &[i8; BLOCK], d: u16, dx: f32) -> __m256 {
        // SAFETY: register arithmetic and 32-byte loads from 32-byte arrays.
        unsafe {
            let p = dot_i8(load32(w), load32(x));
            _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(p),
                _mm256_set1_ps(f16_scale(d) * dx),
                acc,
            )
        }
    }

    /// One Q4_0 block against one activation block, on the unsigned nibbles (`vpmaddubsw`
    /// takes them as they are: 15 * 127 * 2 fits i16); the caller subtracts the offset of 8
    /// through the activation block sums. Returns the new accumulator and the weight scale.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_block(
        acc: __m256,
        w: &[u8; BLOCK / 2],
        x: &[i8; BLOCK],
        d: u16,
        dx: f32,
    ) -> (__m256, f32) {
        // SAFETY: register arithmetic, a 16-byte load from a 16-byte array and a 32-byte
        // load from a 32-byte array.
        unsafe {
            let b = _mm_loadu_si128(w.as_ptr().cast());
            let low = _mm_set1_epi8(0x0F);
            let nib = _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16(b, 4), low),
                _mm_and_si128(b, low),
            );
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(nib, load32(x)), _mm256_set1_epi16(1));
            let dw = f16_scale(d);
            (
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * dx), acc),
                dw,
            )
        }
    }

    /// One Q8_0 row against four activation rows: each weight block is loaded once.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_q8(w: &[i8], ws: &[u16], x: [&[i8]; 4], xs: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: register arithmetic and 32-byte loads from checked 32-byte arrays; the
        // caller guarantees AVX2, FMA and F16C.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let ones = _mm256_set1_epi16(1);
            // Groups of eight blocks with their scales as vectors, as in `dot4_q4`.
            let groups = ws.len() / 8;
            for g in 0..groups {
                let Ok(d8) = <&[u16; 8]>::try_from(&ws[8 * g..8 * g + 8]) else {
                    continue;
                };
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(d8.as_ptr().cast()));
                let mut s8 = [_mm256_setzero_ps(); 4];
                for k in 0..4 {
                    let Ok(x8) = <&[f32; 8]>::try_from(&xs[k][8 * g..8 * g + 8]) else {
                        continue;
                    };
                    s8[k] = _mm256_mul_ps(dw, _mm256_loadu_ps(x8.as_ptr()));
                }
                for j in 0..8 {
                    let b = 8 * g + j;
                    let Ok(wb) = <&[i8; BLOCK]>::try_from(&w[b * BLOCK..(b + 1) * BLOCK]) else {
                        continue;
                    };
                    let wv = load32(wb);
                    let aw = _mm256_sign_epi8(wv, wv);
                    let lane = _mm256_set1_epi32(j as i32);
                    for k in 0..4 {
                        let Ok(xb) = <&[i8; BLOCK]>::try_from(&x[k][b * BLOCK..(b + 1) * BLOCK])
                        else {
                            continue;
                        };
                        let sx = _mm256_sign_epi8(load32(xb), wv);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
                        let sk = _mm256_permutevar8x32_ps(s8[k], lane);
                        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sk, acc[k]);
                    }
                }
            }
            for (b, (wb, &d)) in w.chunks_exact(BLOCK).zip(ws).enumerate().skip(groups * 8) {
                let Ok(wb) = <&[i8; BLOCK]>::try_from(wb) else {
                    continue;
                };
                let wv = load32(wb);
                let aw = _mm256_sign_epi8(wv, wv);
                let dw = f16_scale(d);
                for k in 0..4 {
                    let Ok(xb) = <&[i8; BLOCK]>::try_from(&x[k][b * BLOCK..(b + 1) * BLOCK]) else {
                        continue;
                    };
                    let sx = _mm256_sign_epi8(load32(xb), wv);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
                    let s = _mm256_set1_ps(dw * xs[k][b]);
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[k]);
                }
            }
            [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
        }
    }

    /// One Q4_0 row against four activation rows: each pair of weight blocks is loaded and
    /// unpacked once for four products.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_q4<const OFF: bool>(
        w: &[u8],
        (ws, es): (&[u16], &[u16]),
        x: [&[i8]; 4],
        xs: [&[f32]; 4],
        xsum: [&[f32]; 4],
    ) -> [f32; 4] {
        // SAFETY: register arithmetic and 32-byte loads from checked 32-byte arrays; the
        // caller guarantees AVX2, FMA and F16C.
        unsafe {
            let nb = ws.len();
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut offset = [0f32; 4];
            let ones = _mm256_set1_epi16(1);
            let low = _mm256_set1_epi8(0x0F);
            // Groups of eight blocks with their scales as vectors (one conversion per group,
            // one multiply and one offset multiply-add per activation row, a lane permute per
            // block), as in `dot_q4`.
            let groups = nb / 8;
            let mut off8 = [_mm256_setzero_ps(); 4];
            for g in 0..groups {
                // The group's weights (four pairs), scales and activation blocks as fixed-size
                // arrays: every access below is checked at compile time.
                let (Ok(d8), Ok(wg), Ok(x0), Ok(x1), Ok(x2), Ok(x3)) = (
                    <&[u16; 8]>::try_from(&ws[8 * g..8 * g + 8]),
                    <&[u8; 4 * BLOCK]>::try_from(&w[4 * BLOCK * g..4 * BLOCK * (g + 1)]),
                    <&[i8; 8 * BLOCK]>::try_from(&x[0][8 * BLOCK * g..8 * BLOCK * (g + 1)]),
                    <&[i8; 8 * BLOCK]>::try_from(&x[1][8 * BLOCK * g..8 * BLOCK * (g + 1)]),
                    <&[i8; 8 * BLOCK]>::try_from(&x[2][8 * BLOCK * g..8 * BLOCK * (g + 1)]),
                    <&[i8; 8 * BLOCK]>::try_from(&x[3][8 * BLOCK * g..8 * BLOCK * (g + 1)]),
                ) else {
                    continue;
                };
                let xg = [x0, x1, x2, x3];
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(d8.as_ptr().cast()));
                let ow = offset_factors::<OFF>(dw, es, 8 * g);
                // The combined scales go through memory: broadcasting one from there is a
                // load, where taking it from a register costs shuffles on the vector ALUs,
                // this kernel's bottleneck.
                let mut s8 = [[0f32; 8]; 4];
                for k in 0..4 {
                    let (Ok(x8), Ok(t8)) = (
                        <&[f32; 8]>::try_from(&xs[k][8 * g..8 * g + 8]),
                        <&[f32; 8]>::try_from(&xsum[k][8 * g..8 * g + 8]),
                    ) else {
                        continue;
                    };
                    _mm256_storeu_ps(
                        s8[k].as_mut_ptr(),
                        _mm256_mul_ps(dw, _mm256_loadu_ps(x8.as_ptr())),
                    );
                    off8[k] = _mm256_fmadd_ps(ow, _mm256_loadu_ps(t8.as_ptr()), off8[k]);
                }
                for j in 0..4 {
                    let Ok(wp) = <&[u8; BLOCK]>::try_from(&wg[j * BLOCK..(j + 1) * BLOCK]) else {
                        continue;
                    };
                    let raw = _mm256_loadu_si256(wp.as_ptr().cast());
                    let halves = [
                        _mm256_and_si256(raw, low),
                        _mm256_and_si256(_mm256_srli_epi16(raw, 4), low),
                    ];
                    for (h, nib) in halves.into_iter().enumerate() {
                        let b = 2 * j + h;
                        for k in 0..4 {
                            let Ok(xb) =
                                <&[i8; BLOCK]>::try_from(&xg[k][b * BLOCK..(b + 1) * BLOCK])
                            else {
                                continue;
                            };
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(nib, load32(xb)), ones);
                            let sk = _mm256_broadcast_ss(&s8[k][b]);
                            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sk, acc[k]);
                        }
                    }
                }
            }
            for k in 0..4 {
                offset[k] += hsum(off8[k]);
            }
            for q in groups * 4..nb / 2 {
                let Ok(wp) = <&[u8; BLOCK]>::try_from(&w[q * BLOCK..(q + 1) * BLOCK]) else {
                    continue;
                };
                let raw = _mm256_loadu_si256(wp.as_ptr().cast());
                let halves = [
                    _mm256_and_si256(raw, low),
                    _mm256_and_si256(_mm256_srli_epi16(raw, 4), low),
                ];
                for (h, nib) in halves.into_iter().enumerate() {
                    let b = 2 * q + h;
                    let dw = f16_scale(ws[b]);
                    for k in 0..4 {
                        let Ok(xb) = <&[i8; BLOCK]>::try_from(&x[k][b * BLOCK..(b + 1) * BLOCK])
                        else {
                            continue;
                        };
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(nib, load32(xb)), ones);
                        let s = _mm256_set1_ps(dw * xs[k][b]);
                        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[k]);
                        offset[k] += dw * xsum[k][b];
                    }
                }
            }
            if nb % 2 == 1 {
                let b = nb - 1;
                if let Ok(wb) = <&[u8; BLOCK / 2]>::try_from(&w[b * BLOCK / 2..(b + 1) * BLOCK / 2])
                {
                    for k in 0..4 {
                        let Ok(xb) = <&[i8; BLOCK]>::try_from(&x[k][b * BLOCK..(b + 1) * BLOCK])
                        else {
                            continue;
                        };
                        let (a, dw) = q4_block(acc[k], wb, xb, ws[b], xs[k][b]);
                        acc[k] = a;
                        offset[k] += dw * xsum[k][b];
                    }
                }
            }
            // Blocks after the whole groups took their scales as offset factors.
            let rest = 8 * groups;
            let shift = |k: usize| match (OFF, es.get(rest..), xsum[k].get(rest..)) {
                (true, Some(e), Some(t)) => super::offset_shift(&ws[rest..], e, t),
                _ => 0.0,
            };
            [
                hsum(acc[0]) - 8.0 * offset[0] + shift(0),
                hsum(acc[1]) - 8.0 * offset[1] + shift(1),
                hsum(acc[2]) - 8.0 * offset[2] + shift(2),
                hsum(acc[3]) - 8.0 * offset[3] + shift(3),
            ]
        }
    }

    /// One Q8_0 row against one activation row (`ws.len()` blocks). Groups of four blocks go
    /// to four accumulators so the multiply-adds do not wait on each other.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8(w: &[i8], ws: &[u16], x: &[i8], xs: &[f32]) -> f32 {
        // SAFETY: the callees need AVX2, FMA and F16C, which this function's caller
        // guarantees; every array comes from a checked conversion.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            // Eight blocks per step, their scales as one vector (one conversion and one
            // multiply for eight blocks, a lane permute per block).
            let groups = w
                .chunks_exact(8 * BLOCK)
                .zip(x.chunks_exact(8 * BLOCK))
                .zip(ws.chunks_exact(8).zip(xs.chunks_exact(8)));
            for ((wg, xg), (dg, sg)) in groups {
                // 256 bytes of values (four lines) per group; a scale per 32 bytes of them.
                prefetch_ahead(wg.as_ptr().cast(), 4, dg.as_ptr(), PREFETCH_AHEAD / 32);
                let (Ok(d8), Ok(x8)) = (<&[u16; 8]>::try_from(dg), <&[f32; 8]>::try_from(sg))
                else {
                    continue;
                };
                let s8 = _mm256_mul_ps(
                    _mm256_cvtph_ps(_mm_loadu_si128(d8.as_ptr().cast())),
                    _mm256_loadu_ps(x8.as_ptr()),
                );
                for j in 0..8 {
                    let (Ok(wb), Ok(xb)) = (
                        <&[i8; BLOCK]>::try_from(&wg[j * BLOCK..(j + 1) * BLOCK]),
                        <&[i8; BLOCK]>::try_from(&xg[j * BLOCK..(j + 1) * BLOCK]),
                    ) else {
                        continue;
                    };
                    let p = dot_i8(load32(wb), load32(xb));
                    let sj = _mm256_permutevar8x32_ps(s8, _mm256_set1_epi32(j as i32));
                    acc[j % 4] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sj, acc[j % 4]);
                }
            }
            let done = ws.len() / 8 * 8;
            for b in done..ws.len() {
                let (Ok(wb), Ok(xb)) = (
                    <&[i8; BLOCK]>::try_from(&w[b * BLOCK..(b + 1) * BLOCK]),
                    <&[i8; BLOCK]>::try_from(&x[b * BLOCK..(b + 1) * BLOCK]),
                ) else {
                    continue;
                };
                acc[0] = q8_block(acc[0], wb, xb, ws[b], xs[b]);
            }
            hsum(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            ))
        }
    }

    /// Two Q4_0 blocks (one 32-byte pair) against their two activation blocks: 8 lanes of
    /// sums per block, on the unsigned nibbles (`vpmaddubsw` takes them as they are:
    /// 15 * 127 * 2 fits i16); the caller subtracts the offset of 8 through the block sums.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q4_pair(w: &[u8; BLOCK], xa: &[i8; BLOCK], xb: &[i8; BLOCK]) -> (__m256i, __m256i) {
        // SAFETY: register arithmetic and 32-byte loads from 32-byte arrays.
        unsafe {
            let raw = _mm256_loadu_si256(w.as_ptr().cast());
            let low = _mm256_set1_epi8(0x0F);
            let a = _mm256_and_si256(raw, low);
            let b = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
            let ones = _mm256_set1_epi16(1);
            (
                _mm256_madd_epi16(_mm256_maddubs_epi16(a, load32(xa)), ones),
                _mm256_madd_epi16(_mm256_maddubs_epi16(b, load32(xb)), ones),
            )
        }
    }

    /// [`dot_q4`] with 512-bit vectors and `vpdpbusd` (AVX-512 F, BW and VNNI) for whole
    /// groups of eight blocks, in GGML's order (`BlockMatrix::block_groups`), reading the
    /// activations from `xp` (the row in the order of `Activations::q_halves`); the rest of
    /// the row, packed by pairs, goes to [`dot_q4`] on `x`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    pub(super) unsafe fn dot_q4_512<const OFF: bool>(
        w: &[u8],
        (ws, es): (&[u16], &[u16]),
        xp: &[i8],
        x: &[i8],
        xs: &[f32],
        xsum: &[f32],
    ) -> f32 {
        // SAFETY: loads of 64, 32 and 16 bytes from checked arrays of that size; register
        // arithmetic otherwise; the caller checked the features.
        unsafe {
            let groups = ws.len() / 8;
            let mut acc = [_mm512_setzero_ps(); 2];
            let mut off8 = _mm256_setzero_ps();
            let idx = [quarters(0), quarters(1)];
            let chunks = w
                .chunks_exact(4 * BLOCK)
                .zip(xp.chunks_exact(8 * BLOCK))
                .zip(
                    ws.chunks_exact(8)
                        .zip(xs.chunks_exact(8))
                        .zip(xsum.chunks_exact(8)),
                )
                .take(groups);
            for (g, ((wg, xg), ((d8, x8), t8))) in chunks.enumerate() {
                let (Ok(wg), Ok(xg), Ok(d8), Ok(x8), Ok(t8)) = (
                    <&[u8; 4 * BLOCK]>::try_from(wg),
                    <&[i8; 8 * BLOCK]>::try_from(xg),
                    <&[u16; 8]>::try_from(d8),
                    <&[f32; 8]>::try_from(x8),
                    <&[f32; 8]>::try_from(t8),
                ) else {
                    continue;
                };
                prefetch_ahead(wg.as_ptr(), 2, d8.as_ptr(), PREFETCH_AHEAD / 16);
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(d8.as_ptr().cast()));
                let ow = offset_factors::<OFF>(dw, es, 8 * g);
                let s8 = _mm512_castps256_ps512(_mm256_mul_ps(dw, _mm256_loadu_ps(x8.as_ptr())));
                off8 = _mm256_fmadd_ps(ow, _mm256_loadu_ps(t8.as_ptr()), off8);
                for (h, (a, &ix)) in acc.iter_mut().zip(&idx).enumerate() {
                    let Ok(wp) = <&[u8; 2 * BLOCK]>::try_from(&wg[64 * h..64 * h + 64]) else {
                        continue;
                    };
                    *a = q4_run_512(*a, nibbles(wp), xg, h, ix, s8);
                }
            }
            let head = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) - 8.0 * hsum(off8);
            let (b, bytes) = (8 * groups, 8 * groups * BLOCK / 2);
            let tail = if b < ws.len() {
                let tw = &ws[b..];
                let te = if OFF { es.get(b..).unwrap_or(&[]) } else { tw };
                dot_q4::<OFF>(&w[bytes..], (tw, te), &x[b * BLOCK..], &xs[b..], &xsum[b..])
            } else {
                0.0
            };
            head + tail
        }
    }

    /// Two Q8_0 blocks (`w`, one 64-byte load) against two activation blocks, scaled by the
    /// lanes `idx` of `s8` and added to `acc`. The weights are made unsigned by flipping their
    /// sign bit (`w + 128`), as `vpdpbusd` needs; the caller subtracts `128 * sum(x)` per
    /// block through the activation block sums.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn q8_two_512(
        acc: __m512,
        w: __m512i,
        x: &[i8; 2 * BLOCK],
        idx: __m512i,
        s8: __m512,
    ) -> __m512 {
        // SAFETY: a 64-byte load from a 64-byte array; register arithmetic otherwise.
        unsafe {
            let p = _mm512_dpbusd_epi32(
                _mm512_setzero_si512(),
                w,
                _mm512_loadu_si512(x.as_ptr().cast()),
            );
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx, s8), acc)
        }
    }

    /// [`dot4_q8`] with 512-bit vectors and `vpdpbusd` for whole groups of eight blocks (the
    /// rest of the row goes to [`dot4_q8`]); `xsum` holds the activation block sums for the
    /// `+ 128` offset of the weights.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    pub(super) unsafe fn dot4_q8_512(
        w: &[i8],
        ws: &[u16],
        x: [&[i8]; 4],
        xs: [&[f32]; 4],
        xsum: [&[f32]; 4],
    ) -> [f32; 4] {
        // SAFETY: as for `dot_q4_512`.
        unsafe {
            let nb = ws.len();
            let groups = nb / 8;
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
            );
            let mut off8 = [_mm256_setzero_ps(); 4];
            let flip = _mm512_set1_epi8(-128);
            // Lanes 0-7: the first block of a 64-byte run, 8-15: the second.
            let idx0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            let two = _mm512_set1_epi32(2);
            for g in 0..groups {
                let span = 8 * BLOCK * g..8 * BLOCK * (g + 1);
                let (Ok(d8), Some(Ok(wg))) = (
                    <&[u16; 8]>::try_from(&ws[8 * g..8 * g + 8]),
                    w.get(span.clone()).map(<&[i8; 8 * BLOCK]>::try_from),
                ) else {
                    continue;
                };
                // Written out: closures are not inlined into a function with other target
                // features.
                let (Some(Ok(x0)), Some(Ok(x1)), Some(Ok(x2)), Some(Ok(x3))) = (
                    x[0].get(span.clone()).map(<&[i8; 8 * BLOCK]>::try_from),
                    x[1].get(span.clone()).map(<&[i8; 8 * BLOCK]>::try_from),
                    x[2].get(span.clone()).map(<&[i8; 8 * BLOCK]>::try_from),
                    x[3].get(span).map(<&[i8; 8 * BLOCK]>::try_from),
                ) else {
                    continue;
                };
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(d8.as_ptr().cast()));
                let mut s8 = [_mm512_setzero_ps(); 4];
                for k in 0..4 {
                    let (Ok(x8), Ok(t8)) = (
                        <&[f32; 8]>::try_from(&xs[k][8 * g..8 * g + 8]),
                        <&[f32; 8]>::try_from(&xsum[k][8 * g..8 * g + 8]),
                    ) else {
                        continue;
                    };
                    s8[k] = _mm512_castps256_ps512(_mm256_mul_ps(dw, _mm256_loadu_ps(x8.as_ptr())));
                    off8[k] = _mm256_fmadd_ps(dw, _mm256_loadu_ps(t8.as_ptr()), off8[k]);
                }
                let mut idx = idx0;
                for j in 0..4 {
                    let run = 2 * BLOCK * j..2 * BLOCK * (j + 1);
                    let (Ok(wp), Ok(y0), Ok(y1), Ok(y2), Ok(y3)) = (
                        <&[i8; 2 * BLOCK]>::try_from(&wg[run.clone()]),
                        <&[i8; 2 * BLOCK]>::try_from(&x0[run.clone()]),
                        <&[i8; 2 * BLOCK]>::try_from(&x1[run.clone()]),
                        <&[i8; 2 * BLOCK]>::try_from(&x2[run.clone()]),
                        <&[i8; 2 * BLOCK]>::try_from(&x3[run]),
                    ) else {
                        continue;
                    };
                    let wu = _mm512_xor_si512(_mm512_loadu_si512(wp.as_ptr().cast()), flip);
                    a0 = q8_two_512(a0, wu, y0, idx, s8[0]);
                    a1 = q8_two_512(a1, wu, y1, idx, s8[1]);
                    a2 = q8_two_512(a2, wu, y2, idx, s8[2]);
                    a3 = q8_two_512(a3, wu, y3, idx, s8[3]);
                    idx = _mm512_add_epi32(idx, two);
                }
            }
            let acc = [a0, a1, a2, a3];
            let b = 8 * groups;
            let tail = if b < nb {
                dot4_q8(
                    &w[b * BLOCK..],
                    &ws[b..],
                    x.map(|r| &r[b * BLOCK..]),
                    xs.map(|r| &r[b..]),
                )
            } else {
                [0.0; 4]
            };
            std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]) - 128.0 * hsum(off8[k]) + tail[k])
        }
    }

    /// The low and the high nibbles of 64 bytes of Q4_0 values, as bytes 0..16. The high
    /// ones take one GFNI affine transform (each byte's bits 4-7 moved to 0-3, the rest
    /// cleared) instead of a 16-bit shift and a mask: decode 4-8% faster in cache.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    pub(super) unsafe fn nibbles(w: &[u8; 2 * BLOCK]) -> (__m512i, __m512i) {
        // Row `7 - i` of the bit matrix picks source bit `i + 4` for result bit `i` (i < 4);
        // rows for result bits 4-7 are zero.
        const HIGH_TO_LOW: i64 = 0x1020_4080_0000_0000;
        // SAFETY: a 64-byte load from a 64-byte array; register arithmetic otherwise.
        unsafe {
            let raw = _mm512_loadu_si512(w.as_ptr().cast());
            (
                _mm512_and_si512(raw, _mm512_set1_epi8(0x0F)),
                _mm512_gf2p8affine_epi64_epi8::<0>(raw, _mm512_set1_epi64(HIGH_TO_LOW)),
            )
        }
    }

    /// Which of a group's eight scales each lane of run `h`'s products takes: lanes
    /// `4k..4k + 4` hold block `4h + k`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn quarters(h: usize) -> __m512i {
        let b = 4 * h as i32;
        _mm512_setr_epi32(
            b,
            b,
            b,
            b,
            b + 1,
            b + 1,
            b + 1,
            b + 1,
            b + 2,
            b + 2,
            b + 2,
            b + 2,
            b + 3,
            b + 3,
            b + 3,
            b + 3,
        )
    }

    /// One run of four Q4_0 blocks in GGML's order (`lo`, `hi`: its unpacked nibbles)
    /// against run `h` of a group of activations in halves: both nibbles' products go into
    /// the same lanes (four per block), which are scaled by the lanes `idx` of `s8` and added
    /// to `acc`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn q4_run_512(
        acc: __m512,
        (lo, hi): (__m512i, __m512i),
        xg: &[i8; 8 * BLOCK],
        h: usize,
        idx: __m512i,
        s8: __m512,
    ) -> __m512 {
        // SAFETY: 64-byte loads from checked 64-byte arrays; register arithmetic otherwise.
        unsafe {
            let (Ok(xa), Ok(xb)) = (
                <&[i8; 2 * BLOCK]>::try_from(&xg[128 * h..128 * h + 64]),
                <&[i8; 2 * BLOCK]>::try_from(&xg[128 * h + 64..128 * h + 128]),
            ) else {
                return acc;
            };
            let p = _mm512_dpbusd_epi32(
                _mm512_setzero_si512(),
                lo,
                _mm512_loadu_si512(xa.as_ptr().cast()),
            );
            let p = _mm512_dpbusd_epi32(p, hi, _mm512_loadu_si512(xb.as_ptr().cast()));
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx, s8), acc)
        }
    }

    /// [`dot4_q4`] with 512-bit vectors and `vpdpbusd` for whole groups of eight blocks in
    /// GGML's order, the activations read from `xp` (rows in the order of
    /// `Activations::q_halves`); the rest of the row, packed by pairs, goes to [`dot4_q4`] on
    /// `x`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    pub(super) unsafe fn dot4_q4_512<const OFF: bool>(
        w: super::RowGroups<'_, u8>,
        xp: [&[i8]; 4],
        x: [&[i8]; 4],
        xs: [&[f32]; 4],
        xsum: [&[f32]; 4],
    ) -> [f32; 4] {
        // SAFETY: as for `dot_q4_512`.
        unsafe {
            let nb = xs[0].len();
            let groups = nb / 8;
            // Four named accumulators, not an array: indexed ones were kept in memory.
            let zero = (_mm512_setzero_ps(), _mm256_setzero_ps());
            let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
            let (values, scales) = (w.values, w.scales);
            for g in 0..groups {
                let (at, s_at) = (4 * BLOCK * g, 8 * g);
                let (Some(Ok(d8)), Some(Ok(wg))) = (
                    scales.get(s_at..s_at + 8).map(<&[u16; 8]>::try_from),
                    values
                        .get(at..at + 4 * BLOCK)
                        .map(<&[u8; 4 * BLOCK]>::try_from),
                ) else {
                    continue;
                };
                // Written out: `array::from_fn` and closures are not inlined into a function
                // with other target features, and a call per group cost a fifth of the time.
                let span = 8 * BLOCK * g..8 * BLOCK * (g + 1);
                let (Some(Ok(x0)), Some(Ok(x1)), Some(Ok(x2)), Some(Ok(x3)), Ok(w0), Ok(w1)) = (
                    xp[0].get(span.clone()).map(<&[i8; 8 * BLOCK]>::try_from),
                    xp[1].get(span.clone()).map(<&[i8; 8 * BLOCK]>::try_from),
                    xp[2].get(span.clone()).map(<&[i8; 8 * BLOCK]>::try_from),
                    xp[3].get(span).map(<&[i8; 8 * BLOCK]>::try_from),
                    <&[u8; 2 * BLOCK]>::try_from(&wg[..64]),
                    <&[u8; 2 * BLOCK]>::try_from(&wg[64..]),
                ) else {
                    continue;
                };
                // The group is unpacked once for the four activation rows.
                let v = [nibbles(w0), nibbles(w1)];
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(d8.as_ptr().cast()));
                let f = (dw, offset_factors::<OFF>(dw, w.offsets, s_at));
                a0 = q4_unpacked_512(a0, v, f, x0, act_scales(xs[0], xsum[0], g));
                a1 = q4_unpacked_512(a1, v, f, x1, act_scales(xs[1], xsum[1], g));
                a2 = q4_unpacked_512(a2, v, f, x2, act_scales(xs[2], xsum[2], g));
                a3 = q4_unpacked_512(a3, v, f, x3, act_scales(xs[3], xsum[3], g));
            }
            let sums = finish4_512([a0, a1, a2, a3]);
            let b = 8 * groups;
            let tail = if b < nb {
                let es = if OFF { w.tail_offsets } else { w.tail_scales };
                dot4_q4::<OFF>(
                    w.tail,
                    (w.tail_scales, es),
                    x.map(|r| &r[b * BLOCK..]),
                    xs.map(|r| &r[b..]),
                    xsum.map(|r| &r[b..]),
                )
            } else {
                [0.0; 4]
            };
            std::array::from_fn(|k| sums[k] + tail[k])
        }
    }

    /// The sums of `a0`..`a3` (16 lanes each) as one vector `[Σa0, Σa1, Σa2, Σa3]`: one
    /// transposing reduction for four rows instead of four horizontal ones.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn reduce4_512(a0: __m512, a1: __m512, a2: __m512, a3: __m512) -> [f32; 4] {
        // SAFETY: register arithmetic, and one 16-byte store into a 4-float array.
        unsafe {
            // Per 128-bit lane: [a0, a1, a0, a1] and [a2, a3, a2, a3] partial sums...
            let t01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
            let t23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
            // ...then [a0, a1, a2, a3] per 128-bit lane...
            let (d01, d23) = (_mm512_castps_pd(t01), _mm512_castps_pd(t23));
            let u = _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(d01, d23)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(d01, d23)),
            );
            // ...and the four 128-bit lanes added.
            let v = _mm256_add_ps(
                _mm512_castps512_ps256(u),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(u))),
            );
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), s);
            out
        }
    }

    /// Lanes 0-7 `a`, lanes 8-15 `b`: which of a group's eight scales each lane of a
    /// two-block product takes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn halves(a: i32, b: i32) -> __m512i {
        _mm512_inserti64x4::<1>(_mm512_set1_epi32(a), _mm256_set1_epi32(b))
    }

    /// The factors of a group's offset term (see `BlockMatrix::offsets`): the group's
    /// scales `dw` for Q4_0, the eight offset factors from `es[at..]` with offsets.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn offset_factors<const OFF: bool>(dw: __m256, es: &[u16], at: usize) -> __m256 {
        if !OFF {
            return dw;
        }
        match es.get(at..at + 8).map(<&[u16; 8]>::try_from) {
            // SAFETY: a 16-byte load from a 16-byte array.
            Some(Ok(e8)) => unsafe { _mm256_cvtph_ps(_mm_loadu_si128(e8.as_ptr().cast())) },
            _ => dw,
        }
    }

    /// A group's eight weight scales (`d8`, f16) times its activation scales (`x8`), as the
    /// low lanes of a 512-bit vector, and `off` plus the weight scales times the activation
    /// block sums (`t8`): the offset term's running sum.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn group_scales(
        d8: &[u16; 8],
        (x8, t8): (__m256, __m256),
        off: __m256,
    ) -> (__m512, __m256) {
        // SAFETY: one 16-byte load from a 16-byte array; register arithmetic otherwise.
        unsafe {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(d8.as_ptr().cast()));
            (
                _mm512_castps256_ps512(_mm256_mul_ps(dw, x8)),
                _mm256_fmadd_ps(dw, t8, off),
            )
        }
    }

    /// One group of eight Q4_0 blocks in GGML's order, already unpacked (`v`: both runs'
    /// nibbles), of one weight row against the group's activations in halves `xg`
    /// (activation scales `x8`, scaled block sums `t8`), with its scales and offset factors
    /// converted (`dw`, `ow`), as the prompt kernel shares them between activation rows:
    /// returns the accumulator and offset sum with this group added.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn q4_unpacked_512(
        (acc, off): (__m512, __m256),
        v: [(__m512i, __m512i); 2],
        (dw, ow): (__m256, __m256),
        xg: &[i8; 8 * BLOCK],
        (x8, t8): (__m256, __m256),
    ) -> (__m512, __m256) {
        // SAFETY: register arithmetic, and the checked loads of `q4_run_512`.
        unsafe {
            let s8 = _mm512_castps256_ps512(_mm256_mul_ps(dw, x8));
            let acc = q4_run_512(acc, v[0], xg, 0, quarters(0), s8);
            let acc = q4_run_512(acc, v[1], xg, 1, quarters(1), s8);
            (acc, _mm256_fmadd_ps(ow, t8, off))
        }
    }

    /// Group `g`'s activation scales and scaled block sums from one row's `xs` and `xsum`
    /// (zeros past their ends).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn act_scales(xs: &[f32], xsum: &[f32], g: usize) -> (__m256, __m256) {
        // SAFETY: 32-byte loads from checked 8-float arrays.
        unsafe {
            match (
                xs.get(8 * g..8 * g + 8).map(<&[f32; 8]>::try_from),
                xsum.get(8 * g..8 * g + 8).map(<&[f32; 8]>::try_from),
            ) {
                (Some(Ok(x8)), Some(Ok(t8))) => {
                    (_mm256_loadu_ps(x8.as_ptr()), _mm256_loadu_ps(t8.as_ptr()))
                }
                _ => (_mm256_setzero_ps(), _mm256_setzero_ps()),
            }
        }
    }

    /// Four rows' sums from their accumulators and offset sums (the offset term, -8 per
    /// value, goes into the low half of each accumulator first).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn finish4_512(a: [(__m512, __m256); 4]) -> [f32; 4] {
        // SAFETY: register arithmetic.
        unsafe {
            let m8 = _mm256_set1_ps(-8.0);
            let [a0, a1, a2, a3] = a;
            reduce4_512(
                _mm512_add_ps(a0.0, _mm512_zextps256_ps512(_mm256_mul_ps(a0.1, m8))),
                _mm512_add_ps(a1.0, _mm512_zextps256_ps512(_mm256_mul_ps(a1.1, m8))),
                _mm512_add_ps(a2.0, _mm512_zextps256_ps512(_mm256_mul_ps(a2.1, m8))),
                _mm512_add_ps(a3.0, _mm512_zextps256_ps512(_mm256_mul_ps(a3.1, m8))),
            )
        }
    }

    /// A run of a tile's group (four rows' four blocks, 256 bytes in the order of
    /// [`super::tile_pos`]) unpacked: each 64-byte step's low and high nibbles.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn tile_run(run: &[u8; 8 * BLOCK]) -> [(__m512i, __m512i); 4] {
        let (Ok(s0), Ok(s1), Ok(s2), Ok(s3)) = (
            <&[u8; 2 * BLOCK]>::try_from(&run[..64]),
            <&[u8; 2 * BLOCK]>::try_from(&run[64..128]),
            <&[u8; 2 * BLOCK]>::try_from(&run[128..192]),
            <&[u8; 2 * BLOCK]>::try_from(&run[192..]),
        ) else {
            // Unreachable: the four slices are 64 bytes each.
            return [(_mm512_setzero_si512(), _mm512_setzero_si512()); 4];
        };
        // SAFETY: 64-byte loads from 64-byte arrays.
        unsafe { [nibbles(s0), nibbles(s1), nibbles(s2), nibbles(s3)] }
    }

    /// Step `o / 16` of `xq` (its four copies, one per 128-bit lane).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn broadcast16(xq: &[i8; 16 * BLOCK], o: usize) -> __m512i {
        match xq.get(4 * o..4 * o + 64).map(<&[i8; 64]>::try_from) {
            // SAFETY: a 64-byte load from a 64-byte array.
            Some(Ok(b)) => unsafe { _mm512_loadu_si512(b.as_ptr().cast()) },
            _ => _mm512_setzero_si512(),
        }
    }

    /// The integer products of an unpacked run ([`tile_run`]) with one activation row's run
    /// of four blocks in steps (`xq`: 512 bytes of `Activations::q_steps`): lane `4k + j`
    /// holds row `k`'s block `j` against the activation's block `j`. `CHAINS` (2 or 4)
    /// independent `vpdpbusd` chains: the decode kernel, with one activation row, needs four
    /// to keep the unit busy; the prompt kernel has four rows' chains and fewer registers.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn tile_products<const CHAINS: usize>(
        v: &[(__m512i, __m512i); 4],
        xq: &[i8; 16 * BLOCK],
    ) -> __m512i {
        // SAFETY: register arithmetic and the checked loads of `broadcast16`.
        unsafe {
            let z = _mm512_setzero_si512();
            let a = _mm512_dpbusd_epi32(z, v[0].0, broadcast16(xq, 0));
            let b = _mm512_dpbusd_epi32(z, v[0].1, broadcast16(xq, 64));
            if CHAINS == 2 {
                let a = _mm512_dpbusd_epi32(a, v[1].0, broadcast16(xq, 16));
                let b = _mm512_dpbusd_epi32(b, v[1].1, broadcast16(xq, 80));
                let a = _mm512_dpbusd_epi32(a, v[2].0, broadcast16(xq, 32));
                let b = _mm512_dpbusd_epi32(b, v[2].1, broadcast16(xq, 96));
                let a = _mm512_dpbusd_epi32(a, v[3].0, broadcast16(xq, 48));
                let b = _mm512_dpbusd_epi32(b, v[3].1, broadcast16(xq, 112));
                return _mm512_add_epi32(a, b);
            }
            let c = _mm512_dpbusd_epi32(z, v[1].0, broadcast16(xq, 16));
            let d = _mm512_dpbusd_epi32(z, v[1].1, broadcast16(xq, 80));
            let a = _mm512_dpbusd_epi32(a, v[2].0, broadcast16(xq, 32));
            let b = _mm512_dpbusd_epi32(b, v[2].1, broadcast16(xq, 96));
            let c = _mm512_dpbusd_epi32(c, v[3].0, broadcast16(xq, 48));
            let d = _mm512_dpbusd_epi32(d, v[3].1, broadcast16(xq, 112));
            _mm512_add_epi32(_mm512_add_epi32(a, b), _mm512_add_epi32(c, d))
        }
    }

    /// A run's 16 block scales (or offset factors), lane `4k + j`, from f16 bits.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn tile_scales(d: &[u16; 16]) -> __m512 {
        // SAFETY: a 32-byte load from a 32-byte array.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(d.as_ptr().cast())) }
    }

    /// Adds a run's products `p` (from [`tile_products`]) to one activation row's
    /// accumulator and offset sum: `p` times the weight scales `dw` times the activation
    /// blocks' scales (`xs4`, one per block, the same for every row), and the offset factors
    /// `ow` times the blocks' scaled sums (`t4`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn tile_add(
        (acc, off): (__m512, __m512),
        p: __m512i,
        (dw, ow): (__m512, __m512),
        (xs4, t4): (&[f32; 4], &[f32; 4]),
    ) -> (__m512, __m512) {
        // SAFETY: 16-byte loads from 4-float arrays; register arithmetic otherwise.
        unsafe {
            let xs = _mm512_broadcast_f32x4(_mm_loadu_ps(xs4.as_ptr()));
            let t = _mm512_broadcast_f32x4(_mm_loadu_ps(t4.as_ptr()));
            (
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw, xs), acc),
                _mm512_fmadd_ps(ow, t, off),
            )
        }
    }

    /// The four rows' sums from an accumulator and offset sum of [`tile_add`] (lanes
    /// `4k..4k + 4` are row `k`'s; the offset term is -8 per value).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn tile_finish((acc, off): (__m512, __m512)) -> [f32; 4] {
        // SAFETY: register arithmetic and a 64-byte store into a 16-float array.
        unsafe {
            let v = _mm512_fnmadd_ps(off, _mm512_set1_ps(8.0), acc);
            // Within each 128-bit lane: add neighbours, then pairs.
            let v = _mm512_add_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v));
            let v = _mm512_add_ps(v, _mm512_permute_ps::<0b01_00_11_10>(v));
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), v);
            [out[0], out[4], out[8], out[12]]
        }
    }

    /// The f16 scales (and offset factors, with `OFF`) of run `at` (16 values from `at`) of
    /// a tile as vectors; `None` past their ends.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn tile_factors<const OFF: bool>(
        (ws, es): (&[u16], &[u16]),
        at: usize,
    ) -> Option<(__m512, __m512)> {
        let d = ws.get(at..at + 16).map(<&[u16; 16]>::try_from)?.ok()?;
        // SAFETY: the features are this function's.
        let dw = unsafe { tile_scales(d) };
        if !OFF {
            return Some((dw, dw));
        }
        let e = es.get(at..at + 16).map(<&[u16; 16]>::try_from)?.ok()?;
        // SAFETY: as above.
        Some((dw, unsafe { tile_scales(e) }))
    }

    /// Row `k`'s leftover blocks (after the whole groups) of a tile against activation rows
    /// `x` (as many as given, up to four): the tail of the tile kernels, on [`dot4_q4`] or
    /// [`dot_q4`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_tail<const OFF: bool>(
        w: &[u8],
        (ws, es): (&[u16], &[u16]),
        k: usize,
        (x, xs, xsum): Rows4<'_>,
        one: bool,
    ) -> [f32; 4] {
        let nb = xs[0].len();
        let b = nb / 8 * 8;
        let left = nb - b;
        if left == 0 {
            return [0.0; 4];
        }
        // The leftover blocks come row after row after the tile's groups.
        let (vb, sb, vl) = (4 * b * BLOCK / 2, 4 * b, left * BLOCK / 2);
        let v = w.get(vb + k * vl..vb + (k + 1) * vl).unwrap_or(&[]);
        let sc = sb + k * left..sb + (k + 1) * left;
        let d = ws.get(sc.clone()).unwrap_or(&[]);
        let e = if OFF { es.get(sc).unwrap_or(&[]) } else { d };
        let x = x.map(|r| r.get(b * BLOCK..).unwrap_or(&[]));
        let xs = xs.map(|r| r.get(b..).unwrap_or(&[]));
        let xsum = xsum.map(|r| r.get(b..).unwrap_or(&[]));
        // SAFETY: the caller checked the features (AVX2, FMA, F16C among them).
        unsafe {
            if one {
                [
                    dot_q4::<OFF>(v, (d, e), x[0], xs[0], xsum[0]),
                    0.0,
                    0.0,
                    0.0,
                ]
            } else {
                dot4_q4::<OFF>(v, (d, e), x, xs, xsum)
            }
        }
    }

    /// A tile of four Q4_0 weight rows (`w`: its values, `ws`: its scales, in the order of
    /// [`super::tile_in_place`]) against one activation row (`xst` in the order of
    /// `Activations::q_steps`, `x` plain for the leftover blocks): the decode kernel for Q4_0
    /// with AVX-512. The tile is read as one stream; each 64-byte load of weights serves
    /// four rows' blocks, and one conversion and one multiply-add per 16 blocks apply the
    /// scales. The two runs of a group go to two accumulators.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    pub(super) unsafe fn rows4_q4_512<const OFF: bool>(
        w: &[u8],
        (ws, es): (&[u16], &[u16]),
        xst: &[i8],
        x: &[i8],
        xs: &[f32],
        xsum: &[f32],
    ) -> [f32; 4] {
        // SAFETY: as for `dot_q4_512`.
        unsafe {
            let nb = xs.len();
            let groups = nb / 8;
            if w.len() < 4 * nb * BLOCK / 2 || ws.len() < 4 * nb || xsum.len() < nb {
                return [0.0; 4];
            }
            let zero = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut a = [zero, zero];
            for g in 0..groups {
                let Ok(group) =
                    <&[u8; 16 * BLOCK]>::try_from(&w[16 * BLOCK * g..16 * BLOCK * (g + 1)])
                else {
                    continue;
                };
                prefetch_ahead(
                    group.as_ptr(),
                    8,
                    ws.as_ptr().wrapping_add(32 * g),
                    PREFETCH_AHEAD / 16,
                );
                for (h, a) in a.iter_mut().enumerate() {
                    let (r, at) = (8 * g + 4 * h, 32 * g + 16 * h);
                    let (Ok(run), Some(Ok(xq)), Some(Ok(xs4)), Some(Ok(t4)), Some(f)) = (
                        <&[u8; 8 * BLOCK]>::try_from(&group[256 * h..256 * (h + 1)]),
                        xst.get(4 * BLOCK * r..4 * BLOCK * (r + 4))
                            .map(<&[i8; 16 * BLOCK]>::try_from),
                        xs.get(r..r + 4).map(<&[f32; 4]>::try_from),
                        xsum.get(r..r + 4).map(<&[f32; 4]>::try_from),
                        tile_factors::<OFF>((ws, es), at),
                    ) else {
                        continue;
                    };
                    let p = tile_products::<4>(&tile_run(run), xq);
                    *a = tile_add(*a, p, f, (xs4, t4));
                }
            }
            let [a0, a1] = a;
            let sums = tile_finish((_mm512_add_ps(a0.0, a1.0), _mm512_add_ps(a0.1, a1.1)));
            if nb.is_multiple_of(8) {
                return sums;
            }
            let rows = ([x; 4], [xs; 4], [xsum; 4]);
            std::array::from_fn(|k| sums[k] + tile_tail::<OFF>(w, (ws, es), k, rows, true)[0])
        }
    }

    /// Accumulators of a tile against four activation rows: per activation row, the sum
    /// and the offset sum of [`tile_add`].
    pub(super) type Acc4 = [(__m512, __m512); 4];

    /// Four activation rows: their values (in the layout the kernel reads), block scales and
    /// scaled block sums.
    pub(super) type Rows4<'a> = ([&'a [i8]; 4], [&'a [f32]; 4], [&'a [f32]; 4]);

    /// Adds the runs of blocks `blocks` (whole groups, a multiple of four apart) of a tile
    /// of four Q4_0 weight rows (`w`, `ws`, `es` as for [`rows4_q4_512`]) against four
    /// activation rows (`xst` in the order of `Activations::q_steps`) to `acc`. Each run is
    /// loaded and unpacked once for the four activation rows.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn tile4_runs<const OFF: bool>(
        acc: &mut Acc4,
        w: &[u8],
        (ws, es): (&[u16], &[u16]),
        (xst, xs, xsum): Rows4<'_>,
        blocks: std::ops::Range<usize>,
    ) {
        // SAFETY: as for `dot_q4_512`.
        unsafe {
            // Four named accumulators, not an array: indexed ones were kept in memory.
            let [mut a0, mut a1, mut a2, mut a3] = *acc;
            for r in blocks.step_by(4) {
                let (Some(Ok(run)), Some(f)) = (
                    w.get(64 * r..64 * r + 256)
                        .map(<&[u8; 8 * BLOCK]>::try_from),
                    tile_factors::<OFF>((ws, es), 4 * r),
                ) else {
                    continue;
                };
                // Written out: closures are not inlined into a function with other target
                // features.
                let (span, sc) = (4 * BLOCK * r..4 * BLOCK * (r + 4), r..r + 4);
                let (
                    Some(Ok(x0)),
                    Some(Ok(x1)),
                    Some(Ok(x2)),
                    Some(Ok(x3)),
                    Some(Ok(s0)),
                    Some(Ok(s1)),
                    Some(Ok(s2)),
                    Some(Ok(s3)),
                    Some(Ok(t0)),
                    Some(Ok(t1)),
                    Some(Ok(t2)),
                    Some(Ok(t3)),
                ) = (
                    xst[0].get(span.clone()).map(<&[i8; 16 * BLOCK]>::try_from),
                    xst[1].get(span.clone()).map(<&[i8; 16 * BLOCK]>::try_from),
                    xst[2].get(span.clone()).map(<&[i8; 16 * BLOCK]>::try_from),
                    xst[3].get(span).map(<&[i8; 16 * BLOCK]>::try_from),
                    xs[0].get(sc.clone()).map(<&[f32; 4]>::try_from),
                    xs[1].get(sc.clone()).map(<&[f32; 4]>::try_from),
                    xs[2].get(sc.clone()).map(<&[f32; 4]>::try_from),
                    xs[3].get(sc.clone()).map(<&[f32; 4]>::try_from),
                    xsum[0].get(sc.clone()).map(<&[f32; 4]>::try_from),
                    xsum[1].get(sc.clone()).map(<&[f32; 4]>::try_from),
                    xsum[2].get(sc.clone()).map(<&[f32; 4]>::try_from),
                    xsum[3].get(sc).map(<&[f32; 4]>::try_from),
                )
                else {
                    continue;
                };
                let v = tile_run(run);
                a0 = tile_add(a0, tile_products::<2>(&v, x0), f, (s0, t0));
                a1 = tile_add(a1, tile_products::<2>(&v, x1), f, (s1, t1));
                a2 = tile_add(a2, tile_products::<2>(&v, x2), f, (s2, t2));
                a3 = tile_add(a3, tile_products::<2>(&v, x3), f, (s3, t3));
            }
            *acc = [a0, a1, a2, a3];
        }
    }

    /// [`tile4_runs`] for two tiles at once (eight weight rows against the same four
    /// activation rows): each activation step is loaded once for both tiles, halving the
    /// loads per integer product (with one tile, 32 of a run's 36 loads were activation
    /// steps). The slices are checked once for the whole range, not per run; a range they
    /// do not cover goes to [`tile4_runs`] tile by tile. The offset term goes into each
    /// accumulator's sum (its offset sum is left as it is), so that the two tiles' eight
    /// accumulators stay in registers.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn tile4x2_runs<const OFF: bool>(
        acc: [&mut Acc4; 2],
        w: [&[u8]; 2],
        f: [(&[u16], &[u16]); 2],
        rows: Rows4<'_>,
        blocks: std::ops::Range<usize>,
    ) {
        let (xst, xs, xsum) = rows;
        let end = blocks.end;
        // Run `r` (a block index, `r + 4 <= end`) reads weight bytes `64r..64r + 256`,
        // scales `4r..4r + 16`, activation bytes `128r..128r + 512` and activation scales
        // and sums `r..r + 4` of each activation row.
        let covered = blocks.start <= end
            && (end - blocks.start).is_multiple_of(4)
            && w.iter().all(|w| w.len() >= 64 * end)
            && f.iter()
                .all(|(ws, es)| ws.len() >= 4 * end && (!OFF || es.len() >= 4 * end))
            && xst.iter().all(|x| x.len() >= 128 * end)
            && xs.iter().chain(&xsum).all(|x| x.len() >= end);
        let [acc0, acc1] = acc;
        if !covered {
            // SAFETY: the features are this function's.
            unsafe {
                tile4_runs::<OFF>(acc0, w[0], f[0], rows, blocks.clone());
                tile4_runs::<OFF>(acc1, w[1], f[1], rows, blocks);
            }
            return;
        }
        // SAFETY: every load below is inside the lengths checked above (see `covered`);
        // register arithmetic otherwise.
        unsafe {
            let low = _mm512_set1_epi8(0x0F);
            let high = _mm512_set1_epi64(0x1020_4080_0000_0000);
            let eight = _mm512_set1_ps(8.0);
            let z = _mm512_setzero_si512();
            // The running sums, the offset sums kept aside.
            let (mut s0, mut s1) = (acc0.map(|a| a.0), acc1.map(|a| a.0));
            let ld = |p: *const u8, at: usize| _mm512_loadu_si512(p.add(at).cast());
            let (w0, w1) = (w[0].as_ptr(), w[1].as_ptr());
            let x = xst.map(|x| x.as_ptr().cast::<u8>());
            for r in blocks.step_by(4) {
                let mut p0 = [z; 4];
                let mut p1 = [z; 4];
                for s in 0..4 {
                    let (r0, r1) = (ld(w0, 64 * r + 64 * s), ld(w1, 64 * r + 64 * s));
                    let (l0, h0) = (
                        _mm512_and_si512(r0, low),
                        _mm512_gf2p8affine_epi64_epi8::<0>(r0, high),
                    );
                    let (l1, h1) = (
                        _mm512_and_si512(r1, low),
                        _mm512_gf2p8affine_epi64_epi8::<0>(r1, high),
                    );
                    for k in 0..4 {
                        let xl = ld(x[k], 128 * r + 64 * s);
                        let xh = ld(x[k], 128 * r + 256 + 64 * s);
                        p0[k] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(p0[k], l0, xl), h0, xh);
                        p1[k] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(p1[k], l1, xl), h1, xh);
                    }
                }
                let scales = |(ws, es): (&[u16], &[u16])| {
                    let d = _mm512_cvtph_ps(_mm256_loadu_si256(ws.as_ptr().add(4 * r).cast()));
                    let e = if OFF {
                        _mm512_cvtph_ps(_mm256_loadu_si256(es.as_ptr().add(4 * r).cast()))
                    } else {
                        d
                    };
                    (d, e)
                };
                let ((d0, e0), (d1, e1)) = (scales(f[0]), scales(f[1]));
                for k in 0..4 {
                    let xs4 = _mm512_broadcast_f32x4(_mm_loadu_ps(xs[k].as_ptr().add(r)));
                    let t8 = _mm512_mul_ps(
                        _mm512_broadcast_f32x4(_mm_loadu_ps(xsum[k].as_ptr().add(r))),
                        eight,
                    );
                    let a =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0[k]), _mm512_mul_ps(d0, xs4), s0[k]);
                    s0[k] = _mm512_fnmadd_ps(e0, t8, a);
                    let a =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1[k]), _mm512_mul_ps(d1, xs4), s1[k]);
                    s1[k] = _mm512_fnmadd_ps(e1, t8, a);
                }
            }
            for k in 0..4 {
                acc0[k].0 = s0[k];
                acc1[k].0 = s1[k];
            }
        }
    }

    /// The tile's `[row][activation row]` sums from its accumulators, with each row's
    /// leftover blocks (after the whole groups; activation rows `x` plain) added.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn tile4_finish<const OFF: bool>(
        acc: &Acc4,
        w: &[u8],
        (ws, es): (&[u16], &[u16]),
        (x, xs, xsum): Rows4<'_>,
    ) -> [[f32; 4]; 4] {
        // SAFETY: as for `dot_q4_512`.
        unsafe {
            let [y0, y1, y2, y3] = [
                tile_finish(acc[0]),
                tile_finish(acc[1]),
                tile_finish(acc[2]),
                tile_finish(acc[3]),
            ];
            let mut y = [
                [y0[0], y1[0], y2[0], y3[0]],
                [y0[1], y1[1], y2[1], y3[1]],
                [y0[2], y1[2], y2[2], y3[2]],
                [y0[3], y1[3], y2[3], y3[3]],
            ];
            if !xs[0].len().is_multiple_of(8) {
                for (k, yk) in y.iter_mut().enumerate() {
                    let tail = tile_tail::<OFF>(w, (ws, es), k, (x, xs, xsum), false);
                    for (v, t) in yk.iter_mut().zip(tail) {
                        *v += t;
                    }
                }
            }
            y
        }
    }

    /// A tile of four Q4_0 weight rows (as for [`rows4_q4_512`]) against four activation
    /// rows: the prompt kernel for Q4_0 with AVX-512, for one tile (the tests' entry; the
    /// model's goes through [`tiles4_q4_512`]). Returns `[row][activation row]`.
    #[cfg(test)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    pub(super) unsafe fn tile4_q4_512<const OFF: bool>(
        w: &[u8],
        (ws, es): (&[u16], &[u16]),
        xst: [&[i8]; 4],
        x: [&[i8]; 4],
        xs: [&[f32]; 4],
        xsum: [&[f32]; 4],
    ) -> [[f32; 4]; 4] {
        let nb = xs[0].len();
        if w.len() < 4 * nb * BLOCK / 2 || ws.len() < 4 * nb {
            return [[0.0; 4]; 4];
        }
        // SAFETY: the features are this function's.
        unsafe {
            let zero = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut acc = [zero; 4];
            tile4_runs::<OFF>(&mut acc, w, (ws, es), (xst, xs, xsum), 0..nb / 8 * 8);
            tile4_finish::<OFF>(&acc, w, (ws, es), (x, xs, xsum))
        }
    }

    /// [`tile_run`]'s products for AVX2: the run's two halves (rows 0-1 and rows 2-3, 32
    /// bytes of each 64-byte step) against the activation run `xq` (the first 32 bytes of
    /// each step's copies). Lane `4k + j` of each half is its row `k`'s block `j`. The 16-bit
    /// products of all eight steps are added before widening: each is at most 2 * 15 * 127 in
    /// size, eight of them 30480, inside an `i16`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_products_256(run: &[u8; 8 * BLOCK], xq: &[i8; 16 * BLOCK]) -> [__m256i; 2] {
        // SAFETY: 32-byte loads from checked 32-byte arrays; register arithmetic otherwise.
        unsafe {
            let low = _mm256_set1_epi8(0x0F);
            let (mut p0, mut p1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for s in 0..4 {
                let (Some(Ok(r0)), Some(Ok(r1)), Some(Ok(xl)), Some(Ok(xh))) = (
                    run.get(64 * s..64 * s + 32).map(<&[u8; 32]>::try_from),
                    run.get(64 * s + 32..64 * s + 64).map(<&[u8; 32]>::try_from),
                    xq.get(64 * s..64 * s + 32).map(<&[i8; 32]>::try_from),
                    xq.get(256 + 64 * s..256 + 64 * s + 32)
                        .map(<&[i8; 32]>::try_from),
                ) else {
                    continue;
                };
                let (xl, xh) = (load32(xl), load32(xh));
                let r0 = _mm256_loadu_si256(r0.as_ptr().cast());
                let r1 = _mm256_loadu_si256(r1.as_ptr().cast());
                let (l0, h0) = (
                    _mm256_and_si256(r0, low),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(r0), low),
                );
                let (l1, h1) = (
                    _mm256_and_si256(r1, low),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(r1), low),
                );
                p0 = _mm256_add_epi16(p0, _mm256_maddubs_epi16(l0, xl));
                p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(l1, xl));
                p0 = _mm256_add_epi16(p0, _mm256_maddubs_epi16(h0, xh));
                p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(h1, xh));
            }
            let ones = _mm256_set1_epi16(1);
            [_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones)]
        }
    }

    /// A run's 16 f16 scales as two vectors: rows 0-1's and rows 2-3's.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn halves_256(d: &[u16; 16]) -> (__m256, __m256) {
        // SAFETY: two 16-byte loads from a 32-byte array.
        unsafe {
            (
                _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().add(8).cast())),
            )
        }
    }

    /// [`rows4_q4_512`] for CPUs with AVX2 but not AVX-512: the same tiles, each run read as
    /// two halves of two rows.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows4_q4_256<const OFF: bool>(
        w: &[u8],
        (ws, es): (&[u16], &[u16]),
        xst: &[i8],
        x: &[i8],
        xs: &[f32],
        xsum: &[f32],
    ) -> [f32; 4] {
        // SAFETY: as for `dot_q4`.
        unsafe {
            let nb = xs.len();
            let groups = nb / 8;
            if w.len() < 4 * nb * BLOCK / 2 || ws.len() < 4 * nb || xsum.len() < nb {
                return [0.0; 4];
            }
            let z = _mm256_setzero_ps();
            // Per half: the sum and the offset sum.
            let (mut a0, mut o0, mut a1, mut o1) = (z, z, z, z);
            for g in 0..groups {
                let Ok(group) =
                    <&[u8; 16 * BLOCK]>::try_from(&w[16 * BLOCK * g..16 * BLOCK * (g + 1)])
                else {
                    continue;
                };
                prefetch_ahead(
                    group.as_ptr(),
                    8,
                    ws.as_ptr().wrapping_add(32 * g),
                    PREFETCH_AHEAD / 16,
                );
                for h in 0..2 {
                    let (r, at) = (8 * g + 4 * h, 32 * g + 16 * h);
                    let (Ok(run), Some(Ok(xq)), Some(Ok(xs4)), Some(Ok(t4)), Some(Ok(d))) = (
                        <&[u8; 8 * BLOCK]>::try_from(&group[256 * h..256 * (h + 1)]),
                        xst.get(4 * BLOCK * r..4 * BLOCK * (r + 4))
                            .map(<&[i8; 16 * BLOCK]>::try_from),
                        xs.get(r..r + 4).map(<&[f32; 4]>::try_from),
                        xsum.get(r..r + 4).map(<&[f32; 4]>::try_from),
                        ws.get(at..at + 16).map(<&[u16; 16]>::try_from),
                    ) else {
                        continue;
                    };
                    let e = match OFF {
                        true => es.get(at..at + 16).map(<&[u16; 16]>::try_from),
                        false => Some(Ok(d)),
                    };
                    let Some(Ok(e)) = e else {
                        continue;
                    };
                    let [i0, i1] = tile_products_256(run, xq);
                    let (d0, d1) = halves_256(d);
                    let (e0, e1) = if OFF { halves_256(e) } else { (d0, d1) };
                    let xb = _mm256_broadcast_ps(&_mm_loadu_ps(xs4.as_ptr()));
                    let tb = _mm256_broadcast_ps(&_mm_loadu_ps(t4.as_ptr()));
                    a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(d0, xb), a0);
                    a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(d1, xb), a1);
                    o0 = _mm256_fmadd_ps(e0, tb, o0);
                    o1 = _mm256_fmadd_ps(e1, tb, o1);
                }
            }
            let m8 = _mm256_set1_ps(8.0);
            let (v0, v1) = (_mm256_fnmadd_ps(o0, m8, a0), _mm256_fnmadd_ps(o1, m8, a1));
            // Lanes 0 and 4 of the result: rows 0 and 1 of half 0; 1 and 5: rows 2 and 3.
            let u = _mm256_hadd_ps(v0, v1);
            let u = _mm256_hadd_ps(u, u);
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), u);
            let sums = [lanes[0], lanes[4], lanes[1], lanes[5]];
            if nb.is_multiple_of(8) {
                return sums;
            }
            let rows = ([x; 4], [xs; 4], [xsum; 4]);
            std::array::from_fn(|k| sums[k] + tile_tail::<OFF>(w, (ws, es), k, rows, true)[0])
        }
    }

    /// Defines `$name`: `$tile` for every tile of `w` (values of whole tiles, from a tile's
    /// start; `ws`, `es`: their scales and offset factors) against activation row `j`, row
    /// `k` of tile `t` into `out[(4t + k) * m + j]`, for as many tiles as `out` has room for
    /// (rows of `m`): one call per product share instead of one per tile. Compiled with
    /// `$features`, the tile kernel's own, so that the kernel is inlined into the loop.
    macro_rules! tiles_fn {
        ($(#[$doc:meta])* $name:ident, $tile:ident, $features:literal) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const OFF: bool>(
                w: &[u8],
                (ws, es): (&[u16], &[u16]),
                (xst, x, xs, xsum): (&[i8], &[i8], &[f32], &[f32]),
                (out, m, j): (&mut [f32], usize, usize),
            ) {
                let nb = xs.len();
                let (tw, ts) = (4 * nb * BLOCK / 2, 4 * nb);
                for (t, rows) in out.chunks_exact_mut(4 * m).enumerate() {
                    let (Some(w4), Some(ws4)) =
                        (w.get(t * tw..(t + 1) * tw), ws.get(t * ts..(t + 1) * ts))
                    else {
                        return;
                    };
                    let es4 = if OFF {
                        es.get(t * ts..(t + 1) * ts).unwrap_or(&[])
                    } else {
                        ws4
                    };
                    // SAFETY: the features are this function's.
                    let y = unsafe { $tile::<OFF>(w4, (ws4, es4), xst, x, xs, xsum) };
                    if m == 1 {
                        rows.copy_from_slice(&y);
                    } else {
                        for (k, v) in y.into_iter().enumerate() {
                            if let Some(o) = rows.get_mut(k * m + j) {
                                *o = v;
                            }
                        }
                    }
                }
            }
        };
    }

    tiles_fn!(
        /// The decode loop with AVX-512: [`rows4_q4_512`] for every tile.
        tiles_q4_512,
        rows4_q4_512,
        "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni"
    );
    tiles_fn!(
        /// The decode loop with AVX2 alone: [`rows4_q4_256`] for every tile.
        tiles_q4_256,
        rows4_q4_256,
        "avx2,fma,f16c"
    );

    /// The prompt kernel for Q4_0 with AVX-512: every tile of `w` (as for [`tiles_q4_512`])
    /// against activation rows `4g..4g + 4` (`steps` in the order of `Activations::q_steps`
    /// with their scales and sums, `x` plain for the leftover blocks): row `k` of tile `t`
    /// goes to `out[(4t + k) * m + 4g..][..4]`. Each run of a tile is loaded and unpacked
    /// once for the four activation rows, and the tiles go in pairs ([`tile4x2_runs`]), so
    /// that each activation load serves both (1.43x as fast as one tile at a time on
    /// 1280-wide rows, in cache, one thread). Four tiles at a time take the activations
    /// `CHUNK` blocks at a time, so that the chunk (four rows in steps, four copies each)
    /// stays in L1 for the four tiles: on rows of 5120 values that ran 1.16x as fast as whole
    /// rows (in cache, one thread).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    pub(super) unsafe fn tiles4_q4_512<const OFF: bool>(
        w: &[u8],
        (ws, es): (&[u16], &[u16]),
        (steps, x): (Rows4<'_>, [&[i8]; 4]),
        (out, m, g): (&mut [f32], usize, usize),
    ) {
        /// Blocks of the activations per pass over four tiles: 40 blocks (a 1280-wide row)
        /// of four rows are 20 KB in steps.
        const CHUNK: usize = 40;
        let (_, xs, xsum) = steps;
        let nb = xs[0].len();
        let (tw, ts, whole) = (4 * nb * BLOCK / 2, 4 * nb, nb / 8 * 8);
        let zero = (_mm512_setzero_ps(), _mm512_setzero_ps());
        // Tile `t`'s values, scales and offset factors.
        let tile = |t: usize| {
            let w4 = w.get(t * tw..(t + 1) * tw)?;
            let ws4 = ws.get(t * ts..(t + 1) * ts)?;
            let es4 = if OFF {
                es.get(t * ts..(t + 1) * ts)?
            } else {
                ws4
            };
            Some((w4, (ws4, es4)))
        };
        for (b, rows) in out.chunks_mut(4 * 4 * m).enumerate() {
            let n = rows.len() / (4 * m);
            let mut acc = [[zero; 4]; 4];
            for c in (0..whole).step_by(CHUNK) {
                let blocks = c..(c + CHUNK).min(whole);
                let (pairs, single) = acc.split_at_mut(n / 2 * 2);
                for (i, [a0, a1]) in pairs.as_chunks_mut::<2>().0.iter_mut().enumerate() {
                    let (Some((w0, f0)), Some((w1, f1))) =
                        (tile(4 * b + 2 * i), tile(4 * b + 2 * i + 1))
                    else {
                        return;
                    };
                    // SAFETY: the features are this function's.
                    unsafe {
                        tile4x2_runs::<OFF>([a0, a1], [w0, w1], [f0, f1], steps, blocks.clone())
                    };
                }
                if let (true, Some(acc)) = (n % 2 == 1, single.first_mut()) {
                    let Some((w4, f)) = tile(4 * b + n - 1) else {
                        return;
                    };
                    // SAFETY: the features are this function's.
                    unsafe { tile4_runs::<OFF>(acc, w4, f, steps, blocks) };
                }
            }
            for ((i, tile_out), acc) in rows.chunks_exact_mut(4 * m).enumerate().zip(&acc) {
                let Some((w4, f)) = tile(4 * b + i) else {
                    return;
                };
                // SAFETY: as above.
                let y = unsafe { tile4_finish::<OFF>(acc, w4, f, (x, xs, xsum)) };
                for (k, yk) in y.iter().enumerate() {
                    if let Some(o) = tile_out.get_mut(k * m + 4 * g..k * m + 4 * g + 4) {
                        o.copy_from_slice(yk);
                    }
                }
            }
        }
    }

    /// One group of eight Q8_0 blocks (`wg`, scales `d8`) of one weight row against the
    /// activation group `xg` (scales `x8`, scaled block sums `t8`): returns the two
    /// accumulators and the offset sum with this group added. The weights are made unsigned
    /// by flipping their sign bit, as in [`q8_two_512`]; the caller subtracts
    /// `128 * offset`. The 64-byte runs alternate between the accumulators: with one, each
    /// run waited for the previous run's multiply-add (4 cycles), which held the kernel to
    /// about 36 GB/s per thread in cache.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    unsafe fn q8_group_512(
        (acc, off): ([__m512; 2], __m256),
        wg: &[i8; 8 * BLOCK],
        d8: &[u16; 8],
        xg: &[i8; 8 * BLOCK],
        (x8, t8): (__m256, __m256),
    ) -> ([__m512; 2], __m256) {
        // SAFETY: 64-byte loads from checked 64-byte arrays; register arithmetic otherwise.
        unsafe {
            let (s8, off) = group_scales(d8, (x8, t8), off);
            let flip = _mm512_set1_epi8(-128);
            let [mut even, mut odd] = acc;
            for j in 0..4 {
                let run = 2 * BLOCK * j..2 * BLOCK * (j + 1);
                let (Ok(wp), Ok(xr)) = (
                    <&[i8; 2 * BLOCK]>::try_from(&wg[run.clone()]),
                    <&[i8; 2 * BLOCK]>::try_from(&xg[run]),
                ) else {
                    continue;
                };
                let wu = _mm512_xor_si512(_mm512_loadu_si512(wp.as_ptr().cast()), flip);
                let b = 2 * j as i32;
                let idx = halves(b, b + 1);
                if j % 2 == 0 {
                    even = q8_two_512(even, wu, xr, idx, s8);
                } else {
                    odd = q8_two_512(odd, wu, xr, idx, s8);
                }
            }
            ([even, odd], off)
        }
    }

    /// [`dot_q8`] with 512-bit vectors and `vpdpbusd` for whole groups of eight blocks (the
    /// rest of the row goes to [`dot_q8`]); `xsum` holds the activation block sums for the
    /// `+ 128` offset of the weights.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    pub(super) unsafe fn dot_q8_512(
        w: &[i8],
        ws: &[u16],
        x: &[i8],
        xs: &[f32],
        xsum: &[f32],
    ) -> f32 {
        // SAFETY: as for `dot_q4_512`.
        unsafe {
            let nb = ws.len();
            let groups = nb / 8;
            let mut acc = ([_mm512_setzero_ps(); 2], _mm256_setzero_ps());
            let steps = w
                .chunks_exact(8 * BLOCK)
                .zip(x.chunks_exact(8 * BLOCK))
                .zip(
                    ws.chunks_exact(8)
                        .zip(xs.chunks_exact(8).zip(xsum.chunks_exact(8))),
                )
                .take(groups);
            for ((wg, xg), (d8, (x8, t8))) in steps {
                let (Ok(wg), Ok(xg), Ok(d8), Ok(x8), Ok(t8)) = (
                    <&[i8; 8 * BLOCK]>::try_from(wg),
                    <&[i8; 8 * BLOCK]>::try_from(xg),
                    <&[u16; 8]>::try_from(d8),
                    <&[f32; 8]>::try_from(x8),
                    <&[f32; 8]>::try_from(t8),
                ) else {
                    continue;
                };
                // 256 bytes of values (four lines) per group; a scale per 32 bytes of them.
                prefetch_ahead(wg.as_ptr().cast(), 4, d8.as_ptr(), PREFETCH_AHEAD / 32);
                let xv = (_mm256_loadu_ps(x8.as_ptr()), _mm256_loadu_ps(t8.as_ptr()));
                acc = q8_group_512(acc, wg, d8, xg, xv);
            }
            let head =
                _mm512_reduce_add_ps(_mm512_add_ps(acc.0[0], acc.0[1])) - 128.0 * hsum(acc.1);
            let b = 8 * groups;
            let tail = if b < nb {
                dot_q8(&w[b * BLOCK..], &ws[b..], &x[b * BLOCK..], &xs[b..])
            } else {
                0.0
            };
            head + tail
        }
    }

    /// The row and super-block loops of the Q6_K kernels, on the operands of a
    /// [`Q6kViews`]: for each whole weight row, `N` accumulators start at `$zero`; for each
    /// super-block, after the prefetches, `$add` adds its products into `acc` (with `qb`,
    /// the super-block index `b`, its scale `d` as f32, its sub-block scales `sc16` and the
    /// rows' `offsets`); `$sum` reduces each
    /// accumulator into `out[r * m + j + k]`. Expanded inside each kernel, so that the
    /// body is compiled with the kernel's target features.
    macro_rules! q6k_rows {
        ($views:expr, ($out:expr, $m:expr, $j:expr), $zero:expr, $sum:path,
         |$acc:ident, $qb:ident, $b:ident, $d:ident, $sc16:ident, $offsets:ident| $add:block) => {{
            let v = &$views;
            for r in 0..v.rows {
                let mut $acc = [$zero; N];
                for $b in 0..v.supers {
                    let at = r * v.supers + $b;
                    let (Some($qb), Some(scb), Some(d)) =
                        (v.qs.get(at), v.scs.get(at), v.ds.get(at))
                    else {
                        continue;
                    };
                    // Three lines of values per super-block, and the scales' lines, ahead:
                    // the sub-block scales as far ahead as the values, the super-block
                    // scales (a line per 32 super-blocks) two lines ahead. Without the
                    // latter, a third of the kernel's time in the model went to waiting
                    // for them.
                    prefetch_ahead($qb.as_ptr(), 3, scb.as_ptr(), PREFETCH_AHEAD / 12);
                    _mm_prefetch::<_MM_HINT_T0>((d as *const u16).wrapping_add(64).cast());
                    // `vcvtph2ps`: Q6_K's super-block scales are often f16 subnormals (a
                    // row of weights of 0.1 at most has `d` near 2^-16), which the bit
                    // trick of `f16_to_f32` turns into an f32 subnormal product, and a
                    // multiply with a subnormal input took 42% of the kernel's time.
                    let $d = f16_scale(*d);
                    // The sixteen sub-block scales as i16, and per activation row the
                    // `32 * sum(sc * x)` that the `- 32` of the values takes off, in eight
                    // 32-bit lanes.
                    let $sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scb.as_ptr().cast()));
                    let $offsets: [__m256i; N] = std::array::from_fn(|k| {
                        let sums = _mm256_loadu_si256(v.xsum[k][$b].as_ptr().cast());
                        _mm256_slli_epi32::<5>(_mm256_madd_epi16($sc16, sums))
                    });
                    $add
                }
                for (k, a) in $acc.iter().enumerate() {
                    if let Some(o) = $out.get_mut(r * $m + $j + k) {
                        *o = $sum(*a);
                    }
                }
            }
        }};
    }

    /// A Q6_K kernel's operands in whole super-blocks: the weights' values, sub-block
    /// scales and super-block scales, each of the `N` activation rows' values, scales and
    /// sums of 16, the super-blocks per row and the whole weight rows. `None` when the
    /// activation rows are empty, fewer than `N` fit in `m`, or one is short.
    struct Q6kViews<'a, const N: usize> {
        qs: &'a [[u8; Q6K_BYTES]],
        scs: &'a [[i8; 16]],
        ds: &'a [u16],
        xq: [&'a [[i8; SUPER]]; N],
        xs: [&'a [f32]; N],
        xsum: [&'a [[i16; 16]]; N],
        supers: usize,
        rows: usize,
    }

    impl<'a, const N: usize> Q6kViews<'a, N> {
        fn of(
            (q, sc, ds): (&'a [u8], &'a [i8], &'a [u16]),
            x: [(&'a [i8], &'a [f32], &'a [i16]); N],
            m: usize,
        ) -> Option<Self> {
            let supers = x.first().map_or(0, |x| x.1.len());
            let xq: [&[[i8; SUPER]]; N] = std::array::from_fn(|k| x[k].0.as_chunks::<SUPER>().0);
            let xs: [&[f32]; N] = std::array::from_fn(|k| x[k].1);
            let xsum: [&[[i16; 16]]; N] = std::array::from_fn(|k| x[k].2.as_chunks::<16>().0);
            let short = (0..N)
                .any(|k| xq[k].len() < supers || xs[k].len() < supers || xsum[k].len() < supers);
            if supers == 0 || m < N || short {
                return None;
            }
            let (qs, scs) = (q.as_chunks::<Q6K_BYTES>().0, sc.as_chunks::<16>().0);
            let rows = qs.len().min(scs.len()).min(ds.len()) / supers;
            Some(Self {
                qs,
                scs,
                ds,
                xq,
                xs,
                xsum,
                supers,
                rows,
            })
        }
    }

    /// [`rows_q6k_512`] with AVX2 alone: per half super-block, two 32-byte loads of low
    /// nibbles and one of high bit pairs give its four runs of 32 values with 16-bit shifts
    /// and masks; `vpmaddubsw` takes each run against the activations into pairs and
    /// `vpmaddwd` multiplies the pairs by their sub-block's scale (the run's two scales, one
    /// per 128-bit lane, picked by a `vpermd` and a `vpshufb`) into 32-bit lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows_q6k_256<const N: usize>(
        (q, sc, ds): (&[u8], &[i8], &[u16]),
        x: [(&[i8], &[f32], &[i16]); N],
        (out, m, j): (&mut [f32], usize, usize),
    ) {
        let Some(views) = Q6kViews::of((q, sc, ds), x, m) else {
            return;
        };
        let (xq, xs) = (views.xq, views.xs);
        // SAFETY: loads of exactly 32 or 16 bytes from fixed-size arrays, prefetch hints,
        // register arithmetic.
        unsafe {
            let low4 = _mm256_set1_epi8(0x0F);
            let top2 = _mm256_set1_epi8(0x30);
            // After `vpermd` puts scales `2k, 2k + 1` (16-bit) in every dword: scale `2k`
            // in each 16-bit lane of the low 128 bits, `2k + 1` in the high ones.
            let pick = _mm256_setr_epi8(
                0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
                2, 3, 2, 3,
            );
            q6k_rows!(
                views,
                (out, m, j),
                _mm256_setzero_ps(),
                hsum,
                |acc, qb, b, d, sc16, offsets| {
                    let mut ints: [__m256i; N] = std::array::from_fn(|k| {
                        _mm256_sub_epi32(_mm256_setzero_si256(), offsets[k])
                    });
                    for h in 0..2 {
                        let at = |o: usize| _mm256_loadu_si256(qb[o..].as_ptr().cast());
                        let (ql0, ql1, qh) = (at(64 * h), at(64 * h + 32), at(128 + 32 * h));
                        let runs = [
                            (_mm256_and_si256(ql0, low4), _mm256_slli_epi16::<4>(qh)),
                            (_mm256_and_si256(ql1, low4), _mm256_slli_epi16::<2>(qh)),
                            (_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4), qh),
                            (
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4),
                                _mm256_srli_epi16::<2>(qh),
                            ),
                        ];
                        for (run, (low, high)) in runs.into_iter().enumerate() {
                            let v = _mm256_or_si256(low, _mm256_and_si256(high, top2));
                            // Sub-blocks `8h + 2 run` and `8h + 2 run + 1`: dword `4h + run`.
                            let both = _mm256_permutevar8x32_epi32(
                                sc16,
                                _mm256_set1_epi32((4 * h + run) as i32),
                            );
                            let scale = _mm256_shuffle_epi8(both, pick);
                            for k in 0..N {
                                let xk = _mm256_loadu_si256(
                                    xq[k][b][128 * h + 32 * run..].as_ptr().cast(),
                                );
                                let pairs = _mm256_maddubs_epi16(v, xk);
                                ints[k] =
                                    _mm256_add_epi32(ints[k], _mm256_madd_epi16(pairs, scale));
                            }
                        }
                    }
                    for k in 0..N {
                        let scale = _mm256_set1_ps(d * xs[k][b]);
                        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints[k]), scale, acc[k]);
                    }
                }
            );
        }
    }

    /// One Q6_K row against one activation row quantized per super-block: the arithmetic
    /// of `super::dot_q6k`. Per half super-block (128 values), one 64-byte load of low
    /// nibbles holds values 0-63 (low nibbles) and 64-127 (high nibbles), and one 32-byte
    /// load of high bit pairs, in both 256-bit halves, gives their top two bits by a
    /// bit-matrix multiply (`vgf2p8affineqb`, a matrix per 256-bit half); `vpmaddubsw`
    /// multiplies the 6-bit values (unsigned, `q` in 0..64) by the activations into pairs
    /// (at most 2 * 63 * 127, inside i16), and `vpdpwssd` multiplies each pair by its
    /// sub-block's scale (spread by `vpermw`) and adds it into 32-bit lanes. The `- 32`
    /// comes off once per super-block: 32 times the scales against the activations' sums
    /// of 16 (`vpmaddwd`). A super-block's integers stay below 2^25, and one conversion and
    /// one multiply-add scale them.
    ///
    /// Takes every row of `w` (whole rows of as many super-blocks as each activation row
    /// has scales) against `N` activation rows `x`, into `out[i * m + j + k]` for row `i`
    /// and activation row `k`, so that the constants are set up once per call, and a
    /// prompt unpacks each weight super-block once for `N` rows (`N = 4`), not once each.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni")]
    pub(super) unsafe fn rows_q6k_512<const N: usize>(
        (q, sc, ds): (&[u8], &[i8], &[u16]),
        x: [(&[i8], &[f32], &[i16]); N],
        (out, m, j): (&mut [f32], usize, usize),
    ) {
        /// `vpermw` indices: 16-bit lane `l` of the 64 values from `64 k` on (pairs
        /// `2l, 2l + 1`) belongs to sub-block `4 k + l / 8`.
        const SPREAD: [[i16; 32]; 4] = {
            let mut a = [[0i16; 32]; 4];
            let mut k = 0;
            while k < 4 {
                let mut l = 0;
                while l < 32 {
                    a[k][l] = (4 * k + l / 8) as i16;
                    l += 1;
                }
                k += 1;
            }
            a
        };
        let Some(views) = Q6kViews::of((q, sc, ds), x, m) else {
            return;
        };
        let (xq, xs) = (views.xq, views.xs);
        // SAFETY: loads of exactly 64, 32 or 16 bytes from fixed-size arrays, prefetch
        // hints, register arithmetic.
        unsafe {
            let low4 = _mm512_set1_epi8(0x0F);
            // Bit matrices for `vgf2p8affineqb` (row `7 - i` picks the source bits of result
            // bit `i`) that move a pair of bits of each high-bit byte to bits 4-5 and clear
            // the rest: bits 0-1 (values 0-31 of a half: first 256 bits) and 2-3 (values
            // 32-63), then 4-5 (64-95) and 6-7 (96-127).
            let pair = |s: i64| (1i64 << s) << 24 | (1i64 << (s + 1)) << 16;
            let to_lo =
                _mm512_inserti64x4::<1>(_mm512_set1_epi64(pair(0)), _mm256_set1_epi64x(pair(2)));
            let to_hi =
                _mm512_inserti64x4::<1>(_mm512_set1_epi64(pair(4)), _mm256_set1_epi64x(pair(6)));
            // High nibbles down to the low ones (as `nibbles` does).
            let high_nibble = _mm512_set1_epi64(0x1020_4080_0000_0000);
            let spread: [__m512i; 4] =
                std::array::from_fn(|k| _mm512_loadu_si512(SPREAD[k].as_ptr().cast()));
            q6k_rows!(
                views,
                (out, m, j),
                _mm512_setzero_ps(),
                _mm512_reduce_add_ps,
                |acc, qb, b, d, sc16, offsets| {
                    // `- 32 * sum(sc * x)`, as each row's accumulator's start.
                    let mut ints: [__m512i; N] = std::array::from_fn(|k| {
                        _mm512_sub_epi32(
                            _mm512_setzero_si512(),
                            _mm512_inserti64x4::<0>(_mm512_setzero_si512(), offsets[k]),
                        )
                    });
                    let sc512 = _mm512_castsi256_si512(sc16);
                    for h in 0..2 {
                        let ql = _mm512_loadu_si512(qb[64 * h..].as_ptr().cast());
                        let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                            qb[128 + 32 * h..].as_ptr().cast(),
                        ));
                        // `(ql & 0x0F) | bits`: ternary-logic function 0xEC of (ql, bits, 0x0F).
                        let lo = _mm512_ternarylogic_epi32::<0xEC>(
                            ql,
                            _mm512_gf2p8affine_epi64_epi8::<0>(qh, to_lo),
                            low4,
                        );
                        let hi = _mm512_or_si512(
                            _mm512_gf2p8affine_epi64_epi8::<0>(ql, high_nibble),
                            _mm512_gf2p8affine_epi64_epi8::<0>(qh, to_hi),
                        );
                        let slo = _mm512_permutexvar_epi16(spread[2 * h], sc512);
                        let shi = _mm512_permutexvar_epi16(spread[2 * h + 1], sc512);
                        for k in 0..N {
                            let xb = &xq[k][b];
                            let xlo = _mm512_loadu_si512(xb[128 * h..].as_ptr().cast());
                            let xhi = _mm512_loadu_si512(xb[128 * h + 64..].as_ptr().cast());
                            let plo = _mm512_maddubs_epi16(lo, xlo);
                            let phi = _mm512_maddubs_epi16(hi, xhi);
                            ints[k] = _mm512_dpwssd_epi32(ints[k], plo, slo);
                            ints[k] = _mm512_dpwssd_epi32(ints[k], phi, shi);
                        }
                    }
                    for k in 0..N {
                        let scale = _mm512_set1_ps(d * xs[k][b]);
                        acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints[k]), scale, acc[k]);
                    }
                }
            );
        }
    }

    /// One Q4_0 row against one activation row; `xsum` holds each activation block's scaled
    /// sum for the offset term. Pairs of blocks per step, two pairs per iteration into four
    /// accumulators.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4<const OFF: bool>(
        w: &[u8],
        (ws, es): (&[u16], &[u16]),
        x: &[i8],
        xs: &[f32],
        xsum: &[f32],
    ) -> f32 {
        // SAFETY: as for `dot_q8`.
        unsafe {
            let nb = ws.len();
            let pairs = nb / 2;
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut offset = [0f32; 4];
            // Eight blocks (four pairs) per step with their scales handled as one vector:
            // one conversion, one multiply and one offset multiply-add for eight blocks, a
            // lane permute per block.
            let mut off8 = _mm256_setzero_ps();
            let groups = pairs / 4;
            // Whole groups as fixed-size arrays, so that every access inside is checked at
            // compile time: 4 pairs of weights (128 bytes), 8 activation blocks (256 bytes),
            // 8 scales of each kind.
            let chunks = w
                .chunks_exact(4 * BLOCK)
                .zip(x.chunks_exact(8 * BLOCK))
                .zip(
                    ws.chunks_exact(8)
                        .zip(xs.chunks_exact(8))
                        .zip(xsum.chunks_exact(8)),
                )
                .take(groups);
            for (g, ((wg, xg), ((d8, x8), t8))) in chunks.enumerate() {
                let (Ok(wg), Ok(xg), Ok(d8), Ok(x8), Ok(t8)) = (
                    <&[u8; 4 * BLOCK]>::try_from(wg),
                    <&[i8; 8 * BLOCK]>::try_from(xg),
                    <&[u16; 8]>::try_from(d8),
                    <&[f32; 8]>::try_from(x8),
                    <&[f32; 8]>::try_from(t8),
                ) else {
                    continue;
                };
                // 128 bytes of values (two lines) per group; a scale per 16 bytes of them.
                prefetch_ahead(wg.as_ptr(), 2, d8.as_ptr(), PREFETCH_AHEAD / 16);
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(d8.as_ptr().cast()));
                let ow = offset_factors::<OFF>(dw, es, 8 * g);
                let s8 = _mm256_mul_ps(dw, _mm256_loadu_ps(x8.as_ptr()));
                off8 = _mm256_fmadd_ps(ow, _mm256_loadu_ps(t8.as_ptr()), off8);
                for (k, a) in acc.iter_mut().enumerate() {
                    let (Ok(wp), Ok(xa), Ok(xb)) = (
                        <&[u8; BLOCK]>::try_from(&wg[k * BLOCK..(k + 1) * BLOCK]),
                        <&[i8; BLOCK]>::try_from(&xg[2 * k * BLOCK..(2 * k + 1) * BLOCK]),
                        <&[i8; BLOCK]>::try_from(&xg[(2 * k + 1) * BLOCK..(2 * k + 2) * BLOCK]),
                    ) else {
                        continue;
                    };
                    let (pa, pb) = q4_pair(wp, xa, xb);
                    let sa = _mm256_permutevar8x32_ps(s8, _mm256_set1_epi32(2 * k as i32));
                    let sb = _mm256_permutevar8x32_ps(s8, _mm256_set1_epi32(2 * k as i32 + 1));
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pa), sa, *a);
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pb), sb, *a);
                }
            }
            offset[0] += hsum(off8);
            let mut p = groups * 4;
            while p < pairs {
                let last = (p + 2).min(pairs);
                for (k, q) in (p..last).enumerate() {
                    let (Ok(wp), Ok(xa), Ok(xb)) = (
                        <&[u8; BLOCK]>::try_from(&w[q * BLOCK..(q + 1) * BLOCK]),
                        <&[i8; BLOCK]>::try_from(&x[2 * q * BLOCK..(2 * q + 1) * BLOCK]),
                        <&[i8; BLOCK]>::try_from(&x[(2 * q + 1) * BLOCK..(2 * q + 2) * BLOCK]),
                    ) else {
                        continue;
                    };
                    let (pa, pb) = q4_pair(wp, xa, xb);
                    let (da, db) = (f16_scale(ws[2 * q]), f16_scale(ws[2 * q + 1]));
                    let (i, j) = (2 * k, 2 * k + 1);
                    acc[i] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(pa),
                        _mm256_set1_ps(da * xs[2 * q]),
                        acc[i],
                    );
                    acc[j] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(pb),
                        _mm256_set1_ps(db * xs[2 * q + 1]),
                        acc[j],
                    );
                    offset[i] += da * xsum[2 * q];
                    offset[j] += db * xsum[2 * q + 1];
                }
                p = last;
            }
            if nb % 2 == 1 {
                // The odd last block, in GGML's order.
                let b = nb - 1;
                if let (Ok(wb), Ok(xb)) = (
                    <&[u8; BLOCK / 2]>::try_from(&w[b * BLOCK / 2..(b + 1) * BLOCK / 2]),
                    <&[i8; BLOCK]>::try_from(&x[b * BLOCK..(b + 1) * BLOCK]),
                ) {
                    let (a, dw) = q4_block(acc[0], wb, xb, ws[b], xs[b]);
                    acc[0] = a;
                    offset[0] += dw * xsum[b];
                }
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            // Blocks after the whole groups took their scales as offset factors.
            let rest = 8 * groups;
            let shift = match (OFF, es.get(rest..), xsum.get(rest..)) {
                (true, Some(e), Some(t)) => super::offset_shift(&ws[rest..], e, t),
                _ => 0.0,
            };
            hsum(sum) - 8.0 * ((offset[0] + offset[1]) + (offset[2] + offset[3])) + shift
        }
    }
}

/// `x [.., cols] -> [.., rows]` through a [`BlockMatrix`], as a candle op (f32 in, f32 out).
#[derive(Debug, Clone)]
pub(crate) struct BlockMatMul(pub(crate) Arc<BlockMatrix>);

impl CustomOp1 for BlockMatMul {
    fn name(&self) -> &'static str {
        "openelm-block-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else {
            candle_core::bail!("{}: the input must be f32", self.name());
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: the input must be contiguous", self.name());
        };
        let w = &self.0;
        let dims = l.shape().dims();
        let (Some(&k), Some(lead)) = (dims.last(), dims.get(..dims.len().saturating_sub(1))) else {
            candle_core::bail!("{}: the input has no dimensions", self.name());
        };
        if k != w.cols {
            candle_core::bail!("{}: input width {k}, matrix width {}", self.name(), w.cols);
        }
        let m: usize = lead.iter().product();
        let mut y = vec![0f32; m * w.rows];
        if m > 0 {
            w.matmul(&x[start..end], m, &mut y);
        }
        let mut out = lead.to_vec();
        out.push(w.rows);
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn weights_and_activations_start_on_a_cache_line() -> Result<()> {
        for (rows, cols) in [(8, 64), (37, 256), (1152, 1280)] {
            let v: Vec<f32> = (0..rows * cols).map(|i| (i % 13) as f32 * 0.01).collect();
            let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu)?;
            let q6k = (cols % SUPER == 0).then_some(GgmlDType::Q6K);
            for dtype in [GgmlDType::Q4_0, GgmlDType::Q8_0].into_iter().chain(q6k) {
                let w = BlockMatrix::from_qtensor("w", &QTensor::quantize(&t, dtype)?)?;
                let at = match &w.quants {
                    Quants::Q8(q) => q.as_ptr() as usize,
                    Quants::Q4(q) | Quants::Q6K { q, .. } => q.as_ptr() as usize,
                };
                assert_eq!(at % 64, 0, "{rows}x{cols} {dtype:?} weights");
                let a = w.quantize_input(&vec![0.5; 3 * cols], 3);
                assert_eq!(a.q.as_ptr() as usize % 64, 0, "activations");
                assert_eq!(a.q.len(), 3 * cols);
                if !a.q_halves.is_empty() {
                    assert_eq!(
                        a.q_halves.as_ptr() as usize % 64,
                        0,
                        "activations in halves"
                    );
                }
                if !a.q_steps.is_empty() {
                    assert_eq!(a.q_steps.as_ptr() as usize % 64, 0, "activations in steps");
                    assert_eq!(a.q_steps.len(), STEP_COPIES * a.q.len());
                }
                // Rows copied out of the tiles keep the alignment.
                let cut = w.untiled(4, 3);
                let at = match &cut.quants {
                    Quants::Q8(q) => q.as_ptr() as usize,
                    Quants::Q4(q) | Quants::Q6K { q, .. } => q.as_ptr() as usize,
                };
                assert_eq!(at % 64, 0, "untiled rows");
            }
        }
        let a = Aligned::from_slice(&[1u16, 2, 3]);
        assert_eq!((&*a, a.as_ptr() as usize % 64), (&[1u16, 2, 3][..], 0));
        assert!(Aligned::<f32>::zeroed(0).is_empty());
        Ok(())
    }

    /// Deterministic values uniform in [-a, a).
    fn uniform(n: usize, a: f32, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
            })
            .collect()
    }

    fn check(dtype: GgmlDType, m: usize, cols: usize) -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(uniform(80 * cols, 0.05, 1), (80, cols), &dev)?;
        let x = Tensor::from_vec(uniform(m * cols, 1.0, 2 + m as u64), (m, cols), &dev)?;
        let q = QTensor::quantize(&w, dtype)?;
        // The reference: the same quantized weights, dequantized, times the f32 input.
        let want = x.matmul(&q.dequantize(&dev)?.t()?)?;
        let bm = BlockMatrix::from_qtensor("w", &q)?;
        let got = x.apply_op1_no_bwd(&BlockMatMul(Arc::new(bm)))?;
        let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        // Only the 8-bit activation rounding differs: each term is off by up to 1/254 of its
        // block's largest activation, zero-mean, so a sum of k terms is off by about
        // sqrt(k) / 440 of the typical term while outputs reach about 3 sqrt(k) times it:
        // well under 1% of the largest output typically, 3% allows the worst of ~1400.
        assert!(
            diff < scale * 0.03,
            "{dtype:?} m={m}: off by {diff} at scale {scale}"
        );
        Ok(())
    }

    /// Row `r` of `bm` against activation row `j` on the portable loop.
    fn portable(bm: &BlockMatrix, act: &Activations, r: usize, j: usize) -> f32 {
        let (cols, nb) = (act.cols, act.cols / BLOCK);
        let x = (&act.q[j * cols..(j + 1) * cols], &[][..]);
        dot(
            false,
            bm,
            r,
            x,
            &act.scales[j * nb..(j + 1) * nb],
            &act.sums[j * nb..(j + 1) * nb],
        )
    }

    /// `w`'s products with the `m` rows of `x` through the prompt path (four activation rows
    /// at a time, then one) and the decode path (one row at a time) agree with the portable
    /// loop on `reference` (the same blocks, row-major).
    fn products_match_portable(
        w: &BlockMatrix,
        reference: &BlockMatrix,
        x: &[f32],
        m: usize,
        at: &str,
    ) {
        let (n, cols) = w.dims();
        let act = reference.quantize_input(x, m);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
        let mut y = vec![0f32; m * n];
        w.matmul(x, m, &mut y);
        for j in 0..m {
            let mut y1 = vec![0f32; n];
            w.matmul(&x[j * cols..(j + 1) * cols], 1, &mut y1);
            for r in 0..n {
                let want = portable(reference, &act, r, j);
                assert!(close(y[j * n + r], want), "prompt {at} ({j}, {r})");
                assert!(close(y1[r], want), "decode {at} ({j}, {r})");
            }
        }
    }

    #[test]
    fn every_q4_0_kernel_gives_the_portable_products() -> Result<()> {
        let dev = Device::Cpu;
        // Q4_0 rows of 1 to 40 blocks: no whole group of eight, groups with and without a
        // tail, odd and even block counts. Q4_K rows (whole super-blocks of 256) run on the
        // same kernels with offset factors.
        // 2048 values: more than one pass of the prompt kernel's activation chunks.
        let cases = [32, 64, 96, 256, 288, 352, 1280, 2048]
            .map(|c| (GgmlDType::Q4_0, c))
            .into_iter()
            .chain([256, 512, 1280].map(|c| (GgmlDType::Q4K, c)));
        // Nine rows: two tiles (a pair for the AVX-512 prompt kernel) and a row after them;
        // thirteen: a pair, a tile on its own and a row.
        for (dtype, cols, n) in cases.flat_map(|(d, c)| [(d, c, 9), (d, c, 13)]) {
            let nb = cols / BLOCK;
            let w = Tensor::from_vec(uniform(n * cols, 0.05, 7), (n, cols), &dev)?;
            let q = QTensor::quantize(&w, dtype)?;
            let (bm, tiled) = if dtype == GgmlDType::Q4K {
                (
                    BlockMatrix::from_q4k("w", &q, false)?,
                    BlockMatrix::from_q4k("w", &q, true)?,
                )
            } else {
                (
                    BlockMatrix::repack("w", &q, false)?,
                    BlockMatrix::repack("w", &q, true)?,
                )
            };
            let m = 5;
            let x = uniform(m * cols, 1.0, 8);
            let act = Activations::quantize(&x, m, cols, Layouts::StepsAndHalves);
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
            let at = |layout: &str| format!("{dtype:?} cols {cols} rows {n} {layout}");
            for (layout, w) in [("row-major", &bm), ("tiled", &tiled)] {
                products_match_portable(w, &bm, &x, m, &at(layout));
            }
            // Each x86 kernel on its own, whichever the dispatch would pick.
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                let Quants::Q4(q) = &bm.quants else {
                    return Err(Error::InvalidArgument("expected Q4_0 blocks".into()));
                };
                let row = |r: usize| &q[r * cols / 2..(r + 1) * cols / 2];
                let ws = |r: usize| &bm.scales[r * nb..(r + 1) * nb];
                let es = |r: usize| bm.offsets.get(r * nb..(r + 1) * nb);
                let xq: [&[i8]; 4] = std::array::from_fn(|j| &act.q[j * cols..(j + 1) * cols]);
                let xs: [&[f32]; 4] = std::array::from_fn(|j| &act.scales[j * nb..(j + 1) * nb]);
                let xt: [&[f32]; 4] = std::array::from_fn(|j| &act.sums[j * nb..(j + 1) * nb]);
                for r in 0..n {
                    let want: [f32; 4] = std::array::from_fn(|j| portable(&bm, &act, r, j));
                    // SAFETY: AVX2, FMA and F16C were found above.
                    #[allow(unsafe_code)]
                    let (one, four) = unsafe {
                        match es(r) {
                            Some(e) => (
                                x86::dot_q4::<true>(row(r), (ws(r), e), xq[0], xs[0], xt[0]),
                                x86::dot4_q4::<true>(row(r), (ws(r), e), xq, xs, xt),
                            ),
                            None => (
                                x86::dot_q4::<false>(row(r), (ws(r), ws(r)), xq[0], xs[0], xt[0]),
                                x86::dot4_q4::<false>(row(r), (ws(r), ws(r)), xq, xs, xt),
                            ),
                        }
                    };
                    assert!(close(one, want[0]), "{} AVX2 row {r}", at(""));
                    for j in 0..4 {
                        assert!(close(four[j], want[j]), "{} AVX2 x4 ({j}, {r})", at(""));
                    }
                    if avx512() {
                        let xp: [&[i8]; 4] =
                            std::array::from_fn(|j| &act.q_halves[j * cols..(j + 1) * cols]);
                        // The AVX-512 kernels read the whole groups in GGML's order.
                        let own = tiled.untiled(r, 1);
                        let Quants::Q4(q1) = &own.quants else {
                            return Err(Error::InvalidArgument("expected Q4 blocks".into()));
                        };
                        let (d1, e1) = (&own.scales[..], &own.offsets[..]);
                        // SAFETY: AVX-512 F, BW, VNNI and GFNI were found by `avx512()`.
                        #[allow(unsafe_code)]
                        let one = unsafe {
                            if e1.is_empty() {
                                x86::dot_q4_512::<false>(q1, (d1, d1), xp[0], xq[0], xs[0], xt[0])
                            } else {
                                x86::dot_q4_512::<true>(q1, (d1, e1), xp[0], xq[0], xs[0], xt[0])
                            }
                        };
                        assert!(close(one, want[0]), "{} AVX-512 row {r}", at(""));
                        // The prompt kernel for rows reads a row-major row in place.
                        let v = own.row_groups(q1, BLOCK / 2, 0);
                        // SAFETY: as above.
                        #[allow(unsafe_code)]
                        let four = unsafe {
                            if v.offsets.is_empty() {
                                x86::dot4_q4_512::<false>(v, xp, xq, xs, xt)
                            } else {
                                x86::dot4_q4_512::<true>(v, xp, xq, xs, xt)
                            }
                        };
                        for j in 0..4 {
                            assert!(close(four[j], want[j]), "{} AVX-512 x4 ({j}, {r})", at(""));
                        }
                    }
                }
                // Each tile of four weight rows against activation row 0 (the decode
                // kernels) and against activation rows 0-3 (the prompt kernel).
                let Quants::Q4(q) = &tiled.quants else {
                    return Err(Error::InvalidArgument("expected Q4 blocks".into()));
                };
                for r in [0, 4] {
                    let ws = &tiled.scales[r * nb..(r + 4) * nb];
                    let w4 = &q[r * cols / 2..(r + 4) * cols / 2];
                    let es = tiled.offsets.get(r * nb..(r + 4) * nb);
                    let xst = &act.q_steps[..STEP_COPIES * cols];
                    // SAFETY: AVX2, FMA and F16C were found above.
                    #[allow(unsafe_code)]
                    let one = unsafe {
                        match es {
                            Some(es) => {
                                x86::rows4_q4_256::<true>(w4, (ws, es), xst, xq[0], xs[0], xt[0])
                            }
                            None => {
                                x86::rows4_q4_256::<false>(w4, (ws, ws), xst, xq[0], xs[0], xt[0])
                            }
                        }
                    };
                    for (k, &got) in one.iter().enumerate() {
                        let want = portable(&bm, &act, r + k, 0);
                        assert!(close(got, want), "{} AVX2 rows x4 ({r}+{k})", at(""));
                    }
                }
                if avx512() {
                    let xst: [&[i8]; 4] = std::array::from_fn(|j| {
                        &act.q_steps[j * STEP_COPIES * cols..(j + 1) * STEP_COPIES * cols]
                    });
                    for r in [0, 4] {
                        let ws = &tiled.scales[r * nb..(r + 4) * nb];
                        let w4 = &q[r * cols / 2..(r + 4) * cols / 2];
                        let es = tiled.offsets.get(r * nb..(r + 4) * nb);
                        // SAFETY: AVX-512 F, BW, VNNI and GFNI were found by `avx512()`.
                        #[allow(unsafe_code)]
                        let (one, four) = unsafe {
                            match es {
                                Some(es) => (
                                    x86::rows4_q4_512::<true>(
                                        w4,
                                        (ws, es),
                                        xst[0],
                                        xq[0],
                                        xs[0],
                                        xt[0],
                                    ),
                                    x86::tile4_q4_512::<true>(w4, (ws, es), xst, xq, xs, xt),
                                ),
                                None => (
                                    x86::rows4_q4_512::<false>(
                                        w4,
                                        (ws, ws),
                                        xst[0],
                                        xq[0],
                                        xs[0],
                                        xt[0],
                                    ),
                                    x86::tile4_q4_512::<false>(w4, (ws, ws), xst, xq, xs, xt),
                                ),
                            }
                        };
                        for (k, (&one, four)) in one.iter().zip(&four).enumerate() {
                            let want = portable(&bm, &act, r + k, 0);
                            assert!(close(one, want), "{} AVX-512 rows x4 ({r}+{k})", at(""));
                            for (j, &got) in four.iter().enumerate() {
                                let want = portable(&bm, &act, r + k, j);
                                let at = at(&format!("AVX-512 tile x4 ({r}+{k}, {j})"));
                                assert!(close(got, want), "{at}");
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn offset_factors_reach_every_q4_kernel_and_tail() -> Result<()> {
        // Q4_K rows are whole super-blocks, so they never have a tail: offset factors on
        // Q4_0 rows that do (9 and 11 blocks, and 41 past a 1280-wide row) take every
        // kernel's tail path too. The portable loop adds them as `offset_shift` says.
        let dev = Device::Cpu;
        for cols in [288, 352, 1312] {
            let (n, nb) = (9, cols / BLOCK);
            let w = Tensor::from_vec(uniform(n * cols, 0.05, 31), (n, cols), &dev)?;
            let q = QTensor::quantize(&w, GgmlDType::Q4_0)?;
            let (mut bm, mut tiled) = (
                BlockMatrix::repack("w", &q, false)?,
                BlockMatrix::repack("w", &q, true)?,
            );
            let e: Vec<u16> = uniform(n * nb, 0.01, 32)
                .into_iter()
                .map(|v| half::f16::from_f32(v).to_bits())
                .collect();
            let mut e_tiled = e.clone();
            if tiled.tiled {
                tile_in_place(&mut e_tiled, n, nb, 1);
            }
            bm.offsets = e;
            tiled.offsets = e_tiled;
            let m = 5;
            let x = uniform(m * cols, 1.0, 33);
            for (layout, w) in [("row-major", &bm), ("tiled", &tiled)] {
                products_match_portable(w, &bm, &x, m, &format!("offsets cols {cols} {layout}"));
            }
        }
        Ok(())
    }

    #[test]
    fn every_q8_0_kernel_gives_the_portable_products() -> Result<()> {
        let dev = Device::Cpu;
        for cols in [32, 64, 256, 288, 352, 1280] {
            let nb = cols / BLOCK;
            // Weights out to both ends of the i8 range, where the +128 offset of the AVX-512
            // kernel matters.
            // Nine rows (Q8_0 is never tiled: asking for it keeps the rows row-major).
            let n = 9;
            let w = Tensor::from_vec(uniform(n * cols, 0.05, 9), (n, cols), &dev)?;
            let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
            let (bm, tiled) = (
                BlockMatrix::repack("w", &q, false)?,
                BlockMatrix::repack("w", &q, true)?,
            );
            assert!(!tiled.tiled, "Q8_0 stays row-major");
            let m = 5;
            let x = uniform(m * cols, 1.0, 10);
            let act = Activations::quantize(&x, m, cols, Layouts::None);
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
            products_match_portable(&bm, &bm, &x, m, &format!("cols {cols}"));
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                let Quants::Q8(q) = &bm.quants else {
                    return Err(Error::InvalidArgument("expected Q8_0 blocks".into()));
                };
                let xq: [&[i8]; 4] = std::array::from_fn(|j| &act.q[j * cols..(j + 1) * cols]);
                let xs: [&[f32]; 4] = std::array::from_fn(|j| &act.scales[j * nb..(j + 1) * nb]);
                let xt: [&[f32]; 4] = std::array::from_fn(|j| &act.sums[j * nb..(j + 1) * nb]);
                for r in 0..n {
                    let (wr, ws) = (
                        &q[r * cols..(r + 1) * cols],
                        &bm.scales[r * nb..(r + 1) * nb],
                    );
                    let want: [f32; 4] = std::array::from_fn(|j| portable(&bm, &act, r, j));
                    // SAFETY: AVX2, FMA and F16C were found above.
                    #[allow(unsafe_code)]
                    let four = unsafe { x86::dot4_q8(wr, ws, xq, xs) };
                    for j in 0..4 {
                        assert!(close(four[j], want[j]), "cols {cols} AVX2 x4 ({j}, {r})");
                    }
                    if avx512() {
                        // SAFETY: AVX-512 F, BW, VNNI and GFNI were found by `avx512()`.
                        #[allow(unsafe_code)]
                        let (one, four) = unsafe {
                            (
                                x86::dot_q8_512(wr, ws, xq[0], xs[0], xt[0]),
                                x86::dot4_q8_512(wr, ws, xq, xs, xt),
                            )
                        };
                        assert!(close(one, want[0]), "cols {cols} AVX-512 row {r}");
                        for j in 0..4 {
                            assert!(close(four[j], want[j]), "cols {cols} AVX-512 x4 ({j}, {r})");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn tiled_transpose_moves_every_value() {
        for (rows, m) in [(1, 1), (16, 16), (37, 5), (5, 37), (70, 33)] {
            let yt: Vec<f32> = (0..rows * m).map(|v| v as f32).collect();
            let mut y = vec![-1f32; rows * m];
            transpose_into(&yt, rows, m, &mut y);
            for r in 0..rows {
                for i in 0..m {
                    assert_eq!(
                        y[i * rows + r],
                        yt[r * m + i],
                        "rows {rows} m {m} at ({r}, {i})"
                    );
                }
            }
        }
    }

    /// Blocks of `L` activations for comparing quantizers: `seeds` random ones of growing
    /// range, then zeros, exact ties at half steps, extremes of sign, and one large value
    /// among small ones.
    fn quantization_cases<const L: usize>(seeds: u64) -> Vec<[f32; L]> {
        let mut blocks: Vec<[f32; L]> = (0..seeds)
            .map(|seed| {
                let v = uniform(L, 1.0 + seed as f32, seed);
                std::array::from_fn(|i| v[i])
            })
            .collect();
        let half = L as f32 / 2.0;
        blocks.push([0.0; L]);
        blocks.push(std::array::from_fn(|i| {
            (i as f32 - half) * 127.0 / half + 0.5
        }));
        blocks.push(std::array::from_fn(|i| if i % 2 == 0 { -3.0 } else { 1.5 }));
        blocks.push(std::array::from_fn(|i| if i == L / 3 { 1e4 } else { 1e-3 }));
        blocks
    }

    #[test]
    fn super_block_quantization_is_the_same_with_and_without_avx2() {
        if !avx2() {
            return;
        }
        for (n, xb) in quantization_cases::<SUPER>(50).iter().enumerate() {
            let (mut a, mut b) = ([0i8; SUPER], [0i8; SUPER]);
            let (mut sa, mut sb) = (Vec::new(), Vec::new());
            let fast = quantize_super_block(true, xb, &mut a, &mut sa);
            let plain = quantize_super_block(false, xb, &mut b, &mut sb);
            assert_eq!(a, b, "super-block {n}");
            assert_eq!(fast.to_bits(), plain.to_bits(), "super-block {n} scale");
            assert_eq!(sa, sb, "super-block {n} sums");
            assert_eq!(sa.len(), 16);
        }
    }

    #[test]
    fn activation_quantization_is_the_same_with_and_without_avx2() {
        if !avx2() {
            return;
        }
        for (n, xb) in quantization_cases::<BLOCK>(200).iter().enumerate() {
            let (mut a, mut b) = ([0i8; BLOCK], [0i8; BLOCK]);
            let fast = quantize_block(true, xb, &mut a);
            let plain = quantize_block(false, xb, &mut b);
            assert_eq!(a, b, "block {n}");
            assert_eq!(fast.0.to_bits(), plain.0.to_bits(), "block {n} scale");
            assert_eq!(fast.1, plain.1, "block {n} sum");
        }
    }

    #[test]
    fn q4_k_is_held_exactly_enough_as_q4_0_blocks_with_offsets() -> Result<()> {
        let dev = Device::Cpu;
        // Two super-blocks per row; 9 rows: two tiles and a row after them.
        let (n, cols) = (9, 512);
        let w = Tensor::from_vec(uniform(n * cols, 0.05, 21), (n, cols), &dev)?;
        let q = QTensor::quantize(&w, GgmlDType::Q4K)?;
        let want = q.dequantize(&dev)?.to_vec2::<f32>()?;
        for tiled in [false, true] {
            let bm = BlockMatrix::from_q4k("w", &q, tiled)?;
            assert_eq!(bm.dtype(), GgmlDType::Q4K);
            // 16 bytes of values, an f16 scale and an f16 offset per 32 values.
            assert_eq!(bm.size_in_bytes(), n * cols / 32 * 20);
            let mut row = vec![0f32; cols];
            for (r, want) in want.iter().enumerate() {
                bm.dequantize_row(r, &mut row);
                // Scale and offset are rounded to f16: at most 2^-11 of each, times up to
                // 15 steps for the scale.
                let top = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                for (i, (g, w)) in row.iter().zip(want).enumerate() {
                    assert!(
                        (g - w).abs() <= 2e-3 * top,
                        "tiled {tiled} row {r} at {i}: {g} vs {w}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn q8_0_and_q4_0_match_the_dequantized_product() -> Result<()> {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            for m in [1, 3, 17] {
                // An even and an odd number of blocks per row (Q4_0 packs blocks by pairs).
                for cols in [256, 288] {
                    check(dtype, m, cols)?;
                }
            }
        }
        // Q4_K rows are whole super-blocks of 256: one, and one with two groups more.
        for m in [1, 3, 17] {
            for cols in [256, 768] {
                check(GgmlDType::Q4K, m, cols)?;
            }
        }
        Ok(())
    }

    #[test]
    fn portable_and_simd_kernels_agree() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(uniform(3 * 352, 0.05, 3), (3, 352), &dev)?;
        let x = uniform(352, 1.0, 4);
        let act = Activations::quantize(&x, 1, 352, Layouts::StepsAndHalves);
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let bm = BlockMatrix::repack("w", &QTensor::quantize(&w, dtype)?, false)?;
            for r in 0..3 {
                let x = (&act.q[..], &act.q_halves[..]);
                let simd = dot(avx2(), &bm, r, x, &act.scales, &act.sums);
                let portable = dot(false, &bm, r, x, &act.scales, &act.sums);
                assert!(
                    (simd - portable).abs() <= 1e-4 * portable.abs().max(1.0),
                    "{dtype:?} row {r}: {simd} vs {portable}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn rows_dequantize_as_candle_does() -> Result<()> {
        let dev = Device::Cpu;
        // Rows of 3 blocks (no whole group) and of 9 (a group and one left), in a tile and
        // after it.
        for cols in [96, 288] {
            let w = Tensor::from_vec(uniform(5 * cols, 0.05, 5), (5, cols), &dev)?;
            for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
                let q = QTensor::quantize(&w, dtype)?;
                let want = q.dequantize(&dev)?.to_vec2::<f32>()?;
                for tiled in [false, true] {
                    let bm = BlockMatrix::repack("w", &q, tiled)?;
                    let mut row = vec![0f32; cols];
                    for (r, want) in want.iter().enumerate() {
                        bm.dequantize_row(r, &mut row);
                        assert_eq!(&row, want, "{dtype:?} {cols} tiled {tiled} row {r}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn tiles_read_back_as_the_rows_they_hold() {
        // 11 rows (two tiles and three rows), rows of 19 blocks (two groups and three left)
        // of 16 (Q4_0 values), 1 (scales) and 3 elements: every element distinct, so any
        // misplaced one shows.
        for unit in [16, 1, 3] {
            let (rows, nb) = (11, 19);
            let flat: Vec<u32> = (0..(rows * nb * unit) as u32).collect();
            let mut tiled = flat.clone();
            tile_in_place(&mut tiled, rows, nb, unit);
            assert_ne!(tiled, flat);
            // Rows after the last whole tile stay where they are.
            assert_eq!(tiled[8 * nb * unit..], flat[8 * nb * unit..]);
            for first in 0..rows {
                for n in 0..=rows - first {
                    let want = &flat[first * nb * unit..(first + n) * nb * unit];
                    let got = untile_rows(&tiled, (first, n), (rows, nb, unit), true);
                    assert_eq!(got, want, "unit {unit}, rows {first}..{}", first + n);
                }
            }
        }
        // A Q4_0 tile's step `s` of run `h` holds bytes `4s..4s + 4` of each row's blocks
        // `4h..4h + 4`, row by row (the lanes the tile kernels read).
        let (rows, nb, unit) = (4, 8, 16);
        let flat: Vec<u32> = (0..(rows * nb * unit) as u32).collect();
        let mut tiled = flat.clone();
        tile_in_place(&mut tiled, rows, nb, unit);
        for (i, &got) in tiled.iter().enumerate() {
            let (h, s, k, j, e) = (i / 256, i / 64 % 4, i / 16 % 4, i / 4 % 4, i % 4);
            let from = k * nb * unit + (4 * h + j) * unit + 4 * s + e;
            assert_eq!(got, flat[from], "run {h} step {s} row {k} block {j}");
        }
    }

    #[test]
    fn activation_steps_gather_what_each_tile_step_multiplies() {
        // Step `s` of run `h` of a group (16 bytes at `128h + 64 half + 16s`) holds values
        // `16 half + 4s..+4` of blocks `4h..4h + 4`.
        // Two groups and a leftover block, which the steps leave as zeros.
        let cols = 2 * 8 * BLOCK + BLOCK;
        let x: Vec<f32> = (0..cols).map(|i| (i % 97) as f32 - 48.0).collect();
        let act = Activations::quantize(&x, 1, cols, Layouts::StepsAndHalves);
        if act.q_steps.is_empty() {
            assert!(!avx2(), "steps are laid out whenever AVX2 is used");
            return;
        }
        for g in 0..2 {
            for i in 0..256 {
                let (h, half, s, j, e) = (i / 128, i / 64 % 2, i / 16 % 4, i / 4 % 4, i % 4);
                let block = 8 * g + 4 * h + j;
                let want = act.q[BLOCK * block + 16 * half + 4 * s + e];
                for c in 0..STEP_COPIES {
                    let at = STEP_COPIES * (256 * g + 128 * h + 64 * half + 16 * s) + 16 * c;
                    let got = act.q_steps[at + 4 * j + e];
                    assert_eq!(
                        got, want,
                        "group {g} run {h} half {half} step {s} block {j}"
                    );
                }
            }
        }
        assert_eq!(act.q_steps.len(), STEP_COPIES * cols);
        assert!(
            act.q_steps[STEP_COPIES * 16 * BLOCK..]
                .iter()
                .all(|&v| v == 0)
        );
    }

    #[test]
    fn decode_shares_give_the_same_products_from_any_row() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let (n, cols) = (11, 288);
            let w = Tensor::from_vec(uniform(n * cols, 0.05, 11), (n, cols), &dev)?;
            let q = QTensor::quantize(&w, dtype)?;
            let (flat, tiled) = (
                BlockMatrix::repack("w", &q, false)?,
                BlockMatrix::repack("w", &q, true)?,
            );
            let x = uniform(cols, 1.0, 12);
            let act = Activations::quantize(&x, 1, cols, Layouts::StepsAndHalves);
            // Every range of rows, as a decode share or a prompt band may start and end.
            for first in 0..n {
                for len in 1..=n - first {
                    let mut y = vec![f32::NAN; len];
                    rows(&tiled, &act, first, &mut y, 1);
                    for (i, &got) in y.iter().enumerate() {
                        let want = portable(&flat, &act, first + i, 0);
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{dtype:?} rows {first}+{len}, row {}: {got} vs {want}",
                            first + i
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_512_bit_unpacking_splits_every_byte_into_its_nibbles() {
        use std::arch::x86_64::{__m512i, _mm512_storeu_si512};
        if !avx512() {
            return;
        }
        for quarter in 0..4u8 {
            let w: [u8; 2 * BLOCK] = std::array::from_fn(|i| quarter * 64 + i as u8);
            let (mut lo, mut hi) = ([0u8; 64], [0u8; 64]);
            // SAFETY: AVX-512 F, BW, VNNI and GFNI were found by `avx512()`; the stores write
            // 64 bytes into 64-byte arrays.
            #[allow(unsafe_code)]
            unsafe {
                let (l, h): (__m512i, __m512i) = x86::nibbles(&w);
                _mm512_storeu_si512(lo.as_mut_ptr().cast(), l);
                _mm512_storeu_si512(hi.as_mut_ptr().cast(), h);
            }
            for (i, &b) in w.iter().enumerate() {
                assert_eq!((lo[i], hi[i]), (b & 0x0F, b >> 4), "byte {b:#04x}");
            }
        }
    }

    #[test]
    fn f16_scales_convert_exactly() {
        for bits in [
            0u16, 1, 0x03FF, 0x0400, 0x3C00, 0xBC00, 0x7BFF, 0x8001, 0x1234,
        ] {
            let want = half::f16::from_bits(bits).to_f32();
            assert_eq!(f16_to_f32(bits), want, "bits {bits:#06x}");
        }
    }

    /// A Q6_K matrix of `rows` x `cols` from arbitrary bytes: every bit pattern of values
    /// and sub-block scales (-128 included) is a valid Q6_K block; the super-block scales
    /// are small normal f16 values.
    fn raw_q6k(rows: usize, cols: usize, seed: u64) -> Result<QTensor> {
        let supers = rows * cols / SUPER;
        let bytes = uniform(supers * 210, 1.0, seed);
        let mut data: Vec<u8> = bytes.iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
        for (i, sb) in data.chunks_exact_mut(210).enumerate() {
            let d = half::f16::from_f32(1e-3 * (1.0 + (i % 7) as f32));
            sb[208..].copy_from_slice(&d.to_bits().to_le_bytes());
        }
        let storage = candle_core::quantized::QStorage::from_data(
            std::borrow::Cow::Owned(data),
            &Device::Cpu,
            GgmlDType::Q6K,
        )?;
        Ok(QTensor::new(storage, (rows, cols))?)
    }

    #[test]
    fn q6_k_keeps_its_bytes_and_rows_read_back_as_candle_dequantizes_them() -> Result<()> {
        for (rows, cols) in [(3, 256), (5, 1280)] {
            let q = raw_q6k(rows, cols, 11)?;
            let bm = BlockMatrix::from_qtensor("w", &q)?;
            assert_eq!(bm.dtype(), GgmlDType::Q6K);
            assert_eq!(bm.dims(), (rows, cols));
            // 210 bytes per 256 values, as in the file.
            assert_eq!(bm.size_in_bytes(), q.data()?.len());
            let dense = q.dequantize(&Device::Cpu)?.to_vec2::<f32>()?;
            let mut row = vec![0f32; cols];
            for (r, want) in dense.iter().enumerate() {
                bm.dequantize_row(r, &mut row);
                assert_eq!(&row, want, "{rows}x{cols} row {r}");
            }
            // A copy of some rows holds the same rows.
            let cut = bm.untiled(1, 2);
            cut.dequantize_row(1, &mut row);
            assert_eq!(row, dense[2]);
        }
        Ok(())
    }

    #[test]
    fn q6_k_products_match_the_dequantized_weights() -> Result<()> {
        for cols in [256, 512, 1280] {
            for m in [1, 2, 5] {
                check(GgmlDType::Q6K, m, cols)?;
            }
        }
        Ok(())
    }

    #[test]
    fn q6_k_kernels_give_the_portable_products_on_any_bytes() -> Result<()> {
        for (rows, cols, m) in [(7, 256, 1), (9, 1280, 3), (4, 2048, 2)] {
            let bm = BlockMatrix::from_qtensor("w", &raw_q6k(rows, cols, cols as u64)?)?;
            let Quants::Q6K { q, sc } = &bm.quants else {
                panic!("Q6_K held as {:?}", bm.dtype());
            };
            // Activations up to the extremes of their range, and a row of zeros.
            let mut x = uniform(m * cols, 3.0, 5);
            x[..cols].iter_mut().step_by(3).for_each(|v| *v = -3.0);
            x[1..cols].iter_mut().step_by(5).for_each(|v| *v = 3.0);
            x.extend(std::iter::repeat_n(0.0, cols));
            let act = bm.quantize_input(&x, m + 1);
            assert!(act.q.contains(&-127) && act.q.contains(&127));
            let mut y = vec![0f32; (m + 1) * rows];
            bm.matmul(&x, m + 1, &mut y);
            let s = cols / SUPER;
            for j in 0..=m {
                let xj = (
                    &act.q[j * cols..(j + 1) * cols],
                    &act.scales[j * s..(j + 1) * s],
                    &act.sums16[j * cols / 16..(j + 1) * cols / 16],
                );
                for r in 0..rows {
                    let w = (
                        &q[r * s * Q6K_BYTES..(r + 1) * s * Q6K_BYTES],
                        &sc[r * s * 16..(r + 1) * s * 16],
                        &bm.scales[r * s..(r + 1) * s],
                    );
                    let want = dot_q6k(w, xj);
                    // The integers are the same; only the order of the f32 sums differs.
                    let close = |a: f32| (a - want).abs() <= 1e-5 * want.abs().max(1e-3);
                    assert!(
                        close(y[j * rows + r]),
                        "({j}, {r}): {} vs {want}",
                        y[j * rows + r]
                    );
                    // Each kernel on its own, where the CPU has it.
                    #[cfg(target_arch = "x86_64")]
                    {
                        type Kernel = unsafe fn(
                            (&[u8], &[i8], &[u16]),
                            [(&[i8], &[f32], &[i16]); 1],
                            (&mut [f32], usize, usize),
                        );
                        let kernels: [(&str, bool, Kernel); 2] = [
                            ("AVX-512", avx512(), x86::rows_q6k_512::<1>),
                            ("AVX2", avx2(), x86::rows_q6k_256::<1>),
                        ];
                        for (name, has, kernel) in kernels {
                            if has {
                                let mut one = [0f32];
                                // SAFETY: `has` is the check for the kernel's features.
                                #[allow(unsafe_code)]
                                unsafe {
                                    kernel(w, [xj], (&mut one, 1, 0))
                                };
                                assert!(close(one[0]), "{name} ({j}, {r}): {} vs {want}", one[0]);
                            }
                        }
                    }
                    if j == m {
                        assert_eq!(want, 0.0, "zero activations, row {r}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn q6_k_with_too_few_bytes_is_refused_by_name() {
        // Two rows of a super-block each, with the bytes of one: candle takes it as is.
        let storage = candle_core::quantized::QStorage::from_data(
            std::borrow::Cow::Owned(vec![0u8; 210]),
            &Device::Cpu,
            GgmlDType::Q6K,
        );
        let t = storage.and_then(|s| QTensor::new(s, (2, 256))).unwrap();
        let e = BlockMatrix::from_qtensor("blk.0.ffn_down", &t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("blk.0.ffn_down") && e.contains("210 bytes of data, expected 420"),
            "{e}"
        );
    }
}
