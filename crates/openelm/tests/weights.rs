//! Checkpoint loading: shape, name and dtype checks before allocation, corrupt files, and
//! sharded checkpoints with an index.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use elmroute_openelm::{Checkpoint, Config, DType, Device, Error, Model, Tensor};

const LAYER1_QKV: &str = "transformer.layers.1.attn.qkv_proj.weight";

fn fixture_tensors(name: &str) -> HashMap<String, Tensor> {
    let dir = common::fixture(name);
    let config = Config::from_file(dir.join("config.json")).expect("config");
    let ckpt = Checkpoint::from_dir(&dir).expect("ckpt");
    ckpt.load_all(&config, DType::F32, &Device::Cpu, |_| {})
        .expect("tensors")
}

/// A model directory in `dir` holding `tensors` and tiny-gqa's config.
fn write_dir(dir: &Path, tensors: &HashMap<String, Tensor>) {
    std::fs::copy(
        common::fixture("tiny-gqa/config.json"),
        dir.join("config.json"),
    )
    .expect("copy config");
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).expect("save");
}

fn open_and_validate(dir: &Path) -> Result<(), Error> {
    let config = Config::from_file(dir.join("config.json"))?;
    Checkpoint::from_dir(dir)?.validate(&config)
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = fixture_tensors("tiny-gqa");
    // Layer 1 has 9 query and 3 KV heads of 16: (9 + 6) * 16 = 240 rows. Store 224.
    let qkv = t[LAYER1_QKV].narrow(0, 0, 224).expect("narrow");
    t.insert(LAYER1_QKV.into(), qkv);
    write_dir(tmp.path(), &t);
    let err = open_and_validate(tmp.path()).expect_err("shape mismatch");
    assert!(matches!(err, Error::TensorShape { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(LAYER1_QKV), "{msg}");
    assert!(
        msg.contains("[224, 32]") && msg.contains("[240, 32]"),
        "{msg}"
    );
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = fixture_tensors("tiny-gqa");
    t.remove("transformer.layers.2.ffn.proj_2.weight");
    write_dir(tmp.path(), &t);
    let err = open_and_validate(tmp.path()).expect_err("missing");
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingTensor { .. }), "{err:?}");
    assert!(
        msg.contains("transformer.layers.2.ffn.proj_2.weight") && msg.contains("[32, 64]"),
        "{msg}"
    );
}

