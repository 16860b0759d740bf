//! Properties of `decide()` over random policies and requests.

// Test code: a failed fixture should stop the test loudly.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use crate::common::{render, NOW, PREAMBLE};
use postern_policy::policy::PathPattern;
use postern_policy::{
    decide, normalize_path, AuthVia, Config, Factor, FactorSet, Identity, InvalidCredential,
    Policy, RequestFacts, Verdict,
};
use proptest::prelude::*;
use time::{Duration, OffsetDateTime};

const SEGMENTS: [&str; 6] = ["a", "b", "api", "healthz", "static", "x"];
const METHODS: [&str; 3] = ["GET", "POST", "HEAD"];
const REQUEST_METHODS: [&str; 5] = ["GET", "POST", "HEAD", "PUT", "get"];
const PEERS: [&str; 4] = ["10.1.2.3", "127.0.0.1", "192.0.2.1", "::1"];

#[derive(Debug, Clone)]
struct RouteSpec {
    host: &'static str,
    prefix: Vec<&'static str>,
    require: Vec<u8>,
}

#[derive(Debug, Clone)]
struct RuleSpec {
    route: usize,
    methods: Vec<&'static str>,
    /// (extra segments below the route prefix, is `/**`)
    paths: Vec<(Vec<&'static str>, bool)>,
    waive: u8,
    expires_days: i64,
    cidrs: Option<Vec<&'static str>>,
    upgrade: bool,
}

#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    host: &'static str,
    path: String,
    peer: &'static str,
    upgrade: bool,
    verified: u8,
    principal: Option<&'static str>,
    invalid: Option<u8>,
}

fn seg() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&SEGMENTS[..])
}

fn route_spec() -> impl Strategy<Value = RouteSpec> {
    (
        proptest::sample::select(vec!["*", "h.example"]),
        proptest::collection::vec(seg(), 0..3),
        proptest::collection::vec(1u8..=3, 1..3),
    )
        .prop_map(|(host, prefix, require)| RouteSpec {
            host,
            prefix,
            require,
        })
}

fn rule_spec(with_optouts: bool) -> impl Strategy<Value = Vec<RuleSpec>> {
    let one = (
        0usize..4,
        proptest::sample::subsequence(METHODS.to_vec(), 1..=3),
        proptest::collection::vec(
            (proptest::collection::vec(seg(), 1..3), any::<bool>()),
            1..3,
        ),
        1u8..=3,
        1i64..=80,
        proptest::option::of(proptest::sample::subsequence(
            vec!["10.0.0.0/8", "127.0.0.1", "::1"],
            1..=2,
        )),
        any::<bool>(),
    )
        .prop_map(
            |(route, methods, paths, waive, expires_days, cidrs, upgrade)| RuleSpec {
                route,
                methods,
                paths,
                waive,
                expires_days,
                cidrs,
                upgrade,
            },
        );
    proptest::collection::vec(one, if with_optouts { 0..8 } else { 0..1 }).prop_map(move |v| {
        if with_optouts {
            v
        } else {
            Vec::new()
        }
    })
}

fn request() -> impl Strategy<Value = Request> {
    (
        proptest::sample::select(&REQUEST_METHODS[..]),
        proptest::sample::select(vec!["h.example", "other.example"]),
        (proptest::collection::vec(seg(), 0..5), any::<bool>()),
        proptest::sample::select(&PEERS[..]),
        any::<bool>(),
        0u8..=3,
        proptest::option::of(proptest::sample::select(vec!["alice", "bob"])),
        proptest::option::of(1u8..=3),
    )
        .prop_map(
            |(method, host, (segs, slash), peer, upgrade, verified, principal, invalid)| {
                let mut path = format!("/{}", segs.join("/"));
                if slash && !segs.is_empty() {
                    path.push('/');
                }
                Request {
                    method,
                    host,
                    path,
                    peer,
                    upgrade,
                    verified,
                    principal,
                    invalid,
                }
            },
        )
}

fn factors(bits: u8) -> FactorSet {
    let mut s = FactorSet::EMPTY;
    if bits & 1 != 0 {
        s.insert(Factor::Mtls);
    }
    if bits & 2 != 0 {
        s.insert(Factor::Jwt);
    }
    s
}

