//! The cost of the privacy signal alone: one scan of a request (every detector: numbers,
//! emails, IPv6/MAC, keys, credentials, birth dates, addresses, topic dictionaries in five
//! languages) and a scan plus redaction, on 1 KB and 100 KB prompts. Two texts: prose with a
//! private value every few dozen bytes, and prose with none. Also the cost of building a
//! detector.
//!
//! `cargo bench -p elmroute-router --bench privacy`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use elmroute_core::ChatRequest;
use elmroute_router::PrivacyDetector;
use elmroute_router::redact::redact;

const PRIVATE: &str = "Hi, it's Dana again. Please email the signed lease to dana.w@example.com \
    and call me on +44 20 7946 0958 if the landlord objects. The deposit came from \
    DE89 3704 0044 0532 0130 00 and my card 4111 1111 1111 1111 was charged twice. I was \
    diagnosed with diabetes in March, so the stairs at 221B Baker Street are hard. Mein \
    Passwort ist Sommer2024! and the server 2001:db8:85a3::8a2e:370:7334 still rejects it. \
    Je suis enceinte et j'ai des dettes. У меня долги по кредитам. DOB: 03/04/1985. ";

const CLEAN: &str = "Please explain why the build fails after I upgraded the compiler; the \
    error mentions a trait bound on line 42 and version 2.10.3 of the parser. Summarise the \
    causes of the 2008 debt crisis in three bullet points, then compare Catholic and \
    Protestant theology in one paragraph. Order 112-4829301-5562210 shipped on 2024-01-15. ";

fn text(unit: &str, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + unit.len());
    while s.len() < bytes {
        s.push_str(unit);
    }
    let mut end = bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

fn privacy(c: &mut Criterion) {
    let detector = PrivacyDetector::new();
    for (name, unit) in [("private", PRIVATE), ("clean", CLEAN)] {
        let mut group = c.benchmark_group(format!("privacy_scan/{name}"));
        for size in [1_000usize, 100_000] {
            let req = ChatRequest::user(text(unit, size));
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::from_parameter(size), &req, |b, req| {
                b.iter(|| black_box(detector.scan(black_box(req))))
            });
        }
        group.finish();
    }
    let mut group = c.benchmark_group("privacy_scan_and_redact/private");
    for size in [1_000usize, 100_000] {
        let req = ChatRequest::user(text(PRIVATE, size));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &req, |b, req| {
            b.iter(|| {
                let report = detector.scan(black_box(req));
                black_box(redact(req, &report.findings))
            })
        });
    }
    group.finish();
}

/// Building a detector (the word automaton over every dictionary, the expressions): paid once
/// per router.
fn build(c: &mut Criterion) {
    c.bench_function("privacy_detector_new", |b| {
        b.iter(|| black_box(PrivacyDetector::new()))
    });
}

criterion_group!(benches, privacy, build);
criterion_main!(benches);