#[test]
fn tensor_the_config_has_no_place_for_is_an_error() {
    // A checkpoint with more layers than the config says.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = fixture_tensors("tiny-gqa");
    let extra = t["transformer.layers.2.attn_norm.weight"].clone();
    t.insert("transformer.layers.3.attn_norm.weight".into(), extra);
    write_dir(tmp.path(), &t);
    let err = open_and_validate(tmp.path()).expect_err("unexpected");
    assert!(matches!(err, Error::UnexpectedTensor { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("transformer.layers.3.attn_norm.weight"),
        "{err}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = fixture_tensors("tiny-gqa");
    let norm = t["transformer.norm.weight"]
        .to_dtype(DType::F64)
        .expect("f64");
    t.insert("transformer.norm.weight".into(), norm);
    write_dir(tmp.path(), &t);
    let err = open_and_validate(tmp.path()).expect_err("f64");
    assert!(matches!(err, Error::TensorDtype { .. }), "{err:?}");
    assert!(err.to_string().contains("transformer.norm.weight"), "{err}");
}

#[test]
fn truncated_file_fails_at_open_naming_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bytes = std::fs::read(common::fixture("tiny-gqa/model.safetensors")).expect("read");
    let path = tmp.path().join("model.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
    let err = Checkpoint::open(std::slice::from_ref(&path)).expect_err("truncated");
    assert!(matches!(err, Error::Safetensors { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn garbage_file_fails_at_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("model.safetensors");
    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").expect("write");
    assert!(matches!(
        Checkpoint::open(std::slice::from_ref(&path)),
        Err(Error::Safetensors { .. })
    ));
    std::fs::write(&path, b"abc").expect("write");
    assert!(Checkpoint::open(std::slice::from_ref(&path)).is_err());
}

#[test]
fn directory_without_weights_says_what_is_missing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let err = Checkpoint::from_dir(tmp.path()).expect_err("empty dir");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn sharded_checkpoint_loads_and_gives_the_same_logits() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = fixture_tensors("tiny-gqa");
    std::fs::copy(
        common::fixture("tiny-gqa/config.json"),
        tmp.path().join("config.json"),
    )
    .expect("config");
    // Layer 0 and the embeddings in shard 1, the rest in shard 2.
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (name, tensor) in &t {
        let first = name.starts_with("transformer.layers.0.") || name.contains("token_embeddings");
        let file = if first {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        weight_map.insert(name.clone(), file.into());
        if first { &mut a } else { &mut b }.insert(name.clone(), tensor.clone());
    }
    candle_core::safetensors::save(&a, tmp.path().join("model-00001-of-00002.safetensors"))
        .expect("shard 1");
    candle_core::safetensors::save(&b, tmp.path().join("model-00002-of-00002.safetensors"))
        .expect("shard 2");
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .expect("index");

    let config = Config::from_file(tmp.path().join("config.json")).expect("config");
    let ckpt = Checkpoint::from_dir(tmp.path()).expect("sharded");
    assert_eq!(ckpt.files().count(), 2);
    let mut sharded = Model::load(&config, &ckpt, DType::F32, &Device::Cpu, |_| {}).expect("load");
    let mut single = common::model("tiny-gqa");
    let ids = Tensor::new(&[1u32, 5, 9, 200], &Device::Cpu).expect("ids");
    let x = sharded.forward(&ids, 0).expect("sharded forward");
    let y = single.forward(&ids, 0).expect("single forward");
    let diff = (x - y)
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar");
    assert_eq!(diff, 0.0);

    // An index naming a shard that is not there.
    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).expect("rm");
    let err = Checkpoint::from_dir(tmp.path()).expect_err("missing shard");
    assert!(matches!(err, Error::ShardIndex { .. }), "{err:?}");
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn load_reports_progress_up_to_one() {
    let dir = common::fixture("tiny-gqa");
    let config = Config::from_file(dir.join("config.json")).expect("config");
    let ckpt = Checkpoint::from_dir(&dir).expect("ckpt");
    let mut seen = Vec::new();
    Model::load(&config, &ckpt, DType::F32, &Device::Cpu, |p| seen.push(p)).expect("load");
    assert_eq!(seen.len(), config.expected_tensors().len());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "monotonic: {seen:?}");
    assert!((seen.last().copied().unwrap_or(0.0) - 1.0).abs() < 1e-6);
}

#[test]
fn config_and_checkpoint_of_different_models_do_not_load() {
    // hd128's config against tiny-gqa's weights: the first mismatch is named.
    let config = Config::from_file(common::fixture("hd128/config.json")).expect("config");
    let ckpt = Checkpoint::from_dir(common::fixture("tiny-gqa")).expect("ckpt");
    let err = Model::load(&config, &ckpt, DType::F32, &Device::Cpu, |_| {}).expect_err("mismatch");
    assert!(matches!(err, Error::TensorShape { .. }), "{err:?}");
}

#[test]
fn rotary_buffers_and_a_tied_lm_head_copy_are_ignored() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = fixture_tensors("tiny-gqa");
    let embed = t["transformer.token_embeddings.weight"].clone();
    t.insert("lm_head.weight".into(), embed);
    let inv_freq = Tensor::ones(8, DType::F32, &Device::Cpu).expect("inv_freq");
    t.insert(
        "transformer.layers.0.attn.pos_embedding.inv_freq".into(),
        inv_freq,
    );
    write_dir(tmp.path(), &t);
    open_and_validate(tmp.path()).expect("harmless extras are accepted");
    // An lm_head of another shape is not a copy of the embeddings: still an error.
    let bad = Tensor::ones((10, 32), DType::F32, &Device::Cpu).expect("bad head");
    t.insert("lm_head.weight".into(), bad);
    write_dir(tmp.path(), &t);
    let err = open_and_validate(tmp.path()).expect_err("unexpected head");
    assert!(err.to_string().contains("lm_head.weight"), "{err}");
}

#[test]
fn a_single_file_wins_over_a_stale_shard_index() {
    let tmp = tempfile::tempdir().expect("tmp");
    write_dir(tmp.path(), &fixture_tensors("tiny-gqa"));
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"transformer.norm.weight": "model-00001-of-00002.safetensors"}}"#,
    )
    .expect("index");
    open_and_validate(tmp.path()).expect("the complete single file is used");
}
