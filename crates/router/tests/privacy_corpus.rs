//! Precision and recall of the privacy detector per category, measured on a labelled corpus
//! (`tests/corpus/privacy.jsonl`): positives for every category in several formats and
//! languages, and hard negatives that must find nothing (order numbers, ISBNs, versions,
//! timestamps, UUIDs and hashes, numbers that fail their checksum, code that handles secrets,
//! prose that mentions a topic in general terms).
//!
//! A line counts per category: found and expected is a true positive, found and not expected
//! a false positive, expected and not found a false negative. Impersonal topic mentions are
//! not findings (they are not private and never leave a score above the mention cap).
//!
//! `cargo test -p elmroute-router --test privacy_corpus -- --nocapture` prints the table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use elmroute_core::ChatRequest;
use elmroute_router::PrivacyDetector;
use serde::Deserialize;

#[derive(Deserialize)]
struct Line {
    text: String,
    expect: Vec<String>,
    lang: String,
    /// `holdout` for lines written after the detector was tuned on the rest and measured
    /// before any further change.
    #[serde(default)]
    set: Option<String>,
}

/// Kinds validated by a checksum: held to a higher recall.
const CHECKSUM: &[&str] = &["card", "iban"];
const RECALL_CHECKSUM: f64 = 0.97;
const RECALL_OTHER: f64 = 0.90;
const NEGATIVE_FP_MAX: f64 = 0.03;

fn corpus() -> Vec<Line> {
    read_corpus(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/privacy.jsonl"
    ))
}

/// Lines of a JSON-lines corpus file at `path`.
fn read_corpus(path: &str) -> Vec<Line> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}:{}: {e}", i + 1)))
        .collect()
}

#[derive(Default)]
struct Counts {
    tp: usize,
    fp: usize,
    fn_: usize,
}

/// The table for `lines`, and the bars they miss.
fn evaluate(detector: &PrivacyDetector, lines: &[&Line]) -> (String, Vec<String>, Vec<String>) {
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut negatives = 0;
    let mut negative_hits = 0;
    let mut misses = Vec::new();
    let mut languages = BTreeSet::new();
    for line in lines {
        languages.insert(line.lang.clone());
        let report = detector.scan(&ChatRequest::user(line.text.clone()));
        let found: BTreeSet<String> = report
            .categories
            .iter()
            .map(|c| c.category.clone())
            .collect();
        let expected: BTreeSet<String> = line.expect.iter().cloned().collect();
        for c in expected.union(&found) {
            let e = counts.entry(c.clone()).or_default();
            match (expected.contains(c), found.contains(c)) {
                (true, true) => e.tp += 1,
                (false, true) => e.fp += 1,
                (true, false) => e.fn_ += 1,
                (false, false) => {}
            }
        }
        if expected.is_empty() {
            negatives += 1;
            if !found.is_empty() {
                negative_hits += 1;
            }
        }
        if expected != found {
            misses.push(format!(
                "  [{}] expected {:?}, found {:?}: {}",
                line.lang, expected, found, line.text
            ));
        }
    }
    let mut table = String::from("category        lines  tp  fp  fn  precision  recall  bar\n");
    let mut failures = Vec::new();
    for (category, c) in &counts {
        let precision = c.tp as f64 / (c.tp + c.fp).max(1) as f64;
        let recall = c.tp as f64 / (c.tp + c.fn_).max(1) as f64;
        let bar = if CHECKSUM.contains(&category.as_str()) {
            RECALL_CHECKSUM
        } else {
            RECALL_OTHER
        };
        let expected_lines = c.tp + c.fn_;
        table.push_str(&format!(
            "{category:<15} {expected_lines:>5} {:>3} {:>3} {:>3}  {precision:>9.3}  {recall:>6.3}  {bar:.2}\n",
            c.tp, c.fp, c.fn_
        ));
        if expected_lines > 0 && recall < bar {
            failures.push(format!("{category}: recall {recall:.3} < {bar}"));
        }
        if expected_lines == 0 {
            failures.push(format!(
                "{category}: found but never expected ({} lines)",
                c.fp
            ));
        }
    }
    let fp_rate = negative_hits as f64 / negatives.max(1) as f64;
    table.push_str(&format!(
        "negatives: {negatives} lines, {negative_hits} with a finding ({:.1}%, at most {:.0}%)\n",
        fp_rate * 100.0,
        NEGATIVE_FP_MAX * 100.0
    ));
    table.push_str(&format!(
        "lines: {}, languages {:?}\n",
        lines.len(),
        languages
    ));
    if fp_rate > NEGATIVE_FP_MAX {
        failures.push(format!("negatives: {:.1}% with a finding", fp_rate * 100.0));
    }
    (table, failures, misses)
}

#[test]
fn precision_and_recall_per_category_meet_the_bars() {
    let detector = PrivacyDetector::new();
    let lines = corpus();
    assert!(lines.len() >= 300, "the corpus has {} lines", lines.len());
    let all: Vec<&Line> = lines.iter().collect();
    let (table, failures, misses) = evaluate(&detector, &all);
    println!("whole corpus\n{table}");
    let holdout: Vec<&Line> = lines
        .iter()
        .filter(|l| l.set.as_deref() == Some("holdout"))
        .collect();
    if !holdout.is_empty() {
        let (held, _, _) = evaluate(&detector, &holdout);
        println!("held-out lines only\n{held}");
    }
    if !misses.is_empty() {
        println!("lines where found != expected:\n{}", misses.join("\n"));
    }
    assert!(failures.is_empty(), "{}\n{table}", failures.join("\n"));
}

/// Independently written held-out sets, measured against the same bars as the main corpus:
/// `tests/corpus/privacy_heldout2.jsonl` (written before its first measurement; the detector
/// was then fixed for the general causes of its misses) and `privacy_heldout3.jsonl`
/// (written after those fixes and measured before any further change). They measure how the
/// detector generalises, so each table is printed with every recall bar, but only the bars
/// that guard against over-eager rules fail the test: the share of negative lines with a
/// finding and categories found where none is expected. Recall misses are listed.
#[test]
fn held_out_sets_keep_negatives_clean() {
    let detector = PrivacyDetector::new();
    let mut guards = Vec::new();
    for (name, min_lines) in [("privacy_heldout2", 200), ("privacy_heldout3", 100)] {
        let path = format!("{}/tests/corpus/{name}.jsonl", env!("CARGO_MANIFEST_DIR"));
        let lines = read_corpus(&path);
        assert!(lines.len() >= min_lines, "{name} has {} lines", lines.len());
        let all: Vec<&Line> = lines.iter().collect();
        let (table, failures, misses) = evaluate(&detector, &all);
        println!("{name}\n{table}");
        if !misses.is_empty() {
            println!("lines where found != expected:\n{}\n", misses.join("\n"));
        }
        let (recall, guard): (Vec<String>, Vec<String>) =
            failures.into_iter().partition(|f| f.contains(": recall "));
        if !recall.is_empty() {
            println!("below the recall bar:\n{}\n", recall.join("\n"));
        }
        guards.extend(guard.into_iter().map(|g| format!("{name}: {g}")));
    }
    assert!(guards.is_empty(), "{}", guards.join("\n"));
}