fn factor_list(bits: u8) -> String {
    factors(bits)
        .iter()
        .map(|f| format!("{:?}", f.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn prefix_path(segs: &[&str]) -> String {
    format!("/{}", segs.join("/"))
}

/// Render routes and rules as config text; duplicate (host, prefix) routes
/// are dropped (that is a compile error, tested elsewhere).
fn render_config(routes: &[RouteSpec], rules: &[RuleSpec]) -> (String, usize) {
    let mut text = PREAMBLE.to_string();
    let mut seen = HashSet::new();
    let mut kept: Vec<&RouteSpec> = Vec::new();
    for r in routes {
        if seen.insert((r.host, r.prefix.clone())) {
            kept.push(r);
        }
    }
    for (i, r) in kept.iter().enumerate() {
        let require: Vec<String> = r
            .require
            .iter()
            .map(|b| format!("[{}]", factor_list(*b)))
            .collect();
        text.push_str(&format!(
            "[[route]]\nid = \"r{i}\"\nhost = \"{}\"\npath_prefix = \"{}\"\nupstream = \"echo\"\nrequire = [{}]\nidentities = {}\n",
            r.host,
            prefix_path(&r.prefix),
            require.join(", "),
            if i % 2 == 0 { "[\"alice\"]" } else { "[\"alice\", \"bob\"]" },
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        let Some(route) = kept.get(rule.route % kept.len().max(1)) else {
            continue;
        };
        let route_index = rule.route % kept.len();
        let paths: Vec<String> = rule
            .paths
            .iter()
            .map(|(extra, prefix)| {
                let mut segs = route.prefix.clone();
                segs.extend(extra);
                let p = prefix_path(&segs);
                if *prefix {
                    format!("{:?}", format!("{p}/**"))
                } else {
                    format!("{p:?}")
                }
            })
            .collect();
        let methods: Vec<String> = rule.methods.iter().map(|m| format!("{m:?}")).collect();
        let waive = if rule.waive == 3 {
            "\"all\"".to_string()
        } else {
            format!("[{}]", factor_list(rule.waive))
        };
        let expires = NOW + Duration::days(rule.expires_days);
        let expires = expires
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        text.push_str(&format!(
            "[[optout]]\nid = \"o{i}\"\nroute = \"r{route_index}\"\nmethods = [{}]\npaths = [{}]\nwaive = {waive}\nowner = \"t\"\nreason = \"r\"\nexpires = {expires}\nallow_upgrade = {}\n",
            methods.join(", "),
            paths.join(", "),
            rule.upgrade,
        ));
        if let Some(cidrs) = &rule.cidrs {
            let c: Vec<String> = cidrs.iter().map(|c| format!("{c:?}")).collect();
            text.push_str(&format!("source_cidrs = [{}]\n", c.join(", ")));
        }
    }
    (text, kept.len())
}

fn compile(routes: &[RouteSpec], rules: &[RuleSpec]) -> Policy {
    let (text, _) = render_config(routes, rules);
    let config = Config::parse(Path::new("prop.toml"), &text)
        .unwrap_or_else(|d| panic!("{}\n{text}", render(&d)));
    match Policy::compile(&config, NOW) {
        Ok((p, _)) => p,
        Err(d) => panic!("{}\n{text}", render(&d)),
    }
}

fn identity(req: &Request) -> Identity {
    Identity {
        principal: req.principal.map(str::to_string),
        verified: factors(req.verified),
        invalid: req
            .invalid
            .map(|bits| {
                factors(bits)
                    .iter()
                    .map(|factor| InvalidCredential {
                        factor,
                        reason: "bad".into(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        grants: vec![],
        acr: None,
        amr: vec![],
        consents: vec![],
    }
}

/// The random requests plus, for every rule, requests aimed at it: one that
/// matches a listed method and pattern, and near misses (another method, a
/// sibling path, the prefix itself).
fn with_targeted(policy: &Policy, reqs: &[Request]) -> Vec<Request> {
    let mut out = reqs.to_vec();
    for (i, rule) in policy.optouts().enumerate() {
        let Some(base) = reqs.get(i % reqs.len().max(1)) else {
            break;
        };
        let method = rule
            .methods()
            .get(i % rule.methods().len())
            .map(String::as_str)
            .unwrap_or("GET");
        let method = METHODS
            .iter()
            .copied()
            .find(|m| *m == method)
            .unwrap_or("GET");
        let Some(pattern) = rule.paths().get(i % rule.paths().len()) else {
            continue;
        };
        let (hit, miss) = match pattern {
            PathPattern::Exact(p) => (p.to_string(), format!("{p}x")),
            PathPattern::Prefix(p) => (
                format!("{p}/{}", SEGMENTS[i % SEGMENTS.len()]),
                p.to_string(),
            ),
        };
        let host = "h.example";
        out.push(Request {
            method,
            host,
            path: hit.clone(),
            ..base.clone()
        });
        out.push(Request {
            method: "PUT",
            host,
            path: hit,
            ..base.clone()
        });
        out.push(Request {
            method,
            host,
            path: miss,
            ..base.clone()
        });
    }
    out
}

fn run(
    policy: &Policy,
    req: &Request,
    id: &Identity,
    now: OffsetDateTime,
) -> postern_policy::Decision {
    let path = normalize_path(&req.path).unwrap();
    let peer: IpAddr = req.peer.parse().unwrap();
    let facts = RequestFacts {
        method: req.method,
        host: req.host,
        path: &path,
        peer,
        upgrade: req.upgrade,
        risk: 0,
    };
    decide(policy, &facts, id, now)
}

fn any_now() -> impl Strategy<Value = OffsetDateTime> {
    (0i64..100 * 24 * 3600).prop_map(|s| NOW + Duration::seconds(s))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) Without opt-outs, an anonymous request is never allowed.
    #[test]
    fn default_deny_anonymous_never_allowed_without_optouts(
        routes in proptest::collection::vec(route_spec(), 1..4),
        rules in rule_spec(false),
        reqs in proptest::collection::vec(request(), 1..16),
        now in any_now(),
    ) {
        let policy = compile(&routes, &rules);
        let reqs = with_targeted(&policy, &reqs);
        for req in &reqs {
            let d = run(&policy, req, &Identity::anonymous(), now);
            prop_assert!(!matches!(d.verdict, Verdict::Allow { .. }), "{req:?} -> {d:?}");
        }
    }

    /// (b) An expired rule never allows, and any opt-out allow names a rule
    /// that is live at `now`.
    #[test]
    fn optout_never_applies_after_expiry(
        routes in proptest::collection::vec(route_spec(), 1..4),
        rules in rule_spec(true),
        reqs in proptest::collection::vec(request(), 1..16),
        now in any_now(),
    ) {
        let policy = compile(&routes, &rules);
        let reqs = with_targeted(&policy, &reqs);
        for req in &reqs {
            let d = run(&policy, req, &identity(req), now);
            if let Verdict::Allow { via: AuthVia::OptOut { rule, .. } } = &d.verdict {
                let rule = policy.optout(rule).unwrap();
                prop_assert!(now < rule.expires(), "{} expired at {} but allowed at {now}", rule.id(), rule.expires());
            }
        }
        // And at or after every rule's expiry, no opt-out at all.
        if let Some(last) = policy.optouts().map(|r| r.expires()).max() {
            for req in &reqs {
                let d = run(&policy, req, &identity(req), last);
                prop_assert!(!d.is_optout(), "{req:?} -> {d:?}");
            }
        }
    }

    /// (c) A present-but-invalid credential is never allowed through an opt-out
    /// (nor at all).
    #[test]
    fn invalid_credential_never_falls_into_an_optout(
        routes in proptest::collection::vec(route_spec(), 1..4),
        rules in rule_spec(true),
        reqs in proptest::collection::vec(request(), 1..16),
        bad in 1u8..=3,
        now in any_now(),
    ) {
        let policy = compile(&routes, &rules);
        let reqs = with_targeted(&policy, &reqs);
        for req in &reqs {
            let mut id = identity(req);
            id.invalid = factors(bad).iter().map(|factor| InvalidCredential { factor, reason: "revoked".into() }).collect();
            let d = run(&policy, req, &id, now);
            prop_assert!(!d.is_optout(), "{req:?} -> {d:?}");
            prop_assert!(!matches!(d.verdict, Verdict::Allow { .. }), "{req:?} -> {d:?}");
        }
    }

    /// (d) An opt-out only applies on its route, to a method and a path it
    /// lists, for a peer in its CIDRs; its fallback is never an allow.
    #[test]
    fn optout_never_applies_to_unlisted_method_or_path(
        routes in proptest::collection::vec(route_spec(), 1..4),
        rules in rule_spec(true),
        reqs in proptest::collection::vec(request(), 1..32),
        now in any_now(),
    ) {
        let policy = compile(&routes, &rules);
        let reqs = with_targeted(&policy, &reqs);
        for req in &reqs {
            let d = run(&policy, req, &identity(req), now);
            let Verdict::Allow { via: AuthVia::OptOut { rule, .. } } = &d.verdict else { continue };
            let rule = policy.optout(rule).unwrap();
            let path = normalize_path(&req.path).unwrap();
            prop_assert!(rule.methods().iter().any(|m| m == req.method), "{req:?} via {}", rule.id());
            prop_assert!(rule.paths().iter().any(|p| p.matches(&path)), "{req:?} via {}", rule.id());
            prop_assert_eq!(d.route.as_deref(), Some(rule.route()));
            if let Some(cidrs) = rule.source_cidrs() {
                let peer: IpAddr = req.peer.parse().unwrap();
                prop_assert!(cidrs.iter().any(|n| n.contains(&peer)), "{req:?} via {}", rule.id());
            }
            let fallback = d.fallback.as_ref().unwrap();
            prop_assert!(!matches!(fallback.verdict, Verdict::Allow { .. }), "{d:?}");
        }
    }

    /// (e) Same inputs, same answer.
    #[test]
    fn decide_is_deterministic(
        routes in proptest::collection::vec(route_spec(), 1..4),
        rules in rule_spec(true),
        reqs in proptest::collection::vec(request(), 1..16),
        now in any_now(),
    ) {
        let policy = compile(&routes, &rules);
        let again = compile(&routes, &rules);
        for req in &reqs {
            let id = identity(req);
            let a = run(&policy, req, &id, now);
            let b = run(&policy, req, &id, now);
            let c = run(&again, req, &id, now);
            for other in [&b, &c] {
                prop_assert_eq!(&a.verdict, &other.verdict);
                prop_assert_eq!(&a.reasons, &other.reasons);
                prop_assert_eq!(&a.rule, &other.rule);
                prop_assert_eq!(&a.route, &other.route);
                prop_assert_eq!(a.upgrade_allowed, other.upgrade_allowed);
            }
        }
    }

    /// An authenticated allow always satisfies one of the route's
    /// alternatives with verified factors.
    #[test]
    fn authenticated_allow_satisfies_the_route(
        routes in proptest::collection::vec(route_spec(), 1..4),
        rules in rule_spec(true),
        reqs in proptest::collection::vec(request(), 1..16),
        now in any_now(),
    ) {
        let policy = compile(&routes, &rules);
        let reqs = with_targeted(&policy, &reqs);
        for req in &reqs {
            let id = identity(req);
            let d = run(&policy, req, &id, now);
            if let Verdict::Allow { via: AuthVia::Authenticated(set) } = &d.verdict {
                let route = policy.route(d.route.as_deref().unwrap()).unwrap();
                prop_assert!(route.requirement().contains(set));
                prop_assert!(id.verified.is_superset(*set));
                prop_assert!(route.admits(id.principal.as_deref()));
            }
            if req.upgrade && d.upgrade_allowed {
                let allowed = matches!(d.verdict, Verdict::Allow { .. });
                prop_assert!(allowed, "{:?}", d);
            }
            if !req.upgrade {
                prop_assert!(!d.upgrade_allowed);
            }
        }
    }
}

/// Guard against vacuous properties: the generators above do produce
/// opt-out allows, opt-out challenges, authenticated allows and 404s.
#[test]
fn generators_exercise_every_verdict() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        proptest::collection::vec(route_spec(), 1..4),
        rule_spec(true),
        proptest::collection::vec(request(), 16),
    );
    let (mut optout, mut authenticated, mut challenge, mut no_route) = (0, 0, 0, 0);
    for _ in 0..200 {
        let (routes, rules, reqs) = strategy.new_tree(&mut runner).unwrap().current();
        let policy = compile(&routes, &rules);
        for req in &with_targeted(&policy, &reqs) {
            let d = run(&policy, req, &identity(req), NOW);
            match d.verdict {
                Verdict::Allow {
                    via: AuthVia::OptOut { .. },
                } => optout += 1,
                Verdict::Allow {
                    via: AuthVia::Authenticated(_),
                } => authenticated += 1,
                Verdict::Challenge { .. } => challenge += 1,
                Verdict::NoRoute => no_route += 1,
                Verdict::Forbidden | Verdict::StepUp { .. } => {}
            }
        }
    }
    eprintln!("optout {optout}, authenticated {authenticated}, challenge {challenge}, no route {no_route}");
    assert!(
        optout > 50 && authenticated > 20 && challenge > 20 && no_route > 20,
        "{optout} {authenticated} {challenge} {no_route}"
    );
}
