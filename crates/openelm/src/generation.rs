//! Sampling (temperature, top-k, top-p, repeat penalty, seeded) and the generate loop with
//! stop tokens, stop strings, usage counts and finish reasons.

use std::ops::ControlFlow;

use elmroute_core::{FinishReason, Usage};

use crate::error::{Error, Result};
use crate::model::{Model, argmax};
use crate::tokenizer::Tokenizer;

/// Settings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Softmax temperature; `0.0` (or below) is greedy decoding.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens before sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose mass reaches `p`.
    pub top_p: Option<f32>,
    /// Penalty for tokens seen in the last [`repeat_last_n`](Self::repeat_last_n) positions;
    /// `1.0` is off.
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the sampler: the same seed, prompt and settings give the same output.
    pub seed: u64,
    /// Tokens that end generation (the tokenizer's EOS is always one).
    pub stop_tokens: Vec<u32>,
    /// Strings that end generation; neither they nor anything after them is returned.
    pub stop_strings: Vec<String>,
    /// Drop the oldest prompt tokens (after BOS) when prompt plus answer exceed the context,
    /// instead of failing with [`Error::ContextOverflow`].
    pub truncate_left: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.7,
            top_k: Some(40),
            top_p: Some(0.9),
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 0,
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
            truncate_left: false,
        }
    }
}

impl GenerationConfig {
    /// Greedy decoding (temperature 0, no penalty) of at most `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repeat_penalty: 1.0,
            ..Self::default()
        }
    }

    /// Checks that every setting is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !self.temperature.is_finite() {
            return bad(format!("temperature {} is not finite", self.temperature));
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return bad(format!("top_p {p} is outside (0, 1]"));
        }
        if self.top_k == Some(0) {
            return bad("top_k is 0; use None to disable it".into());
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(format!(
                "repeat_penalty {} must be positive",
                self.repeat_penalty
            ));
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens is 0".into());
        }
        Ok(())
    }
}

/// SplitMix64: tiny, fast and stable across dependency versions, so a seed keeps its output.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Picks the next token from logits.
#[derive(Debug, Clone)]
pub struct Sampler {
    rng: Rng,
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repeat_penalty: f32,
    repeat_last_n: usize,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler with the settings of `cfg`.
    pub fn new(cfg: &GenerationConfig) -> Self {
        Self {
            rng: Rng(cfg.seed),
            temperature: cfg.temperature,
            top_k: cfg.top_k,
            top_p: cfg.top_p,
            repeat_penalty: cfg.repeat_penalty,
            repeat_last_n: cfg.repeat_last_n,
            candidates: Vec::new(),
        }
    }

    /// Applies the repeat penalty for `history`, then picks a token from `logits`.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if self.repeat_penalty != 1.0 && self.repeat_last_n > 0 {
            let start = history.len().saturating_sub(self.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &history[start..] {
                let slot = if seen.insert(t) {
                    logits.get_mut(t as usize)
                } else {
                    None
                };
                if let Some(l) = slot {
                    // Llama / CTRL convention: shrink positive logits, grow negative ones.
                    *l = if *l >= 0.0 {
                        *l / self.repeat_penalty
                    } else {
                        *l * self.repeat_penalty
                    };
                }
            }
        }
        if self.temperature <= 0.0 || logits.is_empty() {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        if self.candidates.is_empty() {
            return 0;
        }
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        // A zero k cannot come through GenerationConfig::validate; treat it as "off" here
        // rather than index with it.
        if let Some(k) = self.top_k.filter(|k| *k > 0 && *k < self.candidates.len()) {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit_desc);
        let max = self.candidates[0].1;
        let mut total = 0f64;
        for c in &mut self.candidates {
            c.1 = (c.1 - max).exp();
            total += c.1 as f64;
        }
        if let Some(p) = self.top_p {
            let target = p as f64 * total;
            let mut cum = 0f64;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cum += c.1 as f64;
                if cum >= target {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
            total = cum.min(total);
        }
        let mut r = self.rng.next_f64() * total;
        for c in &self.candidates {
            r -= c.1 as f64;
            if r < 0.0 {
                return c.0;
            }
        }
        self.candidates.last().map_or(0, |c| c.0)
    }
}

/// Holds back text that could be the start of a stop string, and finds stop strings that
/// span several tokens.
#[derive(Debug, Clone)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub(crate) fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds text; returns what is safe to emit and whether a stop string was found.
    pub(crate) fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), false);
        }
        if let Some(pos) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            let out = self.held[..pos].to_string();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep_from = self.held.len();
        for (i, _) in self.held.char_indices() {
            let suffix = &self.held[i..];
            if self.stops.iter().any(|s| s.starts_with(suffix)) {
                keep_from = i;
                break;
            }
        }
        let rest = self.held.split_off(keep_from);
        (std::mem::replace(&mut self.held, rest), false)
    }

    /// The held-back text, at the end of generation.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The answer text, stop string excluded.
    pub text: String,
    /// Every sampled token (a final stop token included).
    pub tokens: Vec<u32>,
    /// Prompt tokens as run (after any truncation) and sampled tokens.
    pub usage: Usage,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
}

