//! Every fixture checkpoint against the MLX reference logits: a full forward, and prefill
//! followed by one token at a time through the KV cache, in f32 within 1e-4.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use elmroute_openelm::{Config, DType, Device, Tensor};
use serde_json::Value;

const TOL: f32 = 1e-4;

struct Reference {
    tokens: Vec<u32>,
    prefill: usize,
    full: Vec<Vec<f32>>,
    incremental: Vec<Vec<f32>>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(common::fixture(name).join("reference.json"))
        .expect("reference.json");
    let v: Value = serde_json::from_str(&text).expect("reference json");
    let rows = |key: &str| -> Vec<Vec<f32>> {
        v[key]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("float") as f32)
                    .collect()
            })
            .collect()
    };
    Reference {
        tokens: v["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_u64().expect("id") as u32)
            .collect(),
        prefill: v["prefill"].as_u64().expect("prefill") as usize,
        full: rows("full"),
        incremental: rows("incremental"),
    }
}

fn assert_close(name: &str, what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "{name} {what}: row count");
    let mut worst = 0f32;
    for (pos, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{name} {what}: width at position {pos}");
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            let d = (a - b).abs();
            worst = worst.max(d);
            assert!(
                d <= TOL,
                "{name} {what}: position {pos}, logit {i}: got {a}, reference {b} (|diff| {d})"
            );
        }
    }
    eprintln!("{name} {what}: max |diff| {worst:e}");
}

fn to_rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.squeeze(0)
        .expect("batch 1")
        .to_vec2::<f32>()
        .expect("f32 rows")
}

fn check(name: &str) {
    let r = reference(name);
    let mut model = common::model(name);
    let dev = Device::Cpu;

    let ids = Tensor::new(r.tokens.as_slice(), &dev).expect("ids");
    let full = model.forward(&ids, 0).expect("full forward");
    assert_close(name, "full", &to_rows(&full), &r.full);

    model.clear_kv_cache();
    let mut rows = to_rows(
        &model
            .forward(&Tensor::new(&r.tokens[..r.prefill], &dev).expect("ids"), 0)
            .expect("prefill"),
    );
    for (pos, &t) in r.tokens.iter().enumerate().skip(r.prefill) {
        let logits = model
            .forward(&Tensor::new(&[t], &dev).expect("id"), pos)
            .expect("step");
        rows.extend(to_rows(&logits));
    }
    assert_close(name, "incremental", &rows, &r.incremental);
}

#[test]
fn tiny_gqa_matches_reference() {
    check("tiny-gqa");
}

#[test]
fn head_dim_128_matches_reference() {
    check("hd128");
}

#[test]
fn bf16_checkpoint_matches_reference_in_f32() {
    let ckpt = elmroute_openelm::Checkpoint::from_dir(common::fixture("bf16")).expect("ckpt");
    let info = ckpt
        .info("transformer.layers.0.attn.qkv_proj.weight")
        .expect("header")
        .expect("tensor");
    assert_eq!(info.dtype, DType::BF16, "the fixture is stored in bf16");
    check("bf16");
}

#[test]
fn derived_lists_checkpoint_matches_reference() {
    let cfg = Config::from_file(common::fixture("derived/config.json")).expect("config");
    assert_eq!(cfg.num_query_heads, vec![2, 4, 4, 4]);
    assert_eq!(cfg.num_kv_heads, vec![1, 2, 2, 2]);
    assert_eq!(cfg.ffn_dims, vec![16, 64, 96, 128]);
    check("derived");
}

#[test]
fn every_fixture_is_covered() {
    for name in common::CHECKPOINTS {
        assert!(
            common::fixture(name).join("reference.json").is_file(),
            "{name}"
        );
    }
}

