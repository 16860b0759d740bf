//! `decide()`: every branch, with the reasons it gives.

// Test code: a failed fixture should stop the test loudly.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use crate::common::*;
use postern_policy::{
    decide, normalize_path, AuthVia, Condition, Decision, Factor, FactorSet, Identity,
    InvalidCredential, Policy, RequestFacts, Verdict,
};
use time::macros::datetime;
use time::OffsetDateTime;

const LOCAL: &str = "127.0.0.1";
const REMOTE: &str = "203.0.113.9";

fn mtls() -> FactorSet {
    FactorSet::EMPTY.with(Factor::Mtls)
}
fn jwt() -> FactorSet {
    FactorSet::EMPTY.with(Factor::Jwt)
}

struct Req<'a> {
    method: &'a str,
    host: &'a str,
    path: &'a str,
    peer: &'a str,
    upgrade: bool,
    risk: u8,
}

impl<'a> Req<'a> {
    fn new(method: &'a str, path: &'a str) -> Req<'a> {
        Req {
            method,
            host: "app.example",
            path,
            peer: LOCAL,
            upgrade: false,
            risk: 0,
        }
    }
    fn from(mut self, peer: &'a str) -> Self {
        self.peer = peer;
        self
    }
    fn host(mut self, host: &'a str) -> Self {
        self.host = host;
        self
    }
    fn upgrade(mut self) -> Self {
        self.upgrade = true;
        self
    }
    fn risk(mut self, risk: u8) -> Self {
        self.risk = risk;
        self
    }
    fn run(&self, p: &Policy, id: &Identity, now: OffsetDateTime) -> Decision {
        let path = normalize_path(self.path).unwrap();
        let peer: IpAddr = self.peer.parse().unwrap();
        let facts = RequestFacts {
            method: self.method,
            host: self.host,
            path: &path,
            peer,
            upgrade: self.upgrade,
            risk: self.risk,
        };
        decide(p, &facts, id, now)
    }
}

fn anon() -> Identity {
    Identity::anonymous()
}

fn user(name: &str, factors: FactorSet) -> Identity {
    Identity {
        principal: Some(name.into()),
        verified: factors,
        invalid: vec![],
        grants: vec![],
        acr: None,
        amr: vec![],
        consents: vec![],
    }
}

fn reasons(d: &Decision) -> String {
    d.reasons.join(" | ")
}

fn app() -> Policy {
    policy(&format!("{APP_ROUTE}{HEALTHZ}"))
}

#[test]
fn anonymous_request_to_a_route_is_challenged_with_its_alternatives() {
    let d = Req::new("GET", "/private").run(&app(), &anon(), NOW);
    assert_eq!(
        d.verdict,
        Verdict::Challenge {
            accepted: vec![mtls(), jwt()]
        }
    );
    assert_eq!(d.route.as_deref(), Some("app"));
    assert_eq!(d.upstream.as_deref(), Some("echo"));
    assert_eq!(d.rule, None);
    assert!(d.fallback.is_none());
    assert!(
        reasons(&d).contains("requires mtls or jwt"),
        "{}",
        reasons(&d)
    );
}

#[test]
fn authenticated_request_is_allowed_without_recording_an_optout() {
    let d = Req::new("GET", "/healthz").run(&app(), &user("alice", jwt()), NOW);
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            via: AuthVia::Authenticated(jwt())
        }
    );
    assert_eq!(d.rule, None);
    assert!(!d.is_optout());
    assert!(d.fallback.is_none());
    // The audit record's reasons, word for word (built without `format!`).
    assert_eq!(
        d.reasons,
        [
            "route `app` covers `/healthz`",
            "authenticated with jwt as `alice`"
        ]
    );
    let both = FactorSet::EMPTY.with(Factor::Mtls).with(Factor::Jwt);
    let mut anonymous = user("x", both);
    anonymous.principal = None;
    let d = Req::new("GET", "/private").run(&app(), &anonymous, NOW);
    assert_eq!(
        d.reasons.last().map(String::as_str),
        Some("authenticated with mtls as an unnamed principal"),
        "the first alternative met, and no principal"
    );
    let d = Req::new("GET", "/private").run(&app(), &anon(), NOW);
    assert!(
        reasons(&d).ends_with("requires mtls or jwt; verified: none"),
        "{}",
        reasons(&d)
    );
}

