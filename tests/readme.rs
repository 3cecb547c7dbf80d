//! The README stays true: its library example is the compiled `examples/quickstart.rs`, its
//! policy reference names every key a policy has, and its two commands are the ones CI runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use elmroute::Policy;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn the_library_example_is_the_compiled_quickstart() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart.rs"
    ))
    .unwrap();
    let code = &example[example.find("use elmroute").unwrap()..];
    assert!(
        readme().contains(&format!("```rust\n{code}```")),
        "README's library example differs from examples/quickstart.rs"
    );
    assert!(
        code.lines().count() <= 30,
        "the example is meant to stay short"
    );
}

/// Every dotted key of a TOML table.
fn keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if key != "remote.headers" => keys(t, &key, out),
            _ => out.push(key),
        }
    }
}

#[test]
fn the_policy_reference_names_every_key() {
    // Optional keys left unset are not written: set each so every key appears.
    let policy = Policy::from_toml(
        "[privacy.topics]\nhealth = [\"ab\"]\nfinances = [\"ab\"]\nlegal = [\"ab\"]\nsexuality = [\"ab\"]\nreligion = [\"ab\"]\nwork = [\"ab\"]\n\n[[privacy.patterns]]\nregex = 'X\\d+'\ncategory = \"employee_id\"\n\n[remote]\nbase_url = \"http://h/v1\"\nmodel = \"m\"\nname = \"n\"\ncontext_window = 1\nheaders = { a = \"b\" }\n",
        "t",
    )
    .unwrap();
    let table: toml::Table = toml::from_str(&policy.to_toml()).unwrap();
    let mut all = Vec::new();
    keys(&table, "", &mut all);
    assert!(all.len() > 30, "{all:?}");
    let text = readme();
    let missing: Vec<_> = all
        .iter()
        .filter(|k| !text.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's policy reference lacks {missing:?}"
    );
}

#[test]
fn ci_runs_the_readme_test_command() {
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    let text = readme();
    for command in [
        "cargo test --workspace",
        "cargo run --release --example assistant -- --demo",
    ] {
        assert!(
            text.contains(&format!("\n{command}\n")),
            "README lacks `{command}`"
        );
    }
    assert!(ci.lines().any(|l| l.trim() == "cargo test --workspace"));
}
