//! Client certificates issued per second (ECDSA P-256 and Ed25519 CAs, with and without a
//! grant extension, fresh key or CSR), and the per-request identity step.
//!
//! `issue_client_with` includes generating the leaf key; `sign_client_csr` is what the
//! renewal endpoint does (the client brings the key). Certificates with postern extensions
//! are signed twice (see `extension`) and their signature checked once before they leave.

// Bench code: a broken fixture should stop the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use postern_pki::{client_identity, grants_from_cert, Ca, ClientCertRequest, Grant, KeyAlg, Kind};
use time::{Duration, OffsetDateTime};

const TD: &str = "example.org";

fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap()
}

fn grant(now: OffsetDateTime) -> Grant {
    Grant {
        id: "reports-batch".into(),
        rules: vec!["reports-batch".into()],
        waives: vec!["jwt".into()],
        not_after: now + Duration::hours(1),
        reason: "nightly reports batch".into(),
        approved_by: "alice".into(),
    }
}

fn requests(now: OffsetDateTime) -> [(&'static str, ClientCertRequest); 2] {
    let plain = ClientCertRequest::new("batch", Kind::Service, Duration::hours(8));
    let granted = plain.clone().with_grants(vec![grant(now)]);
    [("plain", plain), ("grant", granted)]
}

fn issue(c: &mut Criterion) {
    let now = now();
    let mut group = c.benchmark_group("issue_client");
    group.throughput(Throughput::Elements(1));
    for alg in [KeyAlg::EcdsaP256, KeyAlg::Ed25519] {
        let ca = Ca::generate_root("bench CA", TD, alg, now).unwrap();
        for (label, req) in requests(now) {
            group.bench_function(format!("{alg}/{label}"), |b| {
                b.iter(|| ca.issue_client_with(black_box(&req), now).unwrap())
            });
        }
        // The renewal path: the client's P-256 key arrives in a CSR.
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        for (label, req) in requests(now) {
            group.bench_function(format!("{alg}/csr-{label}"), |b| {
                b.iter(|| ca.sign_client_csr(black_box(&csr), &req, now).unwrap())
            });
        }
    }
    group.finish();
}

fn identity(c: &mut Criterion) {
    let now = now();
    let mut group = c.benchmark_group("per_request");
    for alg in [KeyAlg::EcdsaP256, KeyAlg::Ed25519] {
        let ca = Ca::generate_root("bench CA", TD, alg, now).unwrap();
        let [_, (_, granted)] = requests(now);
        let cert = ca.issue_client_with(&granted, now).unwrap().cert_der;
        group.bench_function(format!("client_identity/{alg}"), |b| {
            b.iter(|| client_identity(black_box(&cert), TD, now).unwrap())
        });
        group.bench_function(format!("grants_from_cert/{alg}"), |b| {
            b.iter(|| grants_from_cert(black_box(&cert)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, issue, identity);
criterion_main!(benches);
