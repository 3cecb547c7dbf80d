//! The tokenizer against golden encodings, Llama-2 BOS handling, and streaming detokenisation
//! that never emits a broken UTF-8 character.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::Value;

fn golden() -> Value {
    let text =
        std::fs::read_to_string(common::fixture("tokenizer/golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("json")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn encodes_every_golden_case_with_one_bos() {
    let tok = common::tokenizer();
    let g = golden();
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.vocab_size(), 384);
    let cases = g["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        let got = tok.encode(text, true).expect("encode");
        assert_eq!(got, want, "{text:?}");
        // Exactly one BOS, first; without it the rest is unchanged.
        assert_eq!(got.iter().filter(|&&t| t == 1).count(), 1, "{text:?}");
        assert_eq!(tok.encode(text, false).expect("encode"), want[1..].to_vec());
        assert_eq!(
            tok.decode(&got).expect("decode"),
            case["decoded"].as_str().expect("decoded"),
        );
    }
}

/// Streams `ids` through the detokeniser, checking each delta, and returns the pieces.
fn stream_pieces(tok: &elmroute_openelm::Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut s = tok.stream();
    let mut out = Vec::new();
    for &id in ids {
        let piece = s.push(id).expect("push");
        // A Rust String is valid UTF-8 by construction; what matters is that no character
        // was split into replacement characters on the way.
        assert!(!piece.contains('\u{FFFD}'), "split character in {piece:?}");
        out.push(piece);
    }
    out.push(s.finish().expect("finish"));
    out
}

#[test]
fn streaming_equals_decode_and_never_splits_characters() {
    let tok = common::tokenizer();
    for case in golden()["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let ids = ids(&case["ids"]);
        let pieces = stream_pieces(&tok, &ids);
        assert_eq!(
            pieces.concat(),
            tok.decode(&ids).expect("decode"),
            "{text:?}"
        );
    }
}

#[test]
fn emoji_bytes_are_held_until_complete() {
    let tok = common::tokenizer();
    // "🙂" is four byte-fallback tokens; nothing may come out before the fourth.
    let ids = tok.encode("a🙂b", false).expect("encode");
    let pieces = stream_pieces(&tok, &ids);
    let emoji_at = pieces
        .iter()
        .position(|p| p.contains('🙂'))
        .expect("emoji emitted");
    assert!(pieces[..emoji_at].iter().all(|p| !p.contains('🙂')));
    assert_eq!(pieces.concat(), "a🙂b");
    // Byte tokens of the emoji: exactly four, and the three before the last emit nothing.
    let byte_ids: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&i| (3..=258).contains(&i))
        .collect();
    assert_eq!(byte_ids.len(), 4);
    let mut s = tok.stream();
    for &id in &byte_ids[..3] {
        assert_eq!(s.push(id).expect("push"), "");
    }
    assert_eq!(s.push(byte_ids[3]).expect("push"), "🙂");
}

#[test]
fn mixed_scripts_stream_whole_characters() {
    let tok = common::tokenizer();
    let text = "naïve café — 日本語 🙂🚀 done";
    let ids = tok.encode(text, false).expect("encode");
    let pieces = stream_pieces(&tok, &ids);
    assert_eq!(pieces.concat(), text);
}

#[test]
fn an_incomplete_character_at_the_end_becomes_one_replacement() {
    let tok = common::tokenizer();
    // The first two of the emoji's four bytes, then the stream ends.
    let ids = tok.encode("🙂", false).expect("encode");
    let bytes: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&i| (3..=258).contains(&i))
        .collect();
    let mut s = tok.stream();
    assert_eq!(s.push(bytes[0]).expect("push"), "");
    assert_eq!(s.push(bytes[1]).expect("push"), "");
    assert_eq!(s.finish().expect("finish"), "\u{FFFD}");
}

#[test]
fn special_tokens_produce_no_text_and_leading_space_is_dropped() {
    let tok = common::tokenizer();
    let mut ids = tok.encode("the request", false).expect("encode");
    ids.insert(0, 1);
    ids.push(2);
    assert_eq!(stream_pieces(&tok, &ids).concat(), "the request");
}