#[test]
fn no_route_is_404_with_a_reason() {
    let route = APP_ROUTE.replace("host = \"*\"", "host = \"app.example\"");
    let p = policy(&route);
    let d = Req::new("GET", "/x")
        .host("other.example")
        .run(&p, &anon(), NOW);
    assert_eq!(d.verdict, Verdict::NoRoute);
    assert!(d.route.is_none());
    assert!(reasons(&d).contains("no route covers host `other.example`"));
    // fall_back of a no-route decision stays closed.
    let f = d.fall_back("audit down");
    assert!(!matches!(f.verdict, Verdict::Allow { .. }));
}

#[test]
fn exact_host_beats_wildcard_and_longest_prefix_wins() {
    let routes = format!(
        "{APP_ROUTE}{}{}{}",
        APP_ROUTE
            .replace("id = \"app\"", "id = \"api\"")
            .replace("path_prefix = \"/\"", "path_prefix = \"/api\""),
        APP_ROUTE
            .replace("id = \"app\"", "id = \"v1\"")
            .replace("path_prefix = \"/\"", "path_prefix = \"/api/v1\""),
        APP_ROUTE
            .replace("id = \"app\"", "id = \"admin\"")
            .replace("host = \"*\"", "host = \"admin.example\"")
    );
    let p = policy(&routes);
    let route_of = |host: &str, path: &str| {
        Req::new("GET", path)
            .host(host)
            .run(&p, &anon(), NOW)
            .route
            .unwrap()
            .to_string()
    };
    assert_eq!(route_of("app.example", "/"), "app");
    assert_eq!(route_of("app.example", "/apix"), "app");
    assert_eq!(route_of("app.example", "/api"), "api");
    assert_eq!(route_of("app.example", "/api/"), "api");
    assert_eq!(route_of("app.example", "/api/v1"), "v1");
    assert_eq!(route_of("app.example", "/api/v1/x/y"), "v1");
    assert_eq!(route_of("app.example", "/api/v2"), "api");
    assert_eq!(route_of("admin.example", "/api/v1"), "admin");
    let r = p
        .find_route("app.example", &normalize_path("/api/v1/x").unwrap())
        .unwrap();
    assert_eq!(r.id(), "v1");
}

#[test]
fn trailing_dot_host_is_the_same_host() {
    let admin = APP_ROUTE
        .replace("id = \"app\"", "id = \"admin\"")
        .replace("host = \"*\"", "host = \"admin.example\"");
    let p = policy(&format!("{APP_ROUTE}{admin}"));
    let d = Req::new("GET", "/")
        .host("admin.example.")
        .run(&p, &anon(), NOW);
    assert_eq!(d.route.as_deref(), Some("admin"));
}

#[test]
fn exact_host_routes_fall_through_to_wildcard_for_uncovered_paths() {
    let routes = format!(
        "{APP_ROUTE}{}",
        APP_ROUTE
            .replace("id = \"app\"", "id = \"admin\"")
            .replace("host = \"*\"", "host = \"admin.example\"")
            .replace("path_prefix = \"/\"", "path_prefix = \"/admin\"")
    );
    let p = policy(&routes);
    let d = Req::new("GET", "/other")
        .host("admin.example")
        .run(&p, &anon(), NOW);
    assert_eq!(d.route.as_deref(), Some("app"));
}

#[test]
fn live_optout_allows_anonymous_with_fallback_to_full_authentication() {
    let d = Req::new("GET", "/healthz").run(&app(), &anon(), NOW);
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            via: AuthVia::OptOut {
                rule: "healthz".into(),
                waived: FactorSet::all(),
                verified: FactorSet::EMPTY
            }
        }
    );
    assert!(d.is_optout());
    assert_eq!(d.rule.as_deref(), Some("healthz"));
    assert!(d.condition.is_none());
    let fb = d.fallback.as_ref().unwrap();
    assert_eq!(
        fb.verdict,
        Verdict::Challenge {
            accepted: vec![mtls(), jwt()]
        }
    );
    assert!(
        reasons(&d).contains("opt-out rule `healthz` waives mtls+jwt"),
        "{}",
        reasons(&d)
    );
    assert!(reasons(&d).contains("platform-team"), "{}", reasons(&d));
}

#[test]
fn optout_never_applies_after_expiry() {
    let at_expiry = datetime!(2027-01-31 00:00:00 UTC);
    for now in [
        at_expiry,
        at_expiry + time::Duration::seconds(1),
        datetime!(2030-01-01 00:00:00 UTC),
    ] {
        let d = Req::new("GET", "/healthz").run(&app(), &anon(), now);
        assert_eq!(
            d.verdict,
            Verdict::Challenge {
                accepted: vec![mtls(), jwt()]
            }
        );
        assert!(
            reasons(&d).contains("rule `healthz` expired at 2027-01-31T00:00:00Z"),
            "{}",
            reasons(&d)
        );
        assert_eq!(
            d.rule.as_deref(),
            Some("healthz"),
            "the refused rule is recorded"
        );
    }
    let just_before = at_expiry - time::Duration::nanoseconds(1);
    assert!(Req::new("GET", "/healthz")
        .run(&app(), &anon(), just_before)
        .is_optout());
}

