//! Per-layer widths: derived lists for the four official sizes equal the published ones, lists
//! present in `config.json` are read as they are, and missing lists are derived.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use elmroute_openelm::{Config, OfficialSize};
use serde_json::Value;

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|x| x.as_u64().expect("int") as usize)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|x| x.as_f64().expect("float"))
        .collect()
}

fn official() -> Value {
    let text = std::fs::read_to_string(common::fixture("official_layers.json")).expect("fixture");
    serde_json::from_str(&text).expect("json")
}

#[test]
fn derived_lists_equal_the_published_lists_for_all_four_sizes() {
    let published = official();
    for size in OfficialSize::ALL {
        let key = format!("OpenELM-{size}");
        let p = &published["models"][&key];
        assert!(p.is_object(), "{key} in official_layers.json");
        let c = Config::official(size);
        assert_eq!(
            c.model_dim,
            p["model_dim"].as_u64().expect("dim") as usize,
            "{key}"
        );
        assert_eq!(
            c.head_dim,
            p["head_dim"].as_u64().expect("hd") as usize,
            "{key}"
        );
        assert_eq!(
            c.num_layers,
            p["num_transformer_layers"].as_u64().expect("l") as usize
        );
        assert_eq!(
            c.num_query_heads,
            usizes(&p["num_query_heads"]),
            "{key} q heads"
        );
        assert_eq!(c.num_kv_heads, usizes(&p["num_kv_heads"]), "{key} kv heads");
        assert_eq!(
            c.ffn_multipliers,
            floats(&p["ffn_multipliers"]),
            "{key} ffn multipliers"
        );
        assert_eq!(c.ffn_dims, usizes(&p["ffn_dim"]), "{key} ffn dims");
        assert_eq!(
            c.num_parameters() as u64,
            p["params_tied"].as_u64().expect("params"),
            "{key} parameter count"
        );
    }
}

#[test]
fn openelm_270m_matches_the_lists_in_openelm_md() {
    // OPENELM.md: q_heads 12x5, 16x7, 20x4; kv_heads 3x5, 4x7, 5x4; and the FFN widths.
    let rep = |parts: &[(usize, usize)]| -> Vec<usize> {
        parts
            .iter()
            .flat_map(|&(v, n)| std::iter::repeat_n(v, n))
            .collect()
    };
    let c = Config::official(OfficialSize::M270);
    assert_eq!(c.num_query_heads, rep(&[(12, 5), (16, 7), (20, 4)]));
    assert_eq!(c.num_kv_heads, rep(&[(3, 5), (4, 7), (5, 4)]));
    assert_eq!(
        c.ffn_dims,
        vec![
            768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 3840, 4352, 4608,
            4864, 5120
        ]
    );
    assert_eq!(c.max_context_length, 2048);
}

#[test]
fn published_config_json_with_lists_reads_them() {
    // The layout of Apple's config.json: the lists are stored and win over the multipliers.
    let p = &official()["models"]["OpenELM-450M"];
    let json = serde_json::json!({
        "vocab_size": 32000, "model_dim": 1536, "head_dim": 64, "num_transformer_layers": 20,
        "num_gqa_groups": 4, "qkv_multipliers": [0.5, 1.0], "ffn_dim_divisor": 256,
        "num_query_heads": p["num_query_heads"], "num_kv_heads": p["num_kv_heads"],
        "ffn_multipliers": p["ffn_multipliers"], "max_context_length": 2048,
        "bos_token_id": 1, "eos_token_id": 2,
    });
    let c = Config::from_json(&json.to_string()).expect("config");
    assert_eq!(c.num_query_heads, usizes(&p["num_query_heads"]));
    assert_eq!(c.ffn_dims, usizes(&p["ffn_dim"]));
    assert_eq!(c, Config::official(OfficialSize::M450));
}

#[test]
fn lists_present_are_read_even_when_derivation_would_differ() {
    // tiny-gqa stores GQA ratios 2, 3, 4 that num_gqa_groups = 4 could never derive.
    let c = Config::from_file(common::fixture("tiny-gqa/config.json")).expect("config");
    assert_eq!(c.num_query_heads, vec![4, 9, 8]);
    assert_eq!(c.num_kv_heads, vec![2, 3, 2]);
    // Each branch of make_divisible: the floor, the 10% correction, plain rounding.
    assert_eq!(c.ffn_dims, vec![16, 32, 64]);
    assert_eq!(c.max_context_length, 128);
}

#[test]
fn missing_lists_are_derived_with_rounded_multipliers() {
    let c = Config::from_file(common::fixture("derived/config.json")).expect("config");
    assert_eq!(c.ffn_multipliers, vec![0.5, 1.67, 2.83, 4.0]);
    // 1.67 * 32 = 53.44 -> 48 < 0.9 * 53.44 -> 64 (unrounded 1.6667 would give 48).
    assert_eq!(c.ffn_dims, vec![16, 64, 96, 128]);
    assert_eq!(c.num_query_heads, vec![2, 4, 4, 4]);
    assert_eq!(c.num_kv_heads, vec![1, 2, 2, 2]);
}

#[test]
fn bad_configs_name_the_field() {
    let err = Config::from_json(
        r#"{"vocab_size": 10, "model_dim": 8, "head_dim": 4, "num_transformer_layers": 2,
            "num_query_heads": [2], "num_kv_heads": [1, 1], "ffn_multipliers": [1.0, 1.0]}"#,
    )
    .expect_err("one entry for two layers");
    let msg = err.to_string();
    assert!(
        msg.contains("num_query_heads") && msg.contains("expected 2"),
        "{msg}"
    );

    let err = Config::from_json(r#"{"vocab_size": 10}"#).expect_err("missing fields");
    assert!(err.to_string().contains("model_dim"), "{err}");

    let err = Config::from_json(
        r#"{"vocab_size": 10, "model_dim": 8, "head_dim": 4, "num_transformer_layers": 1,
            "num_query_heads": [3], "num_kv_heads": [2], "ffn_multipliers": [1.0]}"#,
    )
    .expect_err("3 heads over 2 kv heads");
    assert!(err.to_string().contains("layer 0"), "{err}");
}
