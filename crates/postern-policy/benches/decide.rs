//! decide() at 10, 1,000 and 10,000 opt-out rules, and normalize_path.
//!
//! The target is <= 1 µs per decide at 10,000 rules: the matcher indexes
//! rules by (route, method) and path, so the cost should not grow with the
//! number of rules.

// Bench code: a broken fixture should stop the run loudly.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use postern_policy::{
    decide, normalize_path, Config, Factor, FactorSet, Identity, Policy, RequestFacts, Verdict,
};
use time::macros::datetime;
use time::OffsetDateTime;

const NOW: OffsetDateTime = datetime!(2026-12-01 00:00:00 UTC);
const ROUTES: usize = 20;

/// A config with `rules` opt-outs spread over 20 routes (`/svc0` ..), each
/// rule with an exact path and a `/**` prefix, varied methods, some with
/// source CIDRs.
fn config_text(rules: usize) -> String {
    let mut t = String::from(
        r#"
[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]
[jwt]
issuer = "https://issuer.example"
audience = "postern"
jwks_file = "jwks.json"
algorithms = ["ES256"]
[audit]
path = "audit.jsonl"
signing_key = "audit.key"
[[upstream]]
name = "echo"
url = "http://127.0.0.1:9000"
"#,
    );
    for r in 0..ROUTES {
        t.push_str(&format!(
            "[[route]]\nid = \"svc{r}\"\nhost = \"*\"\npath_prefix = \"/svc{r}\"\nupstream = \"echo\"\nrequire = [[\"mtls\"], [\"jwt\"]]\n"
        ));
    }
    let methods = [
        "[\"GET\", \"HEAD\"]",
        "[\"POST\"]",
        "[\"GET\"]",
        "[\"PUT\", \"PATCH\"]",
    ];
    for i in 0..rules {
        let r = i % ROUTES;
        let cidrs = if i % 3 == 0 {
            "source_cidrs = [\"10.0.0.0/8\", \"127.0.0.1\"]\n"
        } else {
            ""
        };
        t.push_str(&format!(
            "[[optout]]\nid = \"rule{i}\"\nroute = \"svc{r}\"\nmethods = {}\npaths = [\"/svc{r}/team{}/item{i}/health\", \"/svc{r}/team{}/public{i}/**\"]\nwaive = \"all\"\nowner = \"team\"\nreason = \"bench\"\nexpires = 2027-01-31T00:00:00Z\n{cidrs}",
            methods[i % methods.len()],
            i % 50,
            i % 50,
        ));
    }
    t
}

fn policy(rules: usize) -> Policy {
    let config = Config::parse(Path::new("bench.toml"), &config_text(rules)).unwrap();
    match Policy::compile(&config, NOW) {
        Ok((p, _)) => p,
        Err(d) => panic!("{d:?}"),
    }
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    let peer = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let anonymous = Identity::anonymous();
    let alice = Identity {
        principal: Some("alice".into()),
        verified: FactorSet::EMPTY.with(Factor::Mtls),
        invalid: vec![],
        grants: vec![],
        acr: None,
        amr: vec![],
        consents: vec![],
    };
    for rules in [10usize, 1_000, 10_000] {
        let p = policy(rules);
        // A rule in the middle of the file: GET on its exact path.
        let i = (rules / 2) / 4 * 4; // a GET/HEAD rule
        let r = i % ROUTES;
        let hit = normalize_path(&format!("/svc{r}/team{}/item{i}/health", i % 50)).unwrap();
        let facts = RequestFacts {
            method: "GET",
            host: "app.example",
            path: &hit,
            peer,
            upgrade: false,
            risk: 0,
        };
        assert!(decide(&p, &facts, &anonymous, NOW).is_optout());
        group.bench_with_input(BenchmarkId::new("optout_match", rules), &rules, |b, _| {
            b.iter(|| {
                decide(
                    black_box(&p),
                    black_box(&facts),
                    black_box(&anonymous),
                    black_box(NOW),
                )
            })
        });

        // Below a `/**` prefix: walks the trie.
        let deep = normalize_path(&format!("/svc{r}/team{}/public{i}/a/b/c.css", i % 50)).unwrap();
        let facts = RequestFacts {
            method: "GET",
            host: "app.example",
            path: &deep,
            peer,
            upgrade: false,
            risk: 0,
        };
        assert!(decide(&p, &facts, &anonymous, NOW).is_optout());
        group.bench_with_input(
            BenchmarkId::new("optout_prefix_match", rules),
            &rules,
            |b, _| {
                b.iter(|| {
                    decide(
                        black_box(&p),
                        black_box(&facts),
                        black_box(&anonymous),
                        black_box(NOW),
                    )
                })
            },
        );

        // Authenticated, on a path no rule lists.
        let miss = normalize_path(&format!("/svc{r}/api/v1/orders/42")).unwrap();
        let facts = RequestFacts {
            method: "GET",
            host: "app.example",
            path: &miss,
            peer,
            upgrade: false,
            risk: 0,
        };
        assert!(matches!(
            decide(&p, &facts, &alice, NOW).verdict,
            Verdict::Allow { .. }
        ));
        group.bench_with_input(
            BenchmarkId::new("authenticated_no_optout", rules),
            &rules,
            |b, _| {
                b.iter(|| {
                    decide(
                        black_box(&p),
                        black_box(&facts),
                        black_box(&alice),
                        black_box(NOW),
                    )
                })
            },
        );

        // Anonymous, on a path no rule lists: a challenge.
        assert!(matches!(
            decide(&p, &facts, &anonymous, NOW).verdict,
            Verdict::Challenge { .. }
        ));
        group.bench_with_input(
            BenchmarkId::new("anonymous_challenge", rules),
            &rules,
            |b, _| {
                b.iter(|| {
                    decide(
                        black_box(&p),
                        black_box(&facts),
                        black_box(&anonymous),
                        black_box(NOW),
                    )
                })
            },
        );
    }
    group.finish();
}

fn bench_normalize(c: &mut Criterion) {
    c.bench_function("normalize_path/typical", |b| {
        b.iter(|| normalize_path(black_box("/api/v1/users/42/orders/%7Eitems;v=1")))
    });
    c.bench_function("normalize_path/dots_and_escapes", |b| {
        b.iter(|| normalize_path(black_box("/static/./img//../css/%61pp%2Dv2.css")))
    });
}

criterion_group!(benches, bench_decide, bench_normalize);
criterion_main!(benches);
