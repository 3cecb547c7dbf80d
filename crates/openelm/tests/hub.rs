//! The `hub` feature: models found in a Hugging Face cache without the network, and a clear
//! error when the hub cannot be reached.
#![cfg(feature = "hub")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use elmroute_openelm::hub::{self, HubOptions};
use elmroute_openelm::{Error, LoadOptions, OpenElm};

/// Lays out `models--<org>--<name>/{refs/main, snapshots/<rev>/...}` as the hub clients do.
fn fake_cache(root: &std::path::Path, repo: &str, files: &[(&str, std::path::PathBuf)]) {
    let folder = root.join(format!("models--{}", repo.replace('/', "--")));
    let rev = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(folder.join("refs")).expect("refs");
    std::fs::write(folder.join("refs/main"), rev).expect("ref");
    let snap = folder.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).expect("snapshot");
    for (name, src) in files {
        std::fs::copy(src, snap.join(name)).expect("copy");
    }
}

#[test]
fn a_cached_model_is_found_offline_and_loads() {
    let tmp = tempfile::tempdir().expect("tmp");
    fake_cache(
        tmp.path(),
        "apple/OpenELM-tiny",
        &[
            ("config.json", common::fixture("tiny-gqa/config.json")),
            (
                "model.safetensors",
                common::fixture("tiny-gqa/model.safetensors"),
            ),
        ],
    );
    fake_cache(
        tmp.path(),
        hub::DEFAULT_TOKENIZER_REPO,
        &[(
            "tokenizer.json",
            common::fixture("tokenizer/tokenizer.json"),
        )],
    );
    let opts = HubOptions {
        cache_dir: Some(tmp.path().to_path_buf()),
        endpoint: Some("http://127.0.0.1:9".into()),
        ..HubOptions::default()
    };
    let files = hub::cached("apple/OpenELM-tiny", &opts).expect("in cache");
    assert!(files.tokenizer.ends_with("tokenizer.json"));
    // fetch() answers from the cache without touching the (unreachable) endpoint.
    let fetched = hub::fetch("apple/OpenELM-tiny", &opts, |_| {}).expect("cached fetch");
    assert_eq!(fetched, files);
    let engine = OpenElm::from_files(files, LoadOptions::default()).expect("engine");
    assert_eq!(engine.tokenizer().map(|t| t.vocab_size()), Some(384));
}

#[test]
fn an_unreachable_hub_names_model_cache_and_the_local_alternative() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = HubOptions {
        cache_dir: Some(tmp.path().to_path_buf()),
        // A closed port on loopback: refused at once, no traffic leaves the machine.
        endpoint: Some("http://127.0.0.1:9".into()),
        ..HubOptions::default()
    };
    let err = hub::fetch("apple/OpenELM-270M-Instruct", &opts, |_| {}).expect_err("offline");
    assert!(matches!(err, Error::Hub { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("apple/OpenELM-270M-Instruct"), "{msg}");
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    assert!(msg.contains("from_dir"), "{msg}");
}
