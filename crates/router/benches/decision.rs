//! The cost of one routing decision (privacy scan, complexity features, device signals,
//! rules and score) for prompts of 100 B to 100 KB.
//!
//! `cargo bench -p elmroute-router --bench decision`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use elmroute_core::{ChatRequest, DeviceState};
use elmroute_router::{DeclaredBackend, Policy, Router};

/// Realistic mixed text: prose with a little code, maths and one email address per KB.
fn prompt(bytes: usize) -> String {
    let unit = "Please explain why the build fails after I upgraded the compiler; the error \
                mentions a trait bound on line 42 and x^2 + 3 = 12 appears in the test. Then \
                reply to ops@example.com with a short summary. ";
    let mut s = String::with_capacity(bytes + unit.len());
    while s.len() < bytes {
        s.push_str(unit);
    }
    s.truncate(bytes);
    s
}

fn decision(c: &mut Criterion) {
    let router = Router::builder()
        .policy(Policy::default())
        .local(DeclaredBackend::local("openelm-270m", 2048))
        .remote(DeclaredBackend::remote("cloud"))
        .device(DeviceState::default())
        .build()
        .expect("router");
    let mut group = c.benchmark_group("decide");
    for size in [100usize, 1_000, 10_000, 100_000] {
        let req = ChatRequest::user(prompt(size));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &req, |b, req| {
            b.iter(|| black_box(router.decide(black_box(req)).expect("decide")))
        });
    }
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