#[test]
fn optout_never_applies_outside_its_source_cidrs() {
    let d = Req::new("GET", "/healthz")
        .from(REMOTE)
        .run(&app(), &anon(), NOW);
    assert!(matches!(d.verdict, Verdict::Challenge { .. }));
    assert!(
        reasons(&d).contains("peer 203.0.113.9 not in source_cidrs of `healthz`"),
        "{}",
        reasons(&d)
    );
    assert!(Req::new("GET", "/healthz")
        .from("::1")
        .run(&app(), &anon(), NOW)
        .is_optout());
    // IPv4-mapped IPv6 peers are matched as IPv4.
    assert!(Req::new("GET", "/healthz")
        .from("::ffff:127.0.0.1")
        .run(&app(), &anon(), NOW)
        .is_optout());
    assert!(!Req::new("GET", "/healthz")
        .from("::ffff:203.0.113.9")
        .run(&app(), &anon(), NOW)
        .is_optout());
}

#[test]
fn optout_never_applies_to_unlisted_methods_or_paths() {
    let p = app();
    for (m, path) in [
        ("POST", "/healthz"),
        ("get", "/healthz"),
        ("GET", "/healthz/"),
        ("GET", "/healthz/x"),
        ("GET", "/HEALTHZ"),
        ("GET", "/healthz;x"),
        ("GET", "/healthzx"),
        ("GET", "/"),
    ] {
        let d = Req::new(m, path).run(&p, &anon(), NOW);
        assert!(!d.is_optout(), "{m} {path}");
        assert!(matches!(d.verdict, Verdict::Challenge { .. }), "{m} {path}");
    }
}

#[test]
fn present_but_invalid_credential_never_falls_into_an_optout() {
    let id = Identity {
        principal: None,
        verified: FactorSet::EMPTY,
        invalid: vec![InvalidCredential {
            factor: Factor::Jwt,
            reason: "signature does not verify".into(),
        }],
        grants: vec![],
        acr: None,
        amr: vec![],
        consents: vec![],
    };
    let d = Req::new("GET", "/healthz").run(&app(), &id, NOW);
    assert_eq!(
        d.verdict,
        Verdict::Challenge {
            accepted: vec![mtls(), jwt()]
        }
    );
    assert_eq!(d.rule, None);
    assert!(
        reasons(&d).contains("jwt credential was presented but is invalid"),
        "{}",
        reasons(&d)
    );
    assert!(reasons(&d).contains("never falls into an opt-out"));
    // Even with another factor verified.
    let id = Identity {
        principal: Some("alice".into()),
        verified: mtls(),
        ..id
    };
    assert!(matches!(
        Req::new("GET", "/private").run(&app(), &id, NOW).verdict,
        Verdict::Challenge { .. }
    ));
}

#[test]
fn identities_allow_list_forbids_other_principals() {
    let route = APP_ROUTE.replace("require = ", "identities = [\"alice\"]\nrequire = ");
    let p = policy(&route);
    let d = Req::new("GET", "/x").run(&p, &user("alice", mtls()), NOW);
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            via: AuthVia::Authenticated(mtls())
        }
    );
    let d = Req::new("GET", "/x").run(&p, &user("bob", mtls()), NOW);
    assert_eq!(d.verdict, Verdict::Forbidden);
    assert!(
        reasons(&d).contains("`bob` is not among the identities of route `app`"),
        "{}",
        reasons(&d)
    );
    assert_eq!(
        p.route("app").unwrap().identities(),
        Some(&["alice".to_string()][..])
    );
}

#[test]
fn forbidden_principal_still_passes_a_waive_all_optout() {
    // waive = "all" lets anyone through; a named-but-unlisted principal is
    // not worse off than an anonymous caller.
    let route = APP_ROUTE.replace("require = ", "identities = [\"alice\"]\nrequire = ");
    let p = policy(&format!("{route}{HEALTHZ}"));
    assert!(Req::new("GET", "/healthz")
        .run(&p, &user("bob", mtls()), NOW)
        .is_optout());
}