/// Fits `prompt` plus `max_new_tokens` into `limit` positions: unchanged when it fits; with
/// `truncate_left`, the oldest tokens after a leading BOS are dropped; otherwise
/// [`Error::ContextOverflow`].
pub fn fit_context(
    prompt: &[u32],
    max_new_tokens: usize,
    limit: usize,
    truncate_left: bool,
    bos: Option<u32>,
) -> Result<Vec<u32>> {
    let needed = prompt.len() + max_new_tokens;
    if needed <= limit {
        return Ok(prompt.to_vec());
    }
    let room = limit.saturating_sub(max_new_tokens);
    let keep_bos = bos.is_some() && prompt.first().copied() == bos;
    let min_room = if keep_bos { 2 } else { 1 };
    if !truncate_left || room < min_room {
        return Err(Error::ContextOverflow { needed, limit });
    }
    let mut out = Vec::with_capacity(room);
    if keep_bos {
        out.push(prompt[0]);
    }
    let tail = room - out.len();
    out.extend_from_slice(&prompt[prompt.len() - tail..]);
    Ok(out)
}

/// Generates from `prompt` (token ids, BOS included), calling `on_text` after every token
/// with the new text (possibly empty, always whole UTF-8). `on_text` returning
/// [`ControlFlow::Break`] stops generation at once with [`FinishReason::Cancelled`].
///
/// The model's KV cache is cleared first. Prompt and answer must fit the model's context
/// (see [`fit_context`], which this calls with `cfg.truncate_left`).
///
/// The loop runs on a thread of the current rayon pool (this thread when it is one), so
/// `on_text` is called there: each token's forward pass then starts at once, and the
/// threads that share the decode steps' matrix products keep serving from one token to
/// the next instead of being woken for each.
pub fn generate(
    model: &mut Model,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    cfg: &GenerationConfig,
    on_text: impl FnMut(&str) -> ControlFlow<()> + Send,
) -> Result<Generation> {
    if rayon::current_thread_index().is_some() {
        generate_here(model, tokenizer, prompt, cfg, on_text)
    } else {
        rayon::scope(|_| generate_here(model, tokenizer, prompt, cfg, on_text))
    }
}

