//! The model configuration: Hugging Face `config.json`, with the per-layer widths read when
//! present and derived (layer-wise scaling) when absent.

use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{Error, Result};

/// An OpenELM configuration with every per-layer width resolved.
///
/// Built from `config.json` with [`Config::from_file`] / [`Config::from_json`], or for one of
/// the four published sizes with [`Config::official`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width `D`.
    pub model_dim: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Number of transformer layers.
    pub num_layers: usize,
    /// Query heads per layer.
    pub num_query_heads: Vec<usize>,
    /// Key/value heads per layer.
    pub num_kv_heads: Vec<usize>,
    /// FFN multiplier per layer.
    pub ffn_multipliers: Vec<f64>,
    /// FFN inner width per layer (`make_divisible(ffn_multipliers[i] * D, ffn_dim_divisor)`).
    pub ffn_dims: Vec<usize>,
    /// Divisor the FFN widths are rounded to.
    pub ffn_dim_divisor: usize,
    /// The longest sequence (prompt plus answer) the model takes.
    pub max_context_length: usize,
    /// RoPE base frequency.
    pub rope_freq_constant: f64,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Whether the output projection is the token embedding (no `lm_head`).
    pub share_input_output_layers: bool,
    /// Whether queries and keys are RMS-normalised per head before RoPE.
    pub normalize_qk_projections: bool,
    /// Beginning-of-sequence token, when the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token, when the config names one.
    pub eos_token_id: Option<u32>,
}

/// One of the four published OpenELM sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OfficialSize {
    /// OpenELM-270M.
    M270,
    /// OpenELM-450M.
    M450,
    /// OpenELM-1_1B.
    B1_1,
    /// OpenELM-3B.
    B3,
}

impl OfficialSize {
    /// Every size, smallest first.
    pub const ALL: [OfficialSize; 4] = [Self::M270, Self::M450, Self::B1_1, Self::B3];

    /// The size as Apple names it (`"270M"`, `"1_1B"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::M270 => "270M",
            Self::M450 => "450M",
            Self::B1_1 => "1_1B",
            Self::B3 => "3B",
        }
    }

    /// `(layers, model_dim, head_dim)`.
    fn dims(self) -> (usize, usize, usize) {
        match self {
            Self::M270 => (16, 1280, 64),
            Self::M450 => (20, 1536, 64),
            Self::B1_1 => (28, 2048, 64),
            Self::B3 => (36, 3072, 128),
        }
    }
}

impl std::fmt::Display for OfficialSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OfficialSize {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_uppercase().replace('.', "_");
        let norm = norm.trim_start_matches("OPENELM-");
        match norm {
            "270M" => Ok(Self::M270),
            "450M" => Ok(Self::M450),
            "1_1B" | "1B" => Ok(Self::B1_1),
            "3B" => Ok(Self::B3),
            _ => Err(Error::InvalidArgument(format!(
                "unknown OpenELM size `{s}`; expected 270M, 450M, 1_1B or 3B"
            ))),
        }
    }
}

/// A multiplier field: one number for every layer, a `[min, max]` range scaled over the
/// layers, or (for `ffn_multipliers`) one value per layer.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Multipliers {
    One(f64),
    Many(Vec<f64>),
}

/// `config.json` as Hugging Face writes it for OpenELM.
#[derive(Debug, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    model_dim: usize,
    head_dim: usize,
    num_transformer_layers: usize,
    #[serde(default)]
    num_query_heads: Option<Vec<usize>>,
    #[serde(default)]
    num_kv_heads: Option<Vec<usize>>,
    #[serde(default)]
    num_gqa_groups: Option<usize>,
    #[serde(default)]
    qkv_multipliers: Option<Multipliers>,
    #[serde(default)]
    ffn_multipliers: Option<Multipliers>,
    #[serde(default = "default_ffn_dim_divisor")]
    ffn_dim_divisor: usize,
    #[serde(default = "default_context")]
    max_context_length: usize,
    #[serde(default = "default_rope")]
    rope_freq_constant: f64,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_true")]
    share_input_output_layers: bool,
    #[serde(default = "default_true")]
    normalize_qk_projections: bool,
    #[serde(default = "default_true")]
    ffn_with_glu: bool,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<u32>,
}

