//! The Llama-2 tokenizer from `tokenizer.json`, and streaming detokenisation that only ever
//! emits whole UTF-8 characters.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How a token turns into bytes when streaming.
#[derive(Debug, Clone)]
enum Piece {
    /// Literal bytes (a `<0xNN>` byte-fallback piece, or a text piece with `▁` as space).
    Bytes(Vec<u8>),
    /// A special token (`<s>`, `</s>`, `<unk>`): contributes no text.
    Special,
}

/// A tokenizer loaded with the `tokenizers` crate (pure-Rust features), with Llama-2's BOS
/// handling: one BOS at the start of a prompt, none inside it.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: Option<PathBuf>,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Per-id byte pieces when the vocabulary is SentencePiece-style with byte fallback;
    /// `None` for other vocabularies, which stream through the tokenizer's own decoder.
    pieces: Option<Vec<Piece>>,
}

impl Tokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::tokenizer(Some(path.to_path_buf()), e))?;
        Ok(Self::new(inner, Some(path.to_path_buf())))
    }

    /// Loads a tokenizer from the bytes of a `tokenizer.json`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::tokenizer(None, e))?;
        Ok(Self::new(inner, None))
    }

    fn new(inner: tokenizers::Tokenizer, path: Option<PathBuf>) -> Self {
        let bos = inner.token_to_id("<s>");
        let eos = inner.token_to_id("</s>");
        let pieces = byte_pieces(&inner);
        Self {
            inner,
            path,
            bos,
            eos,
            pieces,
        }
    }

    /// The beginning-of-sequence id (`<s>`), when the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id (`</s>`), when the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a piece, if it is in the vocabulary.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes `text`; with `add_bos` the result starts with exactly one BOS, as Llama-2's
    /// tokenizer does for a prompt.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::tokenizer(self.path.clone(), e))?;
        let ids = enc.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 1);
        if let (true, Some(bos)) = (add_bos, self.bos) {
            out.push(bos);
        }
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// Decodes `ids` to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::tokenizer(self.path.clone(), e))
    }

    /// A streaming detokeniser for generated ids.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            tokenizer: self,
            pending: Vec::new(),
            started: false,
            ids: Vec::new(),
            emitted: String::new(),
        }
    }
}

/// The `tokenizer.json` of a SentencePiece vocabulary given as GGUF stores it (pieces,
/// scores, token types): a BPE model with byte fallback whose merges are every split of a
/// piece into two pieces of the vocabulary, ranked by the merged piece's score (higher first),
/// which is how SentencePiece's BPE picks the next merge. Control and unknown tokens become
/// special added tokens; byte pieces (`<0xNN>`) and unused ones take part in no merge.
pub(crate) fn spm_tokenizer_json(
    tokens: &[String],
    scores: &[f32],
    types: &[i64],
    unk: usize,
) -> String {
    use std::collections::HashMap;
    // GGUF token types (llama.cpp's): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mergeable = |i: usize| matches!(types.get(i), Some(1) | Some(4));
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !mergeable(id) {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r))
                && mergeable(li)
                && mergeable(ri)
            {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, li, ri));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::Value::from(i)))
        .collect();
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .map(|&(_, _, l, r)| serde_json::json!([tokens[l], tokens[r]]))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(2) | Some(3)))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let unk_token = tokens.get(unk).cloned().unwrap_or_else(|| "<unk>".into());
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk_token,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges}
    })
    .to_string()
}

/// Maps every id to its bytes when the vocabulary is SentencePiece-style with byte fallback
/// (all 256 `<0xNN>` pieces present), as Llama-2's is.
fn byte_pieces(tok: &tokenizers::Tokenizer) -> Option<Vec<Piece>> {
    tok.token_to_id("<0x00>")?;
    tok.token_to_id("<0xFF>")?;
    let specials: std::collections::HashSet<u32> = tok
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();
    let n = tok.get_vocab_size(true);
    let mut out = Vec::with_capacity(n);
    for id in 0..n as u32 {
        if specials.contains(&id) {
            out.push(Piece::Special);
            continue;
        }
        let Some(piece) = tok.id_to_token(id) else {
            out.push(Piece::Special);
            continue;
        };
        let b = piece.as_bytes();
        if b.len() == 6
            && piece.starts_with("<0x")
            && piece.ends_with('>')
            && let Ok(byte) = u8::from_str_radix(&piece[3..5], 16)
        {
            out.push(Piece::Bytes(vec![byte]));
            continue;
        }
        out.push(Piece::Bytes(piece.replace('\u{2581}', " ").into_bytes()));
    }
    Some(out)
}

/// Turns generated ids into text deltas that are always whole UTF-8 characters.
///
/// Byte-fallback pieces (`<0xF0>` `<0x9F>` ...) are held back until their character is
/// complete; an invalid byte sequence becomes U+FFFD, never a split character. As Llama-2's
/// decoder does, the first space of the answer is dropped.
#[derive(Debug)]
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    /// Bytes of an incomplete character (byte mode).
    pending: Vec<u8>,
    /// Whether any text has been produced (for the leading-space strip).
    started: bool,
    /// Ids so far (decoder mode).
    ids: Vec<u32>,
    /// Text emitted so far (decoder mode).
    emitted: String,
}

impl TextStream<'_> {
    /// Adds one generated id and returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        match &self.tokenizer.pieces {
            Some(pieces) => {
                match pieces.get(id as usize) {
                    Some(Piece::Bytes(b)) => self.pending.extend_from_slice(b),
                    Some(Piece::Special) => {}
                    None => {
                        return Err(Error::TokenOutOfRange {
                            token: id,
                            vocab_size: pieces.len(),
                        });
                    }
                }
                Ok(self.drain(false))
            }
            None => {
                self.ids.push(id);
                let text = self.tokenizer.decode(&self.ids)?;
                Ok(self.diff(text, false))
            }
        }
    }

    /// Ends the stream and returns what was held back (an incomplete character becomes
    /// U+FFFD).
    pub fn finish(&mut self) -> Result<String> {
        match &self.tokenizer.pieces {
            Some(_) => Ok(self.drain(true)),
            None => {
                let text = self.tokenizer.decode(&self.ids)?;
                Ok(self.diff(text, true))
            }
        }
    }

    /// Emits the longest complete-character prefix of `pending`.
    fn drain(&mut self, flush: bool) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix is valid UTF-8 by construction.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // A real invalid sequence: replace it, continue after it.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            if flush {
                                out.push('\u{FFFD}');
                                self.pending.clear();
                            }
                            break;
                        }
                    }
                }
            }
        }
        if !self.started && !out.is_empty() {
            self.started = true;
            if let Some(rest) = out.strip_prefix(' ') {
                out = rest.to_string();
            }
        }
        out
    }

    /// Decoder mode: emits what `text` adds to what was emitted, holding back a trailing
    /// replacement character until the stream ends.
    fn diff(&mut self, text: String, flush: bool) -> String {
        if !flush && text.ends_with('\u{FFFD}') {
            return String::new();
        }
        match text.strip_prefix(self.emitted.as_str()) {
            Some(rest) => {
                let rest = rest.to_string();
                self.emitted = text;
                rest
            }
            None => String::new(),
        }
    }
}
