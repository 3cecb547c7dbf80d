//! The generate loop on a fixture checkpoint: seeds, greedy decoding, stop strings, limits and
//! the context.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ops::ControlFlow;

use elmroute_core::FinishReason;
use elmroute_openelm::{Error, Generation, GenerationConfig, Model, Tensor, generate};

const PROMPT: &str = "the router decides where the request should go";

fn run(model: &mut Model, prompt: &[u32], cfg: &GenerationConfig) -> Generation {
    let tok = common::tokenizer();
    generate(model, &tok, prompt, cfg, |_| ControlFlow::Continue(())).expect("generate")
}

fn prompt() -> Vec<u32> {
    common::tokenizer().encode(PROMPT, true).expect("encode")
}

fn sampled(seed: u64, n: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: n,
        temperature: 1.0,
        top_k: Some(50),
        top_p: Some(0.95),
        repeat_penalty: 1.1,
        seed,
        ..GenerationConfig::default()
    }
}

#[test]
fn same_seed_gives_the_same_output_and_another_seed_does_not() {
    let mut model = common::model("tiny-gqa");
    let p = prompt();
    let a = run(&mut model, &p, &sampled(7, 24));
    let b = run(&mut model, &p, &sampled(7, 24));
    assert_eq!(a, b);
    let outputs: std::collections::HashSet<Vec<u32>> = (0..4)
        .map(|seed| run(&mut model, &p, &sampled(100 + seed, 24)).tokens)
        .collect();
    assert!(
        outputs.len() > 1,
        "different seeds should sample differently"
    );
}

#[test]
fn greedy_is_deterministic_and_follows_the_full_forward_argmax() {
    let mut model = common::model("tiny-gqa");
    let p = prompt();
    let g = run(&mut model, &p, &GenerationConfig::greedy(12));
    assert_eq!(g, run(&mut model, &p, &GenerationConfig::greedy(12)));
    // Recompute each greedy step with a fresh full forward (no cache): same tokens.
    let mut seq = p.clone();
    for &want in &g.tokens {
        model.clear_kv_cache();
        let ids = Tensor::new(seq.as_slice(), model.device()).expect("ids");
        let logits = model
            .forward_last(&ids, 0)
            .expect("forward")
            .squeeze(0)
            .expect("row")
            .to_vec1::<f32>()
            .expect("vec");
        let best = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .expect("argmax");
        assert_eq!(best, want);
        seq.push(want);
    }
    assert_eq!(g.usage.prompt_tokens as usize, p.len());
    assert_eq!(g.usage.completion_tokens as usize, g.tokens.len());
}

#[test]
fn max_new_tokens_ends_with_length() {
    let mut model = common::model("tiny-gqa");
    let g = run(&mut model, &prompt(), &GenerationConfig::greedy(9));
    assert!(
        !g.tokens.contains(&2),
        "this prompt does not reach EOS greedily"
    );
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.usage.completion_tokens, 9);
}

#[test]
fn stop_string_cuts_the_text_and_ends_with_stop() {
    let mut model = common::model("tiny-gqa");
    let p = prompt();
    let free = run(&mut model, &p, &GenerationConfig::greedy(40));
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() >= 8, "need some text to cut: {:?}", free.text);
    // A stop string taken from the middle of the free-running answer.
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = free.text.find(&stop).expect("stop occurs");
    let cfg = GenerationConfig {
        stop_strings: vec![stop.clone()],
        ..GenerationConfig::greedy(40)
    };
    let mut streamed = String::new();
    let tok = common::tokenizer();
    let g = generate(&mut model, &tok, &p, &cfg, |t| {
        streamed.push_str(t);
        ControlFlow::Continue(())
    })
    .expect("generate");
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.text, free.text[..cut]);
    assert_eq!(streamed, g.text, "the stop string is never streamed");
    assert!(g.tokens.len() < free.tokens.len());
}

#[test]
fn stop_token_ends_with_stop() {
    let mut model = common::model("tiny-gqa");
    let p = prompt();
    let free = run(&mut model, &p, &GenerationConfig::greedy(10));
    let stop_at = free.tokens[4];
    let cfg = GenerationConfig {
        stop_tokens: vec![stop_at],
        ..GenerationConfig::greedy(10)
    };
    let g = run(&mut model, &p, &cfg);
    let first = free
        .tokens
        .iter()
        .position(|&t| t == stop_at)
        .expect("present");
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.tokens, free.tokens[..=first]);
}