fn default_ffn_dim_divisor() -> usize {
    256
}
fn default_context() -> usize {
    2048
}
fn default_rope() -> f64 {
    10000.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}

/// `make_divisible` from CoreNet: rounds `v` to the nearest multiple of `divisor`, at least
/// `divisor`, and never more than 10% below `v`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    // Python: int(v + d / 2) // d * d, with v positive.
    let mut n = (((v + d / 2.0).trunc() as usize) / divisor * divisor).max(divisor);
    if (n as f64) < 0.9 * v {
        n += divisor;
    }
    n
}

/// `numpy.linspace(start, stop, num)` rounded to two decimals the way Python's `round` does
/// (half to even on the exact binary value), as the reference code computes multipliers.
fn scaled_multipliers(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![round2(start)];
    }
    let step = (stop - start) / (num - 1) as f64;
    (0..num)
        .map(|i| {
            let v = if i == num - 1 {
                stop
            } else {
                i as f64 * step + start
            };
            round2(v)
        })
        .collect()
}

/// Python's `round(v, 2)`: exact decimal expansion, ties to even. Rust's `{:.2}` formatting
/// rounds the exact binary value the same way.
fn round2(v: f64) -> f64 {
    format!("{v:.2}").parse().unwrap_or(v)
}

impl Config {
    /// Reads and resolves a Hugging Face `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Resolves a config from JSON text.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::parse(json, Path::new("<memory>"))
    }

    fn parse(json: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(json)
            .map_err(|e| Error::config(path, format!("{e} (line {})", e.line())))?;
        Self::resolve(raw, path)
    }

    /// The configuration of a published size, with its per-layer widths derived exactly as
    /// the reference code derives them.
    pub fn official(size: OfficialSize) -> Self {
        let (layers, model_dim, head_dim) = size.dims();
        let raw = RawConfig {
            vocab_size: 32000,
            model_dim,
            head_dim,
            num_transformer_layers: layers,
            num_query_heads: None,
            num_kv_heads: None,
            num_gqa_groups: Some(4),
            qkv_multipliers: Some(Multipliers::Many(vec![0.5, 1.0])),
            ffn_multipliers: Some(Multipliers::Many(vec![0.5, 4.0])),
            ffn_dim_divisor: 256,
            max_context_length: 2048,
            rope_freq_constant: 10000.0,
            rms_norm_eps: 1e-6,
            share_input_output_layers: true,
            normalize_qk_projections: true,
            ffn_with_glu: true,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        };
        // The official numbers are valid by construction; resolve cannot fail on them.
        Self::resolve(raw, Path::new("<official>")).unwrap_or_else(|_| unreachable_config())
    }

    fn resolve(raw: RawConfig, path: &Path) -> Result<Self> {
        let bad = |detail: String| Error::config(path, detail);
        let layers = raw.num_transformer_layers;
        if layers == 0 {
            return Err(bad("`num_transformer_layers` is 0".into()));
        }
        for (field, v) in [
            ("vocab_size", raw.vocab_size),
            ("model_dim", raw.model_dim),
            ("head_dim", raw.head_dim),
            ("ffn_dim_divisor", raw.ffn_dim_divisor),
            ("max_context_length", raw.max_context_length),
        ] {
            if v == 0 {
                return Err(bad(format!("`{field}` is 0")));
            }
        }
        if !raw.head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "`head_dim` is {}, RoPE needs an even width",
                raw.head_dim
            )));
        }
        if !raw.ffn_with_glu {
            return Err(bad(
                "`ffn_with_glu` is false; only the gated FFN of the published models is supported"
                    .into(),
            ));
        }
        let groups = raw.num_gqa_groups.unwrap_or(1).max(1);

        let num_query_heads = match raw.num_query_heads {
            Some(list) => list,
            None => {
                let mults = match &raw.qkv_multipliers {
                    Some(Multipliers::One(m)) => vec![*m; layers],
                    Some(Multipliers::Many(v)) if v.len() == 2 => {
                        scaled_multipliers(v[0], v[1], layers)
                    }
                    Some(Multipliers::Many(v)) => {
                        return Err(bad(format!(
                            "`qkv_multipliers` has {} values; expected one number or [min, max]",
                            v.len()
                        )));
                    }
                    None => {
                        return Err(bad(
                            "neither `num_query_heads` nor `qkv_multipliers` is present".into(),
                        ));
                    }
                };
                mults
                    .iter()
                    .map(|m| {
                        make_divisible(raw.model_dim as f64 * m, raw.head_dim * groups)
                            / raw.head_dim
                    })
                    .collect()
            }
        };
        let num_kv_heads = match raw.num_kv_heads {
            Some(list) => list,
            None => num_query_heads.iter().map(|q| q / groups).collect(),
        };
        let ffn_multipliers = match raw.ffn_multipliers {
            Some(Multipliers::One(m)) => vec![m; layers],
            Some(Multipliers::Many(v)) if v.len() == layers => v,
            Some(Multipliers::Many(v)) if v.len() == 2 => scaled_multipliers(v[0], v[1], layers),
            Some(Multipliers::Many(v)) => {
                return Err(bad(format!(
                    "`ffn_multipliers` has {} values; expected one per layer ({layers}) or [min, max]",
                    v.len()
                )));
            }
            None => return Err(bad("`ffn_multipliers` is missing".into())),
        };
        for (field, len) in [
            ("num_query_heads", num_query_heads.len()),
            ("num_kv_heads", num_kv_heads.len()),
        ] {
            if len != layers {
                return Err(bad(format!(
                    "`{field}` has {len} entries, expected {layers} (num_transformer_layers)"
                )));
            }
        }
        for (i, (&q, &kv)) in num_query_heads.iter().zip(&num_kv_heads).enumerate() {
            if q == 0 || kv == 0 || q % kv != 0 {
                return Err(bad(format!(
                    "layer {i}: {q} query heads and {kv} KV heads; expected both positive with query heads a multiple of KV heads"
                )));
            }
        }
        let ffn_dims = ffn_multipliers
            .iter()
            .map(|m| make_divisible(m * raw.model_dim as f64, raw.ffn_dim_divisor))
            .collect();
        Ok(Self {
            vocab_size: raw.vocab_size,
            model_dim: raw.model_dim,
            head_dim: raw.head_dim,
            num_layers: layers,
            num_query_heads,
            num_kv_heads,
            ffn_multipliers,
            ffn_dims,
            ffn_dim_divisor: raw.ffn_dim_divisor,
            max_context_length: raw.max_context_length,
            rope_freq_constant: raw.rope_freq_constant,
            rms_norm_eps: raw.rms_norm_eps,
            share_input_output_layers: raw.share_input_output_layers,
            normalize_qk_projections: raw.normalize_qk_projections,
            bos_token_id: raw.bos_token_id,
            eos_token_id: raw.eos_token_id,
        })
    }

    /// Checks a config built field by field (as from GGUF metadata): positive sizes, one
    /// entry per layer in every list, query heads a multiple of KV heads, an even head width.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let layers = self.num_layers;
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("model_dim", self.model_dim),
            ("head_dim", self.head_dim),
            ("num_layers", layers),
            ("max_context_length", self.max_context_length),
        ] {
            if v == 0 {
                return Err(format!("{field} is 0"));
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head width {} is odd; RoPE needs an even width",
                self.head_dim
            ));
        }
        for (field, len) in [
            ("query head counts", self.num_query_heads.len()),
            ("KV head counts", self.num_kv_heads.len()),
            ("FFN widths", self.ffn_dims.len()),
        ] {
            if len != layers {
                return Err(format!("{len} {field} for {layers} layers"));
            }
        }
        for i in 0..layers {
            let (q, kv, f) = (
                self.num_query_heads[i],
                self.num_kv_heads[i],
                self.ffn_dims[i],
            );
            if q == 0 || kv == 0 || q % kv != 0 || f == 0 {
                return Err(format!(
                    "layer {i}: {q} query heads, {kv} KV heads, FFN width {f}; expected all \
                     positive with query heads a multiple of KV heads"
                ));
            }
        }
        Ok(())
    }

    /// Every tensor the checkpoint must hold, with its `[out, in]` shape.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (d, hd) = (self.model_dim, self.head_dim);
        let mut out = vec![
            (
                "transformer.token_embeddings.weight".to_string(),
                vec![self.vocab_size, d],
            ),
            ("transformer.norm.weight".to_string(), vec![d]),
        ];
        if !self.share_input_output_layers {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, d]));
        }
        for i in 0..self.num_layers {
            let (q, kv, f) = (
                self.num_query_heads[i],
                self.num_kv_heads[i],
                self.ffn_dims[i],
            );
            let p = format!("transformer.layers.{i}");
            out.push((format!("{p}.attn_norm.weight"), vec![d]));
            out.push((
                format!("{p}.attn.qkv_proj.weight"),
                vec![(q + 2 * kv) * hd, d],
            ));
            if self.normalize_qk_projections {
                out.push((format!("{p}.attn.q_norm.weight"), vec![hd]));
                out.push((format!("{p}.attn.k_norm.weight"), vec![hd]));
            }
            out.push((format!("{p}.attn.out_proj.weight"), vec![d, q * hd]));
            out.push((format!("{p}.ffn_norm.weight"), vec![d]));
            out.push((format!("{p}.ffn.proj_1.weight"), vec![2 * f, d]));
            out.push((format!("{p}.ffn.proj_2.weight"), vec![d, f]));
        }
        out
    }

    /// Number of parameters (the shared embedding counted once).
    pub fn num_parameters(&self) -> usize {
        self.expected_tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

#[cold]
fn unreachable_config() -> Config {
    // Only reachable if the hard-coded official numbers were edited into an invalid state;
    // the unit tests below resolve every size, so this never ships broken.
    Config {
        vocab_size: 0,
        model_dim: 0,
        head_dim: 0,
        num_layers: 0,
        num_query_heads: Vec::new(),
        num_kv_heads: Vec::new(),
        ffn_multipliers: Vec::new(),
        ffn_dims: Vec::new(),
        ffn_dim_divisor: 0,
        max_context_length: 0,
        rope_freq_constant: 0.0,
        rms_norm_eps: 0.0,
        share_input_output_layers: true,
        normalize_qk_projections: true,
        bos_token_id: None,
        eos_token_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_corenet() {
        assert_eq!(make_divisible(640.0, 256), 768);
        assert_eq!(make_divisible(100.0, 8), 104);
        assert_eq!(make_divisible(3.0, 8), 8);
    }

    #[test]
    fn python_rounding_is_half_even_on_exact_value() {
        assert_eq!(round2(0.625), 0.62);
        assert_eq!(round2(0.875), 0.88);
        assert_eq!(round2(0.5333333333), 0.53);
    }

    #[test]
    fn every_official_size_resolves() {
        for size in OfficialSize::ALL {
            let c = Config::official(size);
            assert_eq!(c.num_query_heads.len(), c.num_layers, "{size}");
            assert!(c.vocab_size == 32000);
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(
            "270M".parse::<OfficialSize>().ok(),
            Some(OfficialSize::M270)
        );
        assert_eq!(
            "1_1B".parse::<OfficialSize>().ok(),
            Some(OfficialSize::B1_1)
        );
        assert_eq!(
            "1.1b".parse::<OfficialSize>().ok(),
            Some(OfficialSize::B1_1)
        );
        assert!("7B".parse::<OfficialSize>().is_err());
    }
}