#[test]
fn partial_waiver_still_applies_the_identity_allow_list() {
    let route = APP_ROUTE
        .replace(r#"[["mtls"], ["jwt"]]"#, r#"[["mtls", "jwt"]]"#)
        .replace("require = ", "identities = [\"alice\"]\nrequire = ");
    let rule = optout("legacy", r#"["GET"]"#, r#"["/legacy/**"]"#, "")
        .replace("waive = \"all\"", "waive = [\"jwt\"]");
    let p = policy(&format!("{route}{rule}"));
    let d = Req::new("GET", "/legacy/x").run(&p, &user("alice", mtls()), NOW);
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            via: AuthVia::OptOut {
                rule: "legacy".into(),
                waived: jwt(),
                verified: mtls()
            }
        }
    );
    let d = Req::new("GET", "/legacy/x").run(&p, &user("bob", mtls()), NOW);
    assert_eq!(d.verdict, Verdict::Forbidden, "{}", reasons(&d));
}

#[test]
fn partial_waiver_challenges_for_the_remaining_factors() {
    let route = APP_ROUTE.replace(r#"[["mtls"], ["jwt"]]"#, r#"[["mtls", "jwt"]]"#);
    let rule = optout("legacy", r#"["GET"]"#, r#"["/legacy/**"]"#, "")
        .replace("waive = \"all\"", "waive = [\"jwt\"]");
    let p = policy(&format!("{route}{rule}"));
    let d = Req::new("GET", "/legacy/x").run(&p, &anon(), NOW);
    assert_eq!(
        d.verdict,
        Verdict::Challenge {
            accepted: vec![mtls()]
        }
    );
    assert_eq!(d.rule.as_deref(), Some("legacy"));
    assert!(
        reasons(&d).contains("still required: mtls"),
        "{}",
        reasons(&d)
    );
    // A jwt alone does not help: it is the waived factor.
    let d = Req::new("GET", "/legacy/x").run(&p, &user("a", jwt()), NOW);
    assert_eq!(
        d.verdict,
        Verdict::Challenge {
            accepted: vec![mtls()]
        }
    );
    // Full authentication never needs the rule.
    let both = mtls().with(Factor::Jwt);
    let d = Req::new("GET", "/legacy/x").run(&p, &user("a", both), NOW);
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            via: AuthVia::Authenticated(both)
        }
    );
    assert_eq!(d.rule, None);
}