/// [`generate`] on the calling thread.
fn generate_here(
    model: &mut Model,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    cfg: &GenerationConfig,
    mut on_text: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation> {
    cfg.validate()?;
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("the prompt has no tokens".into()));
    }
    let limit = model.config().max_context_length;
    let prompt = fit_context(
        prompt,
        cfg.max_new_tokens,
        limit,
        cfg.truncate_left,
        tokenizer.bos_id(),
    )?;
    let mut stop_tokens = cfg.stop_tokens.clone();
    stop_tokens.extend(tokenizer.eos_id());
    stop_tokens.extend(model.config().eos_token_id);

    model.clear_kv_cache();
    let mut logits = model.forward_tokens(&prompt)?;
    let mut sampler = Sampler::new(cfg);
    let mut history = prompt.clone();
    let mut stream = tokenizer.stream();
    let mut stops = StopMatcher::new(&cfg.stop_strings);
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut finish = FinishReason::Length;
    let mut stopped_by_string = false;

    for step in 0..cfg.max_new_tokens {
        let next = sampler.sample(&mut logits, &history);
        tokens.push(next);
        history.push(next);
        if stop_tokens.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        let delta = stream.push(next)?;
        let (emit, hit) = stops.push(&delta);
        text.push_str(&emit);
        if on_text(&emit).is_break() {
            finish = FinishReason::Cancelled;
            break;
        }
        if hit {
            finish = FinishReason::Stop;
            stopped_by_string = true;
            break;
        }
        if step + 1 == cfg.max_new_tokens {
            break;
        }
        logits = model.forward_tokens(&[next])?;
    }
    if finish != FinishReason::Cancelled && !stopped_by_string {
        let tail = stream.finish()?;
        let (mut emit, hit) = stops.push(&tail);
        if hit {
            finish = FinishReason::Stop;
        } else {
            emit.push_str(&stops.finish());
        }
        if !emit.is_empty() {
            text.push_str(&emit);
            // The answer is complete either way; a Break here changes nothing.
            let _ = on_text(&emit);
        }
    }
    Ok(Generation {
        text,
        usage: Usage {
            prompt_tokens: u32::try_from(prompt.len()).unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(tokens.len()).unwrap_or(u32::MAX),
        },
        tokens,
        finish_reason: finish,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stop_string_across_chunks_is_found_and_never_emitted() {
        let mut m = StopMatcher::new(&strs(&["</end>"]));
        let mut out = String::new();
        let mut hit = false;
        for piece in ["Hello ", "wor", "ld</", "en", "d> more"] {
            let (e, h) = m.push(piece);
            out.push_str(&e);
            if h {
                hit = true;
                break;
            }
        }
        assert!(hit);
        assert_eq!(out, "Hello world");
    }

    #[test]
    fn held_prefix_is_released_when_it_does_not_match() {
        let mut m = StopMatcher::new(&strs(&["STOP"]));
        assert_eq!(m.push("abST"), ("ab".to_string(), false));
        assert_eq!(m.push("x"), ("STx".to_string(), false));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn greedy_picks_the_max() {
        let mut s = Sampler::new(&GenerationConfig::greedy(1));
        let mut l = vec![0.1, 3.0, -1.0];
        assert_eq!(s.sample(&mut l, &[]), 1);
    }

    #[test]
    fn repeat_penalty_changes_greedy_choice() {
        let cfg = GenerationConfig {
            repeat_penalty: 2.0,
            ..GenerationConfig::greedy(1)
        };
        let mut s = Sampler::new(&cfg);
        let mut l = vec![2.0, 1.5];
        assert_eq!(s.sample(&mut l, &[0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let cfg = GenerationConfig {
            temperature: 5.0,
            top_k: Some(1),
            top_p: None,
            repeat_penalty: 1.0,
            ..GenerationConfig::default()
        };
        let mut s = Sampler::new(&cfg);
        for _ in 0..50 {
            let mut l = vec![0.0, 0.5, 0.4, 0.1];
            assert_eq!(s.sample(&mut l, &[]), 1);
        }
    }

    #[test]
    fn top_p_excludes_the_tail() {
        let cfg = GenerationConfig {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.5),
            repeat_penalty: 1.0,
            ..GenerationConfig::default()
        };
        let mut s = Sampler::new(&cfg);
        // Token 0 holds ~88% of the mass: top-p 0.5 keeps only it.
        for _ in 0..100 {
            let mut l = vec![4.0, 2.0, 0.0, 0.0];
            assert_eq!(s.sample(&mut l, &[]), 0);
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let cfg = GenerationConfig {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            repeat_penalty: 1.0,
            seed: 42,
            ..GenerationConfig::default()
        };
        let draw = |cfg: &GenerationConfig| {
            let mut s = Sampler::new(cfg);
            (0..64)
                .map(|_| s.sample(&mut [0.0f32; 16].to_vec(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(&cfg);
        assert_eq!(a, draw(&cfg));
        let other = GenerationConfig { seed: 43, ..cfg };
        assert_ne!(a, draw(&other));
        // Uniform logits: many different tokens show up.
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 8);
    }

    #[test]
    fn fit_context_truncates_after_bos() {
        let p = [1, 10, 11, 12, 13, 14];
        assert_eq!(
            fit_context(&p, 2, 10, false, Some(1)).ok(),
            Some(p.to_vec())
        );
        assert!(
            fit_context(&p, 6, 10, false, Some(1))
                .err()
                .is_some_and(|e| e.is_context_overflow())
        );
        assert_eq!(
            fit_context(&p, 6, 10, true, Some(1)).ok(),
            Some(vec![1, 12, 13, 14])
        );
        assert!(fit_context(&p, 9, 10, true, Some(1)).is_err());
    }
}