#[test]
fn breaking_from_the_callback_cancels_after_that_token() {
    let mut model = common::model("tiny-gqa");
    let tok = common::tokenizer();
    let mut calls = 0;
    let g = generate(
        &mut model,
        &tok,
        &prompt(),
        &GenerationConfig::greedy(30),
        |_| {
            calls += 1;
            if calls == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .expect("generate");
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
    assert_eq!(g.tokens.len(), 3);
}

#[test]
fn context_overflow_is_typed_unless_truncating_left() {
    let mut model = common::model("tiny-gqa"); // max_context_length 128
    let tok = common::tokenizer();
    let long = [PROMPT; 6].join(" ");
    let p = tok.encode(&long, true).expect("encode");
    assert!(
        p.len() > 100 && p.len() < 128,
        "prompt of {} tokens",
        p.len()
    );
    let cfg = GenerationConfig::greedy(40);
    let err = generate(&mut model, &tok, &p, &cfg, |_| ControlFlow::Continue(()))
        .expect_err("does not fit");
    assert!(matches!(err, Error::ContextOverflow { needed, limit: 128 } if needed == p.len() + 40));
    let core: elmroute_core::Error = err.into();
    assert!(core.is_context_overflow());

    let cfg = GenerationConfig {
        truncate_left: true,
        ..GenerationConfig::greedy(40)
    };
    let g = run(&mut model, &p, &cfg);
    assert_eq!(g.usage.prompt_tokens, 128 - 40);
    assert_eq!(g.tokens.len() + g.usage.prompt_tokens as usize, 128);

    // The model itself refuses to run past its context.
    model.clear_kv_cache();
    let ids = Tensor::new(vec![5u32; 129].as_slice(), model.device()).expect("ids");
    assert!(matches!(
        model.forward(&ids, 0),
        Err(Error::ContextOverflow {
            needed: 129,
            limit: 128
        })
    ));
}

#[test]
fn bad_settings_and_bad_tokens_are_typed() {
    let mut model = common::model("tiny-gqa");
    let tok = common::tokenizer();
    let cfg = GenerationConfig {
        top_p: Some(1.5),
        ..GenerationConfig::default()
    };
    let err = generate(&mut model, &tok, &prompt(), &cfg, |_| {
        ControlFlow::Continue(())
    })
    .expect_err("top_p");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = generate(
        &mut model,
        &tok,
        &[1, 999],
        &GenerationConfig::greedy(2),
        |_| ControlFlow::Continue(()),
    )
    .expect_err("id outside vocab");
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                token: 999,
                vocab_size: 384
            }
        ),
        "{err:?}"
    );
    // Offsets must follow the cache.
    model.clear_kv_cache();
    let ids = Tensor::new(&[1u32, 5], model.device()).expect("ids");
    assert!(matches!(
        model.forward(&ids, 3),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_long_prompt_in_chunks_gives_the_logits_of_one_pass() {
    let mut model = common::long_model();
    let vocab = model.config().vocab_size as u32;
    // Past two of the chunks that `forward_last` runs a long prompt in, and not a multiple.
    let prompt: Vec<u32> = (0..300u32).map(|i| 3 + (i * 37) % (vocab - 3)).collect();
    let ids = Tensor::new(prompt.as_slice(), model.device()).expect("ids");
    let whole = model.forward(&ids, 0).expect("forward");
    let want = whole
        .squeeze(0)
        .and_then(|t| t.get(prompt.len() - 1))
        .and_then(|t| t.to_vec1::<f32>())
        .expect("last row");
    model.clear_kv_cache();
    let got = model
        .forward_last(&ids, 0)
        .and_then(|t| Ok(t.squeeze(0)?.to_vec1::<f32>()?))
        .expect("forward_last");
    assert_eq!(model.seq_len(), prompt.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff =
        |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let worst = max_diff(&got, &want);
    assert!(
        worst <= 1e-4 * scale.max(1.0),
        "off by {worst} at scale {scale}"
    );
    // The next position continues from the chunked cache as from the whole pass's.
    let next = model.forward_tokens(&[5]).expect("next");
    model.clear_kv_cache();
    model.forward(&ids, 0).expect("forward");
    let again = model.forward_tokens(&[5]).expect("next");
    let worst = max_diff(&next, &again);
    assert!(
        worst <= 1e-4 * scale.max(1.0),
        "next position off by {worst}"
    );
    // A bad token late in a long prompt is refused before any chunk runs.
    model.clear_kv_cache();
    let mut bad = prompt.clone();
    bad[250] = vocab;
    let bad = Tensor::new(bad.as_slice(), model.device()).expect("ids");
    let err = model
        .forward_last(&bad, 0)
        .expect_err("token past the vocabulary");
    assert!(err.to_string().contains(&vocab.to_string()), "{err}");
    assert_eq!(model.seq_len(), 0, "nothing appended to the cache");
}