#[test]
fn bf16_run_dtype_stays_close_to_reference() {
    // Running in bf16 loses precision; the logits must still track the reference.
    let name = "tiny-gqa";
    let r = reference(name);
    let dir = common::fixture(name);
    let config = Config::from_file(dir.join("config.json")).expect("config");
    let ckpt = elmroute_openelm::Checkpoint::from_dir(&dir).expect("ckpt");
    let mut model =
        elmroute_openelm::Model::load(&config, &ckpt, DType::BF16, &Device::Cpu, |_| {})
            .expect("bf16 model");
    let ids = Tensor::new(r.tokens.as_slice(), &Device::Cpu).expect("ids");
    let rows = to_rows(&model.forward(&ids, 0).expect("forward"));
    let mut agree = 0;
    for (g, w) in rows.iter().zip(&r.full) {
        let am = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
        };
        if am(g) == am(w) {
            agree += 1;
        }
        let worst = row_diff(g, w);
        assert!(worst < 0.5, "bf16 run drifted by {worst}");
    }
    assert!(
        agree * 10 >= rows.len() * 8,
        "argmax agreed on only {agree} of {}",
        rows.len()
    );

    // Decoding in bf16 takes the one-row kernel; it must agree with the bf16 full forward.
    model.clear_kv_cache();
    let mut inc = to_rows(
        &model
            .forward(&Tensor::new(&r.tokens[..1], &Device::Cpu).expect("ids"), 0)
            .expect("first"),
    );
    for (pos, &t) in r.tokens.iter().enumerate().skip(1) {
        let step = model
            .forward(&Tensor::new(&[t], &Device::Cpu).expect("id"), pos)
            .expect("step");
        inc.extend(to_rows(&step));
    }
    for (pos, (a, b)) in inc.iter().zip(&rows).enumerate() {
        let worst = row_diff(a, b);
        assert!(worst < 0.25, "bf16 decode vs bf16 full at {pos}: {worst}");
    }
}

/// Prefill, then a multi-token chunk at an offset (the causal mask with a prefix), then single
/// steps: every row must match the reference.
#[test]
fn chunked_prefill_at_an_offset_matches_reference() {
    for name in common::CHECKPOINTS {
        let r = reference(name);
        let mut model = common::model(name);
        let dev = Device::Cpu;
        let (a, b) = (2.min(r.tokens.len()), 5.min(r.tokens.len()));
        let mut rows = to_rows(
            &model
                .forward(&Tensor::new(&r.tokens[..a], &dev).unwrap(), 0)
                .unwrap(),
        );
        rows.extend(to_rows(
            &model
                .forward(&Tensor::new(&r.tokens[a..b], &dev).unwrap(), a)
                .unwrap(),
        ));
        for (pos, &t) in r.tokens.iter().enumerate().skip(b) {
            rows.extend(to_rows(
                &model
                    .forward(&Tensor::new(&[t], &dev).unwrap(), pos)
                    .unwrap(),
            ));
        }
        assert_close(name, "chunked", &rows, &r.full);
    }
}

/// bf16 attention over a long context: the softmax must be normalised in f32, or the
/// probabilities of a long row stop summing to one and bf16 drifts far from f32.
#[test]
fn bf16_attention_over_a_long_context_tracks_f32() {
    let config = one_layer(64, 16, 2048);
    let dev = Device::Cpu;
    let tensors = elmroute_openelm::random_tensors(&config, DType::F32, &dev).unwrap();
    let bf16_tensors = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
            )
        })
        .collect();
    let mut f32_model =
        elmroute_openelm::Model::from_tensors(&config, bf16_tensors, DType::F32, &dev).unwrap();
    let mut bf16_model =
        elmroute_openelm::Model::from_tensors(&config, tensors, DType::BF16, &dev).unwrap();
    let ids: Vec<u32> = (0..1500u32).map(|i| (i * 7 + 3) % 64).collect();
    let ids = Tensor::new(ids.as_slice(), &dev).unwrap();
    let want = f32_model
        .forward(&ids, 0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let got = bf16_model
        .forward(&ids, 0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let scale = want
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let diff = (got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff / scale < 0.02,
        "mean |bf16 - f32| / mean |f32| = {}",
        diff / scale
    );
}

#[test]
fn non_finite_logits_are_a_typed_error_not_garbage_text() {
    let config = one_layer(32, 8, 32);
    let dev = Device::Cpu;
    let mut tensors = elmroute_openelm::random_tensors(&config, DType::F32, &dev).unwrap();
    let nan = Tensor::new(&[f32::NAN; 32], &dev).unwrap();
    tensors.insert("transformer.norm.weight".into(), nan);
    let mut model =
        elmroute_openelm::Model::from_tensors(&config, tensors, DType::F32, &dev).unwrap();
    let err = model.forward_tokens(&[1, 5, 9]).unwrap_err();
    assert!(
        matches!(err, elmroute_openelm::Error::NonFiniteLogits { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("bf16"), "{err}");
}

/// A one-layer config (4 query heads, 2 KV heads, vocab 64) for tests with random weights.
fn one_layer(model_dim: usize, head_dim: usize, context: usize) -> Config {
    Config::from_json(&format!(
        r#"{{"vocab_size": 64, "model_dim": {model_dim}, "head_dim": {head_dim},
            "num_transformer_layers": 1, "num_query_heads": [4], "num_kv_heads": [2],
            "ffn_multipliers": [1.0], "ffn_dim_divisor": 16, "max_context_length": {context}}}"#
    ))
    .unwrap()
}

/// The largest absolute difference between two logit rows.
fn row_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}
