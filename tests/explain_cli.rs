//! The assistant's `--explain` contract, run as a real process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Output;

use serde_json::Value;

mod common;
use common::assistant;

fn run(args: &[&str]) -> Output {
    assistant().args(args).output().unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const HARD: &str = "Explain step by step how to derive the closed-form solution of least squares, prove it is unbiased, then implement it in Rust with tests.";

#[test]
fn explain_prints_one_json_object_with_the_contract_fields() {
    let v = json(&run(&[
        "--policy",
        "policies/balanced.toml",
        "--explain",
        "What is the capital of France?",
    ]));
    assert_eq!(v["target"], "local");
    assert_eq!(v["mode"], "auto");
    for key in [
        "complexity",
        "privacy",
        "battery",
        "thermal",
        "network",
        "capability",
    ] {
        let x = v["scores"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{key} = {x}");
    }
    assert!(v["rules"].is_array());
    assert_eq!(v["redactions"], 0);
}

#[test]
fn device_flags_change_the_decision() {
    let hard = json(&run(&[
        "--policy",
        "policies/balanced.toml",
        "--explain",
        HARD,
    ]));
    assert_eq!(hard["target"], "cloud");
    let offline = json(&run(&[
        "--policy",
        "policies/balanced.toml",
        "--explain",
        "--offline",
        HARD,
    ]));
    assert_eq!(offline["target"], "local");
    assert_eq!(offline["fallback"]["kind"], "offline_to_local");
    let critical = json(&run(&[
        "--policy",
        "policies/balanced.toml",
        "--explain",
        "--thermal",
        "critical",
        "hello",
    ]));
    assert_eq!(critical["target"], "cloud");
    assert!(
        critical["rules"]
            .as_array()
            .unwrap()
            .contains(&Value::from("thermal_critical"))
    );
    let both = json(&run(&[
        "--policy",
        "policies/balanced.toml",
        "--explain",
        "--thermal",
        "critical",
        "--offline",
        "hello",
    ]));
    assert_eq!(both["target"], "none");
    let low = json(&run(&[
        "--policy",
        "policies/balanced.toml",
        "--explain",
        "--battery",
        "0.05",
        "hello",
    ]));
    assert_eq!(low["target"], "cloud");
    let charging = json(&run(&[
        "--policy",
        "policies/balanced.toml",
        "--explain",
        "--battery",
        "0.05",
        "--charging",
        "hello",
    ]));
    assert_eq!(charging["target"], "local");
}

#[test]
fn explain_reports_redactions_for_the_cloud() {
    let v = json(&run(&[
        "--policy",
        "policies/cloud-first.toml",
        "--explain",
        "Email bob@example.com the summary",
    ]));
    assert_eq!(v["target"], "cloud");
    assert_eq!(v["redactions"], 1);
    assert!(
        v["rules"]
            .as_array()
            .unwrap()
            .contains(&Value::from("redact"))
    );
}

#[test]
fn explain_jsonl_prints_one_line_per_input_line_even_for_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"hi\"}\nnot json\n\n{\"prompt\": \"my card is 4111 1111 1111 1111\", \"mode\": \"cloud_only\"}\n",
    )
    .unwrap();
    let out = run(&[
        "--policy",
        "policies/balanced.toml",
        "--explain-jsonl",
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["target"], "local");
    assert_eq!(lines[1]["line"], 2);
    assert!(lines[1]["error"].as_str().unwrap().contains("in.jsonl:2"));
    assert_eq!(lines[2]["target"], "none");
}

#[test]
fn a_broken_policy_fails_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("broken.toml");
    std::fs::write(&policy, "mode = \"auto\"\n[battery]\nlow = 2.0\n").unwrap();
    let out = run(&["--policy", policy.to_str().unwrap(), "--explain", "hi"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.toml:3:") && err.contains("battery.low"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_rejected_with_a_message() {
    let out = run(&["--explain", "--battery", "1.5", "hi"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("from 0 to 1"));
    let out = run(&["--explain", "--thermal", "toasty", "hi"]);
    assert!(!out.status.success());
}