#[test]
fn webhook_optout_carries_its_condition() {
    std::env::set_var("POSTERN_TEST_DECIDE_HOOK", "s3cret");
    let rule = format!(
        "{}[optout.webhook]\nsecret_env = \"POSTERN_TEST_DECIDE_HOOK\"\n",
        optout("hook", r#"["POST"]"#, r#"["/webhooks/demo"]"#, "")
    );
    let p = policy(&format!("{APP_ROUTE}{rule}"));
    let d = Req::new("POST", "/webhooks/demo")
        .from(REMOTE)
        .run(&p, &anon(), NOW);
    assert!(d.is_optout());
    match &d.condition {
        Some(Condition::WebhookSignature(spec)) => {
            assert_eq!(&*spec.rule, "hook");
            assert_eq!(spec.secret, b"s3cret");
        }
        None => panic!("no condition"),
    }
    // The signature check failed: full authentication, condition gone.
    let f = d.fall_back("webhook signature does not match");
    assert_eq!(
        f.verdict,
        Verdict::Challenge {
            accepted: vec![mtls(), jwt()]
        }
    );
    assert!(f.condition.is_none());
    assert!(!f.is_optout());
    assert_eq!(
        f.reasons.last().map(String::as_str),
        Some("webhook signature does not match")
    );
}

#[test]
fn fall_back_without_fallback_is_a_challenge_with_route_alternatives() {
    let d = Req::new("GET", "/private").run(&app(), &user("alice", mtls()), NOW);
    assert!(d.fallback.is_none());
    let f = d.fall_back("audit sink unavailable");
    assert_eq!(
        f.verdict,
        Verdict::Challenge {
            accepted: vec![mtls(), jwt()]
        }
    );
    assert_eq!(
        f.reasons.last().map(String::as_str),
        Some("audit sink unavailable")
    );
    assert_eq!(f.route.as_deref(), Some("app"));
}

#[test]
fn time_window_limits_an_optout_and_may_wrap_midnight() {
    let rule = optout(
        "night",
        r#"["GET"]"#,
        r#"["/batch"]"#,
        "time_window = { start = \"22:00\", end = \"06:00\" }",
    );
    let p = policy(&format!("{APP_ROUTE}{rule}"));
    let at = |h: u8, m: u8| {
        datetime!(2026-12-01 00:00:00 UTC).replace_time(time::Time::from_hms(h, m, 0).unwrap())
    };
    for (h, m, inside) in [
        (22, 0, true),
        (23, 59, true),
        (0, 0, true),
        (5, 59, true),
        (6, 0, false),
        (12, 0, false),
        (21, 59, false),
    ] {
        let d = Req::new("GET", "/batch").run(&p, &anon(), at(h, m));
        assert_eq!(d.is_optout(), inside, "{h:02}:{m:02}: {}", reasons(&d));
        if !inside {
            assert!(
                reasons(&d).contains("applies only within 22:00-06:00 UTC"),
                "{}",
                reasons(&d)
            );
        }
    }
    // `now` in another offset is the same instant.
    let local = datetime!(2026-12-01 01:00:00 +02:00); // 23:00 UTC the day before
    assert!(Req::new("GET", "/batch")
        .run(&p, &anon(), local)
        .is_optout());
}

#[test]
fn most_specific_live_rule_wins_and_skipped_rules_are_explained() {
    let rules = format!(
        "{}{}{}",
        optout("broad", r#"["GET"]"#, r#"["/static/**"]"#, ""),
        optout(
            "narrow",
            r#"["GET"]"#,
            r#"["/static/img/**"]"#,
            r#"source_cidrs = ["10.0.0.0/8"]"#
        ),
        optout("exact", r#"["GET"]"#, r#"["/static/img/logo.png"]"#, "")
            .replace("2027-01-31", "2026-12-02"),
    );
    let p = policy(&format!("{APP_ROUTE}{rules}"));
    let path = normalize_path("/static/img/logo.png").unwrap();
    let order: Vec<_> = p
        .optout_candidates("app", "GET", &path)
        .iter()
        .map(|r| r.id().to_string())
        .collect();
    assert_eq!(order, ["exact", "narrow", "broad"]);
    let later = datetime!(2026-12-03 00:00:00 UTC);
    let d = Req::new("GET", "/static/img/logo.png")
        .from(REMOTE)
        .run(&p, &anon(), later);
    assert_eq!(d.rule.as_deref(), Some("broad"));
    let r = reasons(&d);
    assert!(r.contains("rule `exact` expired"), "{r}");
    assert!(r.contains("not in source_cidrs of `narrow`"), "{r}");
    let d = Req::new("GET", "/static/img/logo.png")
        .from("10.1.1.1")
        .run(&p, &anon(), NOW);
    assert_eq!(d.rule.as_deref(), Some("exact"));
}

#[test]
fn prefix_pattern_covers_below_not_the_prefix_itself() {
    let p = policy(&format!(
        "{APP_ROUTE}{}",
        optout("s", r#"["GET"]"#, r#"["/static/**"]"#, "")
    ));
    assert!(Req::new("GET", "/static/")
        .run(&p, &anon(), NOW)
        .is_optout());
    assert!(Req::new("GET", "/static/a/b")
        .run(&p, &anon(), NOW)
        .is_optout());
    assert!(!Req::new("GET", "/static").run(&p, &anon(), NOW).is_optout());
    assert!(!Req::new("GET", "/staticx/a")
        .run(&p, &anon(), NOW)
        .is_optout());
    assert!(!Req::new("GET", "/static/../private")
        .run(&p, &anon(), NOW)
        .is_optout());
}

#[test]
fn optout_rules_stay_on_their_route() {
    let api = APP_ROUTE
        .replace("id = \"app\"", "id = \"api\"")
        .replace("path_prefix = \"/\"", "path_prefix = \"/api\"");
    // The rule is on `app` but names a path that `api` covers: it never applies.
    let rule = optout("h", r#"["GET"]"#, r#"["/api/health"]"#, "");
    let text = format!("{APP_ROUTE}{api}{rule}");
    let w = warnings(&text);
    assert!(
        w.iter()
            .any(|d| d.message.contains("routed to route `api`")),
        "{}",
        render(&w)
    );
    let p = policy(&text);
    let d = Req::new("GET", "/api/health").run(&p, &anon(), NOW);
    assert_eq!(d.route.as_deref(), Some("api"));
    assert!(!d.is_optout());
}

#[test]
fn upgrade_through_optout_needs_the_rule_to_allow_it() {
    let p = app();
    let d = Req::new("GET", "/healthz").upgrade().run(&p, &anon(), NOW);
    assert_eq!(d.verdict, Verdict::Forbidden);
    assert!(!d.upgrade_allowed);
    assert!(
        reasons(&d).contains("opt-out rule `healthz` does not allow protocol upgrades"),
        "{}",
        reasons(&d)
    );
    let rule = optout("ws", r#"["GET"]"#, r#"["/ws"]"#, "allow_upgrade = true");
    let p = policy(&format!("{APP_ROUTE}{rule}"));
    let d = Req::new("GET", "/ws").upgrade().run(&p, &anon(), NOW);
    assert!(d.is_optout());
    assert!(d.upgrade_allowed);
    // Without an upgrade request, nothing is "allowed" to upgrade.
    assert!(!Req::new("GET", "/ws").run(&p, &anon(), NOW).upgrade_allowed);
}

#[test]
fn upgrade_when_authenticated_needs_the_route_to_allow_it() {
    let d = Req::new("GET", "/x")
        .upgrade()
        .run(&app(), &user("alice", mtls()), NOW);
    assert_eq!(d.verdict, Verdict::Forbidden);
    assert!(reasons(&d).contains("route `app` does not allow protocol upgrades"));
    let p = policy(&APP_ROUTE.replace("require = ", "allow_upgrade = true\nrequire = "));
    let d = Req::new("GET", "/x")
        .upgrade()
        .run(&p, &user("alice", mtls()), NOW);
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            via: AuthVia::Authenticated(mtls())
        }
    );
    assert!(d.upgrade_allowed);
    // A route allowing upgrades does not let an opt-out upgrade.
    let p = policy(&format!(
        "{}{HEALTHZ}",
        APP_ROUTE.replace("require = ", "allow_upgrade = true\nrequire = ")
    ));
    assert_eq!(
        Req::new("GET", "/healthz")
            .upgrade()
            .run(&p, &anon(), NOW)
            .verdict,
        Verdict::Forbidden
    );
}

#[test]
fn decision_fallback_keeps_upgrade_rules() {
    let rule = optout("ws", r#"["GET"]"#, r#"["/ws"]"#, "allow_upgrade = true");
    let p = policy(&format!("{APP_ROUTE}{rule}"));
    let d = Req::new("GET", "/ws").upgrade().run(&p, &anon(), NOW);
    let fb = d.fallback.as_ref().unwrap();
    assert!(!fb.upgrade_allowed);
    assert!(matches!(fb.verdict, Verdict::Challenge { .. }));
}

// --- opt-outs that need a grant signed into the client certificate ---

fn reports() -> Policy {
    policy(
        r#"
[[route]]
id = "reports"
host = "*"
path_prefix = "/reports"
upstream = "echo"
require = [["mtls", "jwt"]]

[[optout]]
id = "reports-batch"
route = "reports"
methods = ["GET"]
paths = ["/reports/**"]
waive = ["jwt"]
require_grant = true
owner = "data-team"
reason = "the nightly batch has a certificate but no user token"
expires = 2027-01-15T00:00:00Z
"#,
    )
}

fn batch(grants: Vec<postern_policy::GrantClaim>) -> Identity {
    Identity {
        principal: Some("service/batch".into()),
        verified: mtls(),
        invalid: vec![],
        grants,
        acr: None,
        amr: vec![],
        consents: vec![],
    }
}

fn grant(id: &str, rule: &str, not_after: OffsetDateTime) -> postern_policy::GrantClaim {
    postern_policy::GrantClaim {
        id: id.into(),
        rules: vec![rule.into()],
        waives: FactorSet::EMPTY,
        not_after,
    }
}

#[test]
fn grant_rule_applies_with_a_live_grant_naming_it() {
    let id = batch(vec![grant(
        "g1",
        "reports-batch",
        datetime!(2026-12-01 08:00:00 UTC),
    )]);
    let d = Req::new("GET", "/reports/daily").run(&reports(), &id, NOW);
    assert!(
        matches!(
            d.verdict,
            Verdict::Allow {
                via: AuthVia::OptOut { .. }
            }
        ),
        "{}",
        reasons(&d)
    );
    assert_eq!(d.grant.as_deref(), Some("g1"));
    assert!(
        reasons(&d).contains("certificate grant `g1`"),
        "{}",
        reasons(&d)
    );
}

#[test]
fn grant_rule_never_applies_without_a_grant() {
    let d = Req::new("GET", "/reports/daily").run(&reports(), &batch(vec![]), NOW);
    assert_eq!(
        d.verdict,
        Verdict::Challenge {
            accepted: vec![mtls().with(Factor::Jwt)]
        }
    );
    assert_eq!(d.grant, None);
    assert!(reasons(&d).contains("carries none"), "{}", reasons(&d));
}

#[test]
fn a_grant_for_another_rule_does_not_apply() {
    let id = batch(vec![grant(
        "g1",
        "other-rule",
        datetime!(2026-12-01 08:00:00 UTC),
    )]);
    let d = Req::new("GET", "/reports/daily").run(&reports(), &id, NOW);
    assert!(matches!(d.verdict, Verdict::Challenge { .. }));
}

#[test]
fn an_expired_grant_in_a_valid_certificate_does_not_apply() {
    let id = batch(vec![grant(
        "g1",
        "reports-batch",
        datetime!(2026-11-30 23:59:59 UTC),
    )]);
    let d = Req::new("GET", "/reports/daily").run(&reports(), &id, NOW);
    assert!(matches!(d.verdict, Verdict::Challenge { .. }));
    assert!(reasons(&d).contains("expired"), "{}", reasons(&d));
}

#[test]
fn grants_count_only_with_a_verified_certificate() {
    let mut id = batch(vec![grant(
        "g1",
        "reports-batch",
        datetime!(2026-12-01 08:00:00 UTC),
    )]);
    id.verified = jwt();
    let d = Req::new("GET", "/reports/daily").run(&reports(), &id, NOW);
    assert!(matches!(d.verdict, Verdict::Challenge { .. }));
}

#[test]
fn a_grant_never_waives_more_than_it_names() {
    // The grant names mtls only; the rule waives jwt: nothing is waived, so
    // the full requirement stands.
    let mut g = grant("g1", "reports-batch", datetime!(2026-12-01 08:00:00 UTC));
    g.waives = mtls();
    let d = Req::new("GET", "/reports/daily").run(&reports(), &batch(vec![g]), NOW);
    assert!(
        matches!(d.verdict, Verdict::Challenge { .. }),
        "{}",
        reasons(&d)
    );
}

// --- dynamic risk, step-up, user-chosen opt-outs ---

fn risky_healthz() -> Policy {
    policy(&format!("{APP_ROUTE}{HEALTHZ}max_risk = 40\n"))
}

#[test]
fn optout_with_max_risk_stops_applying_above_it_and_applies_again_below() {
    let p = risky_healthz();
    let calm = Req::new("GET", "/healthz").risk(40).run(&p, &anon(), NOW);
    assert!(calm.is_optout(), "{}", reasons(&calm));
    let risky = Req::new("GET", "/healthz").risk(41).run(&p, &anon(), NOW);
    assert!(matches!(risky.verdict, Verdict::Challenge { .. }));
    assert_eq!(risky.rule.as_deref(), Some("healthz"));
    assert!(
        reasons(&risky).contains("risk score 41 is above max_risk 40"),
        "{}",
        reasons(&risky)
    );
}

#[test]
fn max_risk_above_100_is_refused_with_its_line() {
    let errs = errors(&format!("{APP_ROUTE}{HEALTHZ}max_risk = 101\n"));
    assert!(render(&errs).contains("max_risk"), "{}", render(&errs));
}

fn stepped_up() -> Policy {
    policy(
        r#"
[[route]]
id = "admin"
host = "*"
path_prefix = "/admin"
upstream = "echo"
require = [["oidc"], ["mtls"]]
step_up_acr = ["urn:postern:mfa"]
"#,
    )
}

fn session(acr: Option<&str>) -> Identity {
    let mut id = user("alice", FactorSet::EMPTY.with(Factor::Oidc));
    id.acr = acr.map(str::to_string);
    id
}

#[test]
fn a_weak_session_is_asked_to_step_up_and_a_strong_one_passes() {
    let p = stepped_up();
    let weak = Req::new("GET", "/admin/users").run(&p, &session(Some("urn:postern:pwd")), NOW);
    assert_eq!(
        weak.verdict,
        Verdict::StepUp {
            acr_values: vec!["urn:postern:mfa".into()]
        }
    );
    assert!(
        reasons(&weak).contains("urn:postern:pwd"),
        "{}",
        reasons(&weak)
    );
    let none = Req::new("GET", "/admin/users").run(&p, &session(None), NOW);
    assert!(matches!(none.verdict, Verdict::StepUp { .. }));
    let strong = Req::new("GET", "/admin/users").run(&p, &session(Some("urn:postern:mfa")), NOW);
    assert!(matches!(strong.verdict, Verdict::Allow { .. }));
    // Another factor the route accepts is not subject to the session's acr.
    let cert = Req::new("GET", "/admin/users").run(&p, &user("alice", mtls()), NOW);
    assert!(matches!(cert.verdict, Verdict::Allow { .. }));
    // Anonymous: a plain challenge, not a step-up.
    assert!(matches!(
        Req::new("GET", "/admin").run(&p, &anon(), NOW).verdict,
        Verdict::Challenge { .. }
    ));
}

const DISCLOSURE: &str = "Skips sign-in for read-only pages on this device for 30 days.";

fn remember_device(disclosure: &str) -> Policy {
    policy(&format!(
        r#"{APP_ROUTE}
[[route]]
id = "docs"
host = "*"
path_prefix = "/docs"
upstream = "echo"
require = [["oidc"], ["mtls"]]

[[optout]]
id = "remember-device-readonly"
route = "docs"
methods = ["GET", "HEAD"]
paths = ["/docs/**"]
waive = ["oidc"]
owner = "identity-team"
reason = "users may choose not to re-authenticate for read-only pages"
expires = 2027-01-15T00:00:00Z

[optout.offer]
title = "Remember this device"
disclosure = "{disclosure}"
duration_days = 30
require_amr_any = ["mfa"]
"#
    ))
}

fn consented(disclosure: &str, expires: OffsetDateTime) -> Identity {
    use sha2::Digest;
    let mut id = user("alice", FactorSet::EMPTY);
    id.consents = vec![postern_policy::ConsentClaim {
        offer: "remember-device-readonly".into(),
        disclosure_sha256: hex::encode(sha2::Sha256::digest(disclosure.as_bytes())),
        expires,
    }];
    id
}

#[test]
fn a_user_chosen_optout_applies_only_with_a_live_consent_to_the_current_disclosure() {
    let p = remember_device(DISCLOSURE);
    let later = datetime!(2026-12-20 00:00:00 UTC);
    let ok = Req::new("GET", "/docs/intro").run(&p, &consented(DISCLOSURE, later), NOW);
    assert!(ok.is_optout(), "{}", reasons(&ok));
    let none = Req::new("GET", "/docs/intro").run(&p, &user("alice", FactorSet::EMPTY), NOW);
    assert!(matches!(none.verdict, Verdict::Challenge { .. }));
    assert!(reasons(&none).contains("consented"), "{}", reasons(&none));
    let expired = Req::new("GET", "/docs/intro").run(&p, &consented(DISCLOSURE, NOW), NOW);
    assert!(matches!(expired.verdict, Verdict::Challenge { .. }));
    assert!(
        reasons(&expired).contains("expired"),
        "{}",
        reasons(&expired)
    );
    // The policy's disclosure changed: the old consent is void.
    let changed = remember_device("Skips sign-in for ALL pages on this device for 30 days.");
    let void = Req::new("GET", "/docs/intro").run(&changed, &consented(DISCLOSURE, later), NOW);
    assert!(matches!(void.verdict, Verdict::Challenge { .. }));
    assert!(
        reasons(&void).contains("earlier disclosure"),
        "{}",
        reasons(&void)
    );
    // Never beyond its methods and paths.
    let post = Req::new("POST", "/docs/intro").run(&p, &consented(DISCLOSURE, later), NOW);
    assert!(matches!(post.verdict, Verdict::Challenge { .. }));
    let other = Req::new("GET", "/private").run(&p, &consented(DISCLOSURE, later), NOW);
    assert!(matches!(other.verdict, Verdict::Challenge { .. }));
}

#[test]
fn offer_eligibility_needs_verified_email_and_a_strong_sign_in() {
    let p = remember_device(DISCLOSURE);
    let offer = p
        .optout("remember-device-readonly")
        .unwrap()
        .offer()
        .unwrap()
        .clone();
    assert!(offer
        .eligibility(true, &["pwd".into(), "mfa".into()])
        .is_ok());
    let why = offer.eligibility(false, &["pwd".into()]).unwrap_err();
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(why[0].contains("email"));
    assert!(why[1].contains("mfa"));
}

#[test]
fn an_offer_with_a_webhook_or_too_long_a_duration_is_refused() {
    let text = format!(
        r#"{APP_ROUTE}
[[optout]]
id = "x"
route = "app"
methods = ["GET"]
paths = ["/docs/**"]
waive = ["oidc"]
owner = "o"
reason = "r"
expires = 2027-01-15T00:00:00Z
require_grant = true

[optout.offer]
title = "t"
disclosure = "d"
duration_days = 365
"#
    );
    let r = render(&errors(&text));
    assert!(r.contains("duration_days"), "{r}");
    assert!(r.contains("cannot also need"), "{r}");
}
