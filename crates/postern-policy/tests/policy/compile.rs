//! `Policy::compile` / `Policy::check`: what a config may not say, and where
//! the diagnostics point.

// Test code: a failed fixture should stop the test loudly.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use postern_policy::policy::PathPattern;
use postern_policy::{Config, FactorSet, Policy, Severity};
use std::path::Path;

fn has(diags: &[postern_policy::Diagnostic], field: &str, needle: &str) -> bool {
    diags
        .iter()
        .any(|d| d.field == field && d.message.contains(needle))
}

fn assert_error(extra: &str, field: &str, needle: &str) {
    let e = errors(extra);
    assert!(
        has(&e, field, needle),
        "expected error on `{field}` containing {needle:?}, got:\n{}",
        render(&e)
    );
}

fn assert_warning(extra: &str, field: &str, needle: &str) {
    let w = warnings(extra);
    assert!(
        has(&w, field, needle),
        "expected warning on `{field}` containing {needle:?}, got:\n{}",
        render(&w)
    );
}

#[test]
fn example_compiles_without_diagnostics() {
    let d = diagnostics(&format!("{APP_ROUTE}{HEALTHZ}"));
    assert!(d.is_empty(), "{}", render(&d));
    let p = policy(&format!("{APP_ROUTE}{HEALTHZ}"));
    let r = p.route("app").unwrap();
    assert_eq!(r.host(), "*");
    assert_eq!(r.path_prefix().as_str(), "/");
    assert_eq!(r.upstream(), "echo");
    let mtls = FactorSet::EMPTY.with(postern_policy::Factor::Mtls);
    let jwt = FactorSet::EMPTY.with(postern_policy::Factor::Jwt);
    assert_eq!(r.requirement(), &[mtls, jwt]);
    let o = p.optout("healthz").unwrap();
    assert_eq!(o.route(), "app");
    assert_eq!(o.methods(), ["GET", "HEAD"]);
    assert_eq!(o.waived(), FactorSet::all());
    assert_eq!(o.owner(), "platform-team");
    assert_eq!(
        o.expires(),
        time::macros::datetime!(2027-01-31 00:00:00 UTC)
    );
    assert_eq!(o.source_cidrs().unwrap().len(), 2);
    assert!(matches!(&o.paths()[0], PathPattern::Exact(p) if p.as_str() == "/healthz"));
    assert_eq!(p.upstreams().count(), 1);
    assert_eq!(p.upstream("echo").unwrap().port(), 9000);
    assert_eq!(p.routes().len(), 1);
    assert_eq!(p.optouts().len(), 1);
}

#[test]
fn compile_returns_every_error_not_just_the_first() {
    let text = format!(
        "{APP_ROUTE}{}{}",
        optout("a", r#"["get"]"#, r#"["/x"]"#, ""),
        optout("b", r#"["GET"]"#, r#"["/**"]"#, "")
    );
    let Err(d) = Policy::compile(&config(&text), NOW) else {
        panic!("compiled")
    };
    assert!(
        d.iter().filter(|d| d.severity == Severity::Error).count() >= 2,
        "{}",
        render(&d)
    );
}

#[test]
fn warnings_come_back_with_a_successful_policy() {
    let text = format!(
        "{APP_ROUTE}{}",
        optout(
            "tcp",
            r#"["GET"]"#,
            r#"["/x"]"#,
            r#"source_cidrs = ["0.0.0.0/0"]"#
        )
    );
    let (_, w) = Policy::compile(&config(&text), NOW).unwrap();
    assert_eq!(w.len(), 1, "{}", render(&w));
    assert_eq!(w[0].severity, Severity::Warning);
}

#[test]
fn diagnostic_points_at_file_line_and_column() {
    let text = format!(
        "{APP_ROUTE}{}",
        optout("h", r#"["GET"]"#, r#"["/x"]"#, "").replace("2027-01-31", "2020-01-31")
    );
    let c = config(&text);
    let d = Policy::check(&c, NOW);
    let d = d.iter().find(|d| d.field == "optout[h].expires").unwrap();
    let full = c.source.text.clone();
    let line = full
        .lines()
        .position(|l| l.starts_with("expires = 2020"))
        .unwrap()
        + 1;
    assert_eq!(d.line, line, "{d}");
    assert_eq!(d.column, "expires = ".len() + 1, "{d}");
    assert_eq!(d.file, Path::new("/etc/postern/postern.toml"));
    assert!(d.to_string().starts_with(&format!(
        "/etc/postern/postern.toml:{line}:11: error: `optout[h].expires`"
    )));
}

#[test]
fn optout_without_expiry_is_refused() {
    let rule =
        optout("h", r#"["GET"]"#, r#"["/x"]"#, "").replace("expires = 2027-01-31T00:00:00Z", "");
    assert_error(
        &format!("{APP_ROUTE}{rule}"),
        "optout[h].expires",
        "missing",
    );
}

#[test]
fn expired_optout_is_refused_at_load() {
    let rule = optout("h", r#"["GET"]"#, r#"["/x"]"#, "")
        .replace("2027-01-31T00:00:00Z", "2026-12-01T00:00:00Z");
    assert_error(
        &format!("{APP_ROUTE}{rule}"),
        "optout[h].expires",
        "expired",
    );
}

#[test]
fn optout_living_beyond_max_days_is_refused() {
    let rule = optout("h", r#"["GET"]"#, r#"["/x"]"#, "")
        .replace("2027-01-31T00:00:00Z", "2027-03-02T00:00:01Z");
    assert_error(
        &format!("{APP_ROUTE}{rule}"),
        "optout[h].expires",
        "max_optout_days",
    );
    // Exactly 90 days is fine.
    let rule = optout("h", r#"["GET"]"#, r#"["/x"]"#, "")
        .replace("2027-01-31T00:00:00Z", "2027-03-01T00:00:00Z");
    assert!(errors(&format!("{APP_ROUTE}{rule}")).is_empty());
}

#[test]
fn expiry_without_offset_is_refused() {
    let rule = optout("h", r#"["GET"]"#, r#"["/x"]"#, "")
        .replace("2027-01-31T00:00:00Z", "2027-01-31T00:00:00");
    assert_error(
        &format!("{APP_ROUTE}{rule}"),
        "optout[h].expires",
        "absolute instant",
    );
    let rule =
        optout("h", r#"["GET"]"#, r#"["/x"]"#, "").replace("2027-01-31T00:00:00Z", "2027-01-31");
    assert_error(
        &format!("{APP_ROUTE}{rule}"),
        "optout[h].expires",
        "absolute instant",
    );
}

#[test]
fn expiry_with_offset_is_an_instant() {
    let rule = optout("h", r#"["GET"]"#, r#"["/x"]"#, "")
        .replace("2027-01-31T00:00:00Z", "2027-01-31T02:00:00+02:00");
    let p = policy(&format!("{APP_ROUTE}{rule}"));
    assert_eq!(
        p.optout("h").unwrap().expires(),
        time::macros::datetime!(2027-01-31 00:00:00 UTC)
    );
}

#[test]
fn owner_and_reason_are_required_and_non_empty() {
    let rule = optout("h", r#"["GET"]"#, r#"["/x"]"#, "").replace("owner = \"team\"", "");
    assert_error(&format!("{APP_ROUTE}{rule}"), "optout[h].owner", "missing");
    let rule = optout("h", r#"["GET"]"#, r#"["/x"]"#, "")
        .replace("reason = \"because\"", "reason = \"  \"");
    assert_error(&format!("{APP_ROUTE}{rule}"), "optout[h].reason", "empty");
}

#[test]
fn unknown_route_is_refused() {
    let rule =
        optout("h", r#"["GET"]"#, r#"["/x"]"#, "").replace("route = \"app\"", "route = \"nope\"");
    assert_error(
        &format!("{APP_ROUTE}{rule}"),
        "optout[h].route",
        "unknown route `nope`",
    );
}

#[test]
fn methods_must_be_known_unique_upper_case_and_present() {
    assert_error(
        &format!("{APP_ROUTE}{}", optout("h", r#"["get"]"#, r#"["/x"]"#, "")),
        "optout[h].methods",
        "upper-case",
    );
    assert_error(
        &format!(
            "{APP_ROUTE}{}",
            optout("h", r#"["FETCH"]"#, r#"["/x"]"#, "")
        ),
        "optout[h].methods",
        "unknown method",
    );
    assert_error(
        &format!(
            "{APP_ROUTE}{}",
            optout("h", r#"["GET", "GET"]"#, r#"["/x"]"#, "")
        ),
        "optout[h].methods",
        "twice",
    );
    assert_error(
        &format!("{APP_ROUTE}{}", optout("h", "[]", r#"["/x"]"#, "")),
        "optout[h].methods",
        "no methods",
    );
}

#[test]
fn paths_must_be_present() {
    assert_error(
        &format!("{APP_ROUTE}{}", optout("h", r#"["GET"]"#, "[]", "")),
        "optout[h].paths",
        "no paths",
    );
}

#[test]
fn path_patterns_must_be_in_normal_form() {
    for (p, needle) in [
        ("/a/../b", "normal form"),
        ("/a//b", "normal form"),
        ("/a/%2e/b", "normal form"),
        ("/a%3bb", "normal form"),
        ("/a%2fb", "encoded"),
        ("a", "does not start"),
        ("/a/..;/b", "dot segment"),
    ] {
        assert_error(
            &format!(
                "{APP_ROUTE}{}",
                optout("h", r#"["GET"]"#, &format!("[{p:?}]"), "")
            ),
            "optout[h].paths",
            needle,
        );
    }
}

#[test]
fn wildcard_only_as_final_double_star() {
    for p in ["/a/*", "/a/*/b", "/a*", "/a/**/b", "/a/***", "/*"] {
        assert_error(
            &format!(
                "{APP_ROUTE}{}",
                optout("h", r#"["GET"]"#, &format!("[{p:?}]"), "")
            ),
            "optout[h].paths",
            "*",
        );
    }
    let p = policy(&format!(
        "{APP_ROUTE}{}",
        optout("h", r#"["GET"]"#, r#"["/static/**"]"#, "")
    ));
    assert!(
        matches!(&p.optout("h").unwrap().paths()[0], PathPattern::Prefix(x) if x.as_str() == "/static")
    );
}

#[test]
fn catch_all_optout_is_refused_for_any_method() {
    for methods in [
        r#"["GET"]"#,
        r#"["OPTIONS"]"#,
        r#"["GET", "POST", "PUT", "DELETE"]"#,
    ] {
        assert_error(
            &format!(
                "{APP_ROUTE}{}",
                optout("h", methods, r#"["/x", "/**"]"#, "")
            ),
            "optout[h].paths",
            "globally",
        );
    }
}

#[test]
fn pattern_outside_route_prefix_is_refused() {
    let route = APP_ROUTE.replace("path_prefix = \"/\"", "path_prefix = \"/api\"");
    assert_error(
        &format!("{route}{}", optout("h", r#"["GET"]"#, r#"["/apix"]"#, "")),
        "optout[h].paths",
        "never match",
    );
    assert_error(
        &format!(
            "{route}{}",
            optout("h", r#"["GET"]"#, r#"["/other/**"]"#, "")
        ),
        "optout[h].paths",
        "never match",
    );
    assert!(errors(&format!(
        "{route}{}",
        optout("h", r#"["GET"]"#, r#"["/api/x", "/api"]"#, "")
    ))
    .is_empty());
}

#[test]
fn pattern_covering_whole_route_is_a_warning() {
    let route = APP_ROUTE.replace("path_prefix = \"/\"", "path_prefix = \"/api/v1\"");
    assert_warning(
        &format!(
            "{route}{}",
            optout("h", r#"["GET"]"#, r#"["/api/v1/**"]"#, "")
        ),
        "optout[h].paths",
        "whole prefix",
    );
    assert_warning(
        &format!("{route}{}", optout("h", r#"["GET"]"#, r#"["/api/**"]"#, "")),
        "optout[h].paths",
        "whole prefix",
    );
    assert!(errors(&format!(
        "{route}{}",
        optout("h", r#"["GET"]"#, r#"["/api/**"]"#, "")
    ))
    .is_empty());
}

#[test]
fn bad_cidrs_are_refused_bare_ips_accepted() {
    assert_error(
        &format!(
            "{APP_ROUTE}{}",
            optout(
                "h",
                r#"["GET"]"#,
                r#"["/x"]"#,
                r#"source_cidrs = ["10.0.0.0/33"]"#
            )
        ),
        "optout[h].source_cidrs[0]",
        "not a CIDR",
    );
    assert_error(
        &format!(
            "{APP_ROUTE}{}",
            optout(
                "h",
                r#"["GET"]"#,
                r#"["/x"]"#,
                r#"source_cidrs = ["10.0.0.1/8"]"#
            )
        ),
        "optout[h].source_cidrs[0]",
        "host bits",
    );
    let p = policy(&format!(
        "{APP_ROUTE}{}",
        optout(
            "h",
            r#"["GET"]"#,
            r#"["/x"]"#,
            r#"source_cidrs = ["10.1.2.3", "::1"]"#
        )
    ));
    let nets = p.optout("h").unwrap().source_cidrs().unwrap();
    assert_eq!(nets[0].to_string(), "10.1.2.3/32");
    assert_eq!(nets[1].to_string(), "::1/128");
}

#[test]
fn trusted_proxies_are_parsed_and_checked() {
    let with = |proxies: &str| {
        let text = PREAMBLE.replace("[tls]", &format!("trusted_proxies = {proxies}\n[tls]"));
        Config::parse(Path::new("p.toml"), &format!("{text}{APP_ROUTE}")).unwrap()
    };
    let (p, _) = Policy::compile(&with(r#"["10.0.0.0/8", "192.168.1.1"]"#), NOW).unwrap();
    assert_eq!(p.trusted_proxies().len(), 2);
    assert_eq!(p.trusted_proxies()[1].to_string(), "192.168.1.1/32");
    let d = Policy::check(&with(r#"["proxy.local"]"#), NOW);
    assert!(
        has(&d, "gateway.trusted_proxies[0]", "not a CIDR"),
        "{}",
        render(&d)
    );
}

#[test]
fn unknown_factors_are_refused() {
    assert_error(
        &APP_ROUTE.replace(r#"[["mtls"], ["jwt"]]"#, r#"[["mtls"], ["password"]]"#),
        "route[app].require[1]",
        "unknown factor",
    );
    assert_error(
        &format!("{APP_ROUTE}{}", optout("h", r#"["GET"]"#, r#"["/x"]"#, ""))
            .replace("waive = \"all\"", "waive = [\"sms\"]"),
        "optout[h].waive",
        "unknown factor",
    );
    assert_error(
        &format!("{APP_ROUTE}{}", optout("h", r#"["GET"]"#, r#"["/x"]"#, ""))
            .replace("waive = \"all\"", "waive = \"everything\""),
        "optout[h].waive",
        "\"all\"",
    );
    assert_error(
        &format!("{APP_ROUTE}{}", optout("h", r#"["GET"]"#, r#"["/x"]"#, ""))
            .replace("waive = \"all\"", "waive = []"),
        "optout[h].waive",
        "nothing",
    );
}

#[test]
fn empty_requirements_are_refused() {
    assert_error(
        &APP_ROUTE.replace(r#"[["mtls"], ["jwt"]]"#, "[]"),
        "route[app].require",
        "no alternative",
    );
    assert_error(
        &APP_ROUTE.replace(r#"[["mtls"], ["jwt"]]"#, r#"[["mtls"], []]"#),
        "route[app].require[1]",
        "every request",
    );
}

#[test]
fn waiving_nothing_the_route_requires_is_a_warning() {
    let route = APP_ROUTE.replace(r#"[["mtls"], ["jwt"]]"#, r#"[["mtls"]]"#);
    let rule =
        optout("h", r#"["GET"]"#, r#"["/x"]"#, "").replace("waive = \"all\"", "waive = [\"jwt\"]");
    assert_warning(&format!("{route}{rule}"), "optout[h].waive", "no effect");
}

#[test]
fn duplicate_ids_and_names_are_refused() {
    let second_route = APP_ROUTE.replace("path_prefix = \"/\"", "path_prefix = \"/b\"");
    assert_error(
        &format!("{APP_ROUTE}{second_route}"),
        "route[app].id",
        "duplicate route id",
    );
    let rules = format!(
        "{}{}",
        optout("h", r#"["GET"]"#, r#"["/x"]"#, ""),
        optout("h", r#"["GET"]"#, r#"["/y"]"#, "")
    );
    assert_error(
        &format!("{APP_ROUTE}{rules}"),
        "optout[h].id",
        "duplicate opt-out id",
    );
    let up = "[[upstream]]\nname = \"echo\"\nurl = \"http://127.0.0.1:9001\"\n";
    assert_error(
        &format!("{up}{APP_ROUTE}"),
        "upstream[echo].name",
        "duplicate upstream",
    );
}

#[test]
fn two_routes_on_the_same_host_and_prefix_are_refused() {
    let other = APP_ROUTE.replace("id = \"app\"", "id = \"other\"");
    assert_error(
        &format!("{APP_ROUTE}{other}"),
        "route[other].path_prefix",
        "already covers",
    );
}

#[test]
fn route_must_name_a_known_upstream() {
    assert_error(
        &APP_ROUTE.replace("upstream = \"echo\"", "upstream = \"nope\""),
        "route[app].upstream",
        "unknown upstream `nope`",
    );
}

#[test]
fn route_prefix_and_host_are_checked() {
    assert_error(
        &APP_ROUTE.replace("path_prefix = \"/\"", "path_prefix = \"/api/\""),
        "route[app].path_prefix",
        "ends with",
    );
    assert_error(
        &APP_ROUTE.replace("path_prefix = \"/\"", "path_prefix = \"/a/../b\""),
        "route[app].path_prefix",
        "normal form",
    );
    assert_error(
        &APP_ROUTE.replace("path_prefix = \"/\"", "path_prefix = \"/api/*\""),
        "route[app].path_prefix",
        "wildcard",
    );
    assert_error(
        &APP_ROUTE.replace("host = \"*\"", "host = \"*.example.com\""),
        "route[app].host",
        "wildcard",
    );
    assert_error(
        &APP_ROUTE.replace("host = \"*\"", "host = \"example.com:443\""),
        "route[app].host",
        "port",
    );
    let p = policy(&APP_ROUTE.replace("host = \"*\"", "host = \"App.Example.COM\""));
    assert_eq!(p.route("app").unwrap().host(), "app.example.com");
}

#[test]
fn upstream_urls_are_checked() {
    for bad in [
        "ftp://x:1",
        "http://",
        "http://h:0",
        "http://h:99999",
        "http://u@h:1",
        "127.0.0.1:9000",
        "http://h:1?x",
        "http://h:+80",
    ] {
        let text = PREAMBLE.replace("http://127.0.0.1:9000", bad);
        let c = Config::parse(Path::new("p.toml"), &format!("{text}{APP_ROUTE}")).unwrap();
        let d = Policy::check(&c, NOW);
        assert!(
            has(&d, "upstream[echo].url", "not a valid upstream URL"),
            "{bad}: {}",
            render(&d)
        );
    }
    for good in [
        "https://svc.internal",
        "http://[::1]:8080/base",
        "http://svc:80",
    ] {
        let text = PREAMBLE.replace("http://127.0.0.1:9000", good);
        let c = Config::parse(Path::new("p.toml"), &format!("{text}{APP_ROUTE}")).unwrap();
        assert!(Policy::check(&c, NOW).is_empty(), "{good}");
    }
}

#[test]
fn time_windows_are_checked() {
    let w = |s: &str, e: &str| {
        format!(
            "{APP_ROUTE}{}",
            optout(
                "h",
                r#"["GET"]"#,
                r#"["/x"]"#,
                &format!("time_window = {{ start = \"{s}\", end = \"{e}\" }}")
            )
        )
    };
    assert_error(
        &w("09:00", "09:00"),
        "optout[h].time_window",
        "start equals end",
    );
    assert_error(&w("24:00", "09:00"), "optout[h].time_window.start", "HH:MM");
    assert_error(&w("09:00", "9:30"), "optout[h].time_window.end", "HH:MM");
    assert!(errors(&w("22:00", "06:00")).is_empty());
}

#[test]
fn webhook_needs_exactly_one_readable_non_empty_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let empty = dir.path().join("empty.secret");
    std::fs::write(&empty, "\n").unwrap();
    let hook = |body: &str| {
        format!(
            "{APP_ROUTE}{}[optout.webhook]\n{body}\n",
            optout("h", r#"["POST"]"#, r#"["/hook"]"#, "")
        )
    };
    assert_error(&hook(""), "optout[h].webhook", "one of");
    assert_error(
        &hook("secret_file = \"a\"\nsecret_env = \"B\""),
        "optout[h].webhook",
        "only one",
    );
    assert_error(
        &hook("secret_file = \"/nonexistent/secret\""),
        "optout[h].webhook.secret_file",
        "cannot read",
    );
    assert_error(
        &hook(&format!("secret_file = {:?}", empty.display().to_string())),
        "optout[h].webhook",
        "empty",
    );
    assert_error(
        &hook("secret_env = \"POSTERN_TEST_UNSET_VARIABLE\""),
        "optout[h].webhook.secret_env",
        "not set",
    );
    let p = policy(&hook(&format!(
        "secret_file = {:?}\nsignature_header = \"X-Sig\"",
        secret.display().to_string()
    )));
    let spec = p.optout("h").unwrap().webhook().unwrap();
    assert_eq!(spec.secret, b"s3cret");
    assert_eq!(&*spec.rule, "h");
    assert_eq!(p.webhook_headers(), ["x-postern-timestamp", "x-sig"]);
}

#[test]
fn webhook_secret_file_is_resolved_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook.secret"), "abc").unwrap();
    let text = format!(
        "{PREAMBLE}{APP_ROUTE}{}[optout.webhook]\nsecret_file = \"hook.secret\"\n",
        optout("h", r#"["POST"]"#, r#"["/hook"]"#, "")
    );
    let c = Config::parse(&dir.path().join("postern.toml"), &text).unwrap();
    let (p, _) = Policy::compile(&c, NOW).unwrap();
    assert_eq!(p.optout("h").unwrap().webhook().unwrap().secret, b"abc");
}

#[test]
fn webhook_secret_from_environment() {
    std::env::set_var("POSTERN_TEST_HOOK_SECRET", "from-env");
    let text = format!(
        "{APP_ROUTE}{}[optout.webhook]\nsecret_env = \"POSTERN_TEST_HOOK_SECRET\"\n",
        optout("h", r#"["POST"]"#, r#"["/hook"]"#, "")
    );
    let p = policy(&text);
    assert_eq!(
        p.optout("h").unwrap().webhook().unwrap().secret,
        b"from-env"
    );
}

#[test]
fn jwt_none_and_hmac_algorithms_are_refused() {
    for (alg, needle) in [
        ("none", "unsigned"),
        ("HS256", "HMAC"),
        ("hs512", "HMAC"),
        ("PS256", "unsupported"),
    ] {
        let text = PREAMBLE.replace(
            r#"algorithms = ["ES256"]"#,
            &format!("algorithms = [\"RS256\", {alg:?}]"),
        );
        let c = Config::parse(Path::new("p.toml"), &format!("{text}{APP_ROUTE}")).unwrap();
        let d = Policy::check(&c, NOW);
        assert!(
            has(&d, "jwt.algorithms[1]", needle),
            "{alg}: {}",
            render(&d)
        );
        assert!(d.iter().all(|d| d.line > 0), "{}", render(&d));
    }
    let text = PREAMBLE.replace(r#"algorithms = ["ES256"]"#, "algorithms = []");
    let c = Config::parse(Path::new("p.toml"), &format!("{text}{APP_ROUTE}")).unwrap();
    assert!(has(
        &Policy::check(&c, NOW),
        "jwt.algorithms",
        "no algorithm"
    ));
}

#[test]
fn route_no_alternative_can_meet_is_a_warning() {
    let text = PREAMBLE.replace("client_ca = [\"ca.pem\"]\n", "");
    let route = APP_ROUTE.replace(r#"[["mtls"], ["jwt"]]"#, r#"[["mtls"]]"#);
    let c = Config::parse(Path::new("p.toml"), &format!("{text}{route}")).unwrap();
    let d = Policy::check(&c, NOW);
    assert!(
        has(&d, "route[app].require", "no alternative can be met"),
        "{}",
        render(&d)
    );
    assert!(d.iter().all(|d| d.severity == Severity::Warning));
}

#[test]
fn an_oidc_alternative_without_an_oidc_section_is_flagged() {
    let w = warnings(
        r#"
[[route]]
id = "docs"
host = "*"
path_prefix = "/docs"
upstream = "echo"
require = [["mtls"], ["oidc"]]
"#,
    );
    let r = render(&w);
    assert!(
        r.contains("route[docs].require") && r.contains("[oidc]"),
        "{r}"
    );
}

#[test]
fn worker_placement_is_first_idle_unless_spread_is_asked_for() {
    use postern_policy::config::Placement;
    let with = |line: &str| {
        let text = PREAMBLE.replace("[tls]", &format!("{line}\n[tls]"));
        Config::parse(Path::new("p.toml"), &format!("{text}{APP_ROUTE}"))
    };
    assert_eq!(with("").unwrap().gateway.placement, Placement::FirstIdle);
    assert_eq!(
        with(r#"placement = "first-idle""#)
            .unwrap()
            .gateway
            .placement,
        Placement::FirstIdle
    );
    assert_eq!(
        with(r#"placement = "spread""#).unwrap().gateway.placement,
        Placement::Spread
    );
    let d = with(r#"placement = "round-robin""#).unwrap_err();
    let text = render(&d);
    assert!(
        text.contains("round-robin") && text.contains("p.toml:"),
        "{text}"
    );
}
