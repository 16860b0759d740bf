//! What changed between two configs' opt-outs, in words an approver can
//! judge: rule added, removed, widened or narrowed, and whether the change
//! needs new approvals (exactly when the opt-out digest changed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::IpNet;
use postern_policy::Config;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::digest::{CanonOptOut, CanonRoute, CanonWindow, Canonical};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Lets more through than before.
    Widened,
    /// A new rule or route.
    Added,
    /// Changes what is let through in a way that is neither simply wider nor
    /// narrower (judge it as a widening).
    Changed,
    /// Lets less through.
    Narrowed,
    /// A rule or route is gone.
    Removed,
    /// Same rule, other bookkeeping (owner, reason).
    Annotated,
}

impl ChangeKind {
    pub fn label(self) -> &'static str {
        match self {
            ChangeKind::Widened => "WIDENED",
            ChangeKind::Added => "ADDED",
            ChangeKind::Changed => "CHANGED",
            ChangeKind::Narrowed => "narrowed",
            ChangeKind::Removed => "removed",
            ChangeKind::Annotated => "note",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    /// `optout `id``, `route `id``, `gateway.trusted_proxies`.
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct PolicyDiff {
    pub old_digest: String,
    pub new_digest: String,
    pub changes: Vec<Change>,
}

impl PolicyDiff {
    /// New approvals are needed exactly when the opt-out digest changed.
    pub fn needs_approval(&self) -> bool {
        self.old_digest != self.new_digest
    }

    pub fn widens(&self) -> bool {
        self.changes.iter().any(|c| {
            matches!(
                c.kind,
                ChangeKind::Widened | ChangeKind::Added | ChangeKind::Changed
            )
        })
    }

    fn count(&self, k: ChangeKind) -> usize {
        self.changes.iter().filter(|c| c.kind == k).count()
    }
}

impl fmt::Display for PolicyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            writeln!(f, "no opt-out changes")?;
        } else {
            let parts: Vec<String> = [
                ChangeKind::Widened,
                ChangeKind::Added,
                ChangeKind::Changed,
                ChangeKind::Narrowed,
                ChangeKind::Removed,
                ChangeKind::Annotated,
            ]
            .iter()
            .filter(|k| self.count(**k) > 0)
            .map(|k| format!("{} {}", self.count(*k), k.label().to_ascii_lowercase()))
            .collect();
            writeln!(f, "opt-out changes: {}", parts.join(", "))?;
            for c in &self.changes {
                writeln!(f, "  {:<9} {}: {}", c.kind.label(), c.subject, c.detail)?;
            }
        }
        writeln!(f, "old digest: {}", self.old_digest)?;
        writeln!(f, "new digest: {}", self.new_digest)?;
        if self.needs_approval() {
            write!(f, "needs new approvals: yes (the opt-out digest changed)")
        } else {
            write!(
                f,
                "needs new approvals: no (same opt-out digest; existing approvals still hold)"
            )
        }
    }
}

/// Compare two configs' opt-out surfaces. Pure.
pub fn diff(old: &Config, new: &Config) -> PolicyDiff {
    diff_canonical(&Canonical::of(old), &Canonical::of(new))
}

pub fn diff_canonical(old: &Canonical, new: &Canonical) -> PolicyDiff {
    let mut out = Vec::new();
    let proxies = "gateway.trusted_proxies".to_string();
    for p in new
        .trusted_proxies
        .iter()
        .filter(|p| !old.trusted_proxies.contains(p))
    {
        out.push(change(
            ChangeKind::Widened,
            &proxies,
            format!(
                "x-forwarded-for now believed from {p} (source CIDRs can be claimed through it)"
            ),
        ));
    }
    for p in old
        .trusted_proxies
        .iter()
        .filter(|p| !new.trusted_proxies.contains(p))
    {
        out.push(change(
            ChangeKind::Narrowed,
            &proxies,
            format!("{p} no longer trusted"),
        ));
    }

    let old_routes: BTreeMap<&str, &CanonRoute> =
        old.routes.iter().map(|r| (r.id.as_str(), r)).collect();
    let new_routes: BTreeMap<&str, &CanonRoute> =
        new.routes.iter().map(|r| (r.id.as_str(), r)).collect();
    for (id, r) in &new_routes {
        match old_routes.get(id) {
            None => out.push(change(
                ChangeKind::Added,
                &format!("route `{id}`"),
                format!(
                    "new route (host {}, prefix {}): changes which requests reach other routes' opt-outs",
                    r.host, r.path_prefix
                ),
            )),
            Some(o) => diff_route(&mut out, id, o, r),
        }
    }
    for id in old_routes.keys().filter(|id| !new_routes.contains_key(*id)) {
        out.push(change(
            ChangeKind::Changed,
            &format!("route `{id}`"),
            "route removed: its requests now fall to other routes (and their opt-outs)".into(),
        ));
    }

    let old_rules: BTreeMap<&str, &CanonOptOut> =
        old.optouts.iter().map(|r| (r.id.as_str(), r)).collect();
    let new_rules: BTreeMap<&str, &CanonOptOut> =
        new.optouts.iter().map(|r| (r.id.as_str(), r)).collect();
    for (id, r) in &new_rules {
        match old_rules.get(id) {
            None => out.push(change(
                ChangeKind::Added,
                &format!("optout `{id}`"),
                format!(
                    "new rule on route `{}`: {} {} waiving {}{}",
                    r.route,
                    r.methods.join(","),
                    r.paths.join(" "),
                    r.waive.join("+"),
                    r.expires
                        .as_deref()
                        .map(|e| format!(", expires {e}"))
                        .unwrap_or_default()
                ),
            )),
            Some(o) => diff_rule(&mut out, id, o, r),
        }
    }
    for id in old_rules.keys().filter(|id| !new_rules.contains_key(*id)) {
        out.push(change(
            ChangeKind::Removed,
            &format!("optout `{id}`"),
            "rule removed: its requests need full authentication again".into(),
        ));
    }
    out.sort_by_key(|c| c.kind);
    PolicyDiff {
        old_digest: old.digest(),
        new_digest: new.digest(),
        changes: out,
    }
}

fn change(kind: ChangeKind, subject: &str, detail: String) -> Change {
    Change {
        kind,
        subject: subject.to_string(),
        detail,
    }
}

fn diff_route(out: &mut Vec<Change>, id: &str, o: &CanonRoute, n: &CanonRoute) {
    let s = format!("route `{id}`");
    if o.host != n.host {
        let kind = if n.host == "*" {
            ChangeKind::Widened
        } else {
            ChangeKind::Changed
        };
        out.push(change(kind, &s, format!("host {} -> {}", o.host, n.host)));
    }
    if o.path_prefix != n.path_prefix {
        out.push(change(
            ChangeKind::Changed,
            &s,
            format!("path prefix {} -> {}", o.path_prefix, n.path_prefix),
        ));
    }
    if o.require != n.require {
        let show = |r: &[Vec<String>]| {
            r.iter()
                .map(|a| a.join("+"))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        out.push(change(
            ChangeKind::Changed,
            &s,
            format!(
                "requirement {} -> {} (what a partial waiver leaves to prove)",
                show(&o.require),
                show(&n.require)
            ),
        ));
    }
    match (&o.identities, &n.identities) {
        (Some(_), None) => out.push(change(
            ChangeKind::Widened,
            &s,
            "identity allow-list removed".into(),
        )),
        (None, Some(_)) => out.push(change(
            ChangeKind::Narrowed,
            &s,
            "identity allow-list added".into(),
        )),
        (Some(a), Some(b)) if a != b => {
            let added: Vec<&String> = b.iter().filter(|x| !a.contains(x)).collect();
            let kind = if added.is_empty() {
                ChangeKind::Narrowed
            } else {
                ChangeKind::Widened
            };
            out.push(change(
                kind,
                &s,
                format!("identities {} -> {}", a.join(","), b.join(",")),
            ));
        }
        _ => {}
    }
}

/// Does pattern `p` (`/x` or `/x/**`) cover every path `q` covers?
fn pattern_covers(p: &str, q: &str) -> bool {
    if p == q {
        return true;
    }
    let Some(base) = p.strip_suffix("/**") else {
        return false;
    };
    let q_base = q.strip_suffix("/**").unwrap_or(q);
    // `/a/**` covers everything strictly below `/a/`.
    q_base
        .strip_prefix(base)
        .is_some_and(|rest| rest.starts_with('/') && (rest.len() > 1 || q.ends_with("/**")))
}

fn nets(v: &[String]) -> Vec<Option<IpNet>> {
    v.iter().map(|s| s.parse::<IpNet>().ok()).collect()
}

fn net_covered(n: &str, by: &[String]) -> bool {
    let Ok(n) = n.parse::<IpNet>() else {
        return by.iter().any(|b| b == n);
    };
    nets(by).into_iter().flatten().any(|b| b.contains(&n))
}

fn minutes(w: &CanonWindow) -> Option<BTreeSet<u16>> {
    let p = |s: &str| -> Option<u16> {
        let (h, m) = s.split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = (p(&w.start)?, p(&w.end)?);
    Some(if a < b {
        (a..b).collect()
    } else {
        (a..1440).chain(0..b).collect()
    })
}

fn instant(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

fn diff_rule(out: &mut Vec<Change>, id: &str, o: &CanonOptOut, n: &CanonOptOut) {
    let s = format!("optout `{id}`");
    let mut push = |kind, detail: String| out.push(change(kind, &s, detail));
    if o.route != n.route {
        push(
            ChangeKind::Widened,
            format!("moved from route `{}` to route `{}`", o.route, n.route),
        );
    }
    for m in n.methods.iter().filter(|m| !o.methods.contains(m)) {
        push(ChangeKind::Widened, format!("new method {m}"));
    }
    for m in o.methods.iter().filter(|m| !n.methods.contains(m)) {
        push(ChangeKind::Narrowed, format!("method {m} dropped"));
    }
    for p in &n.paths {
        if !o.paths.iter().any(|q| pattern_covers(q, p)) {
            let broader: Vec<&String> = o.paths.iter().filter(|q| pattern_covers(p, q)).collect();
            if broader.is_empty() {
                push(ChangeKind::Widened, format!("new path {p}"));
            } else {
                push(
                    ChangeKind::Widened,
                    format!(
                        "broader path pattern {p} (was {})",
                        broader
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                );
            }
        }
    }
    for p in &o.paths {
        if !n.paths.iter().any(|q| pattern_covers(q, p)) {
            push(ChangeKind::Narrowed, format!("path {p} no longer covered"));
        }
    }
    let more: Vec<&String> = n.waive.iter().filter(|f| !o.waive.contains(f)).collect();
    let fewer: Vec<&String> = o.waive.iter().filter(|f| !n.waive.contains(f)).collect();
    if !more.is_empty() {
        push(
            ChangeKind::Widened,
            format!(
                "waives more factors: {} (was {})",
                n.waive.join("+"),
                o.waive.join("+")
            ),
        );
    } else if !fewer.is_empty() {
        push(
            ChangeKind::Narrowed,
            format!(
                "waives fewer factors: {} (was {})",
                n.waive.join("+"),
                o.waive.join("+")
            ),
        );
    }
    if o.expires != n.expires {
        let (a, b) = (
            o.expires.as_deref().and_then(instant),
            n.expires.as_deref().and_then(instant),
        );
        let text = format!(
            "expiry {} -> {}",
            o.expires.as_deref().unwrap_or("none"),
            n.expires.as_deref().unwrap_or("none")
        );
        match (a, b) {
            (Some(a), Some(b)) if b > a => push(ChangeKind::Widened, format!("later {text}")),
            (Some(_), Some(_)) => push(ChangeKind::Narrowed, format!("earlier {text}")),
            _ => push(ChangeKind::Changed, text),
        }
    }
    match (&o.source_cidrs, &n.source_cidrs) {
        (Some(a), None) => push(
            ChangeKind::Widened,
            format!("source CIDR restriction removed (was {})", a.join(", ")),
        ),
        (None, Some(b)) => push(
            ChangeKind::Narrowed,
            format!("now only from {}", b.join(", ")),
        ),
        (Some(a), Some(b)) => {
            for c in b.iter().filter(|c| !net_covered(c, a)) {
                push(ChangeKind::Widened, format!("new or wider source CIDR {c}"));
            }
            for c in a.iter().filter(|c| !net_covered(c, b)) {
                push(
                    ChangeKind::Narrowed,
                    format!("source CIDR {c} dropped or narrowed"),
                );
            }
        }
        (None, None) => {}
    }
    match (&o.time_window, &n.time_window) {
        (Some(a), None) => push(
            ChangeKind::Widened,
            format!(
                "time window {}-{} UTC removed: applies at any hour",
                a.start, a.end
            ),
        ),
        (None, Some(b)) => push(
            ChangeKind::Narrowed,
            format!("now only within {}-{} UTC", b.start, b.end),
        ),
        (Some(a), Some(b)) if a != b => {
            let text = format!(
                "time window {}-{} -> {}-{} UTC",
                a.start, a.end, b.start, b.end
            );
            match (minutes(a), minutes(b)) {
                (Some(x), Some(y)) if y.is_subset(&x) => push(ChangeKind::Narrowed, text),
                (Some(_), Some(_)) => push(ChangeKind::Widened, format!("wider {text}")),
                _ => push(ChangeKind::Changed, text),
            }
        }
        _ => {}
    }
    match (&o.webhook, &n.webhook) {
        (Some(_), None) => push(
            ChangeKind::Widened,
            "webhook signature check removed: unsigned requests pass".into(),
        ),
        (None, Some(_)) => push(
            ChangeKind::Narrowed,
            "now requires a webhook signature".into(),
        ),
        (Some(a), Some(b)) => {
            if a.secret_file != b.secret_file || a.secret_env != b.secret_env {
                let loc = |w: &crate::digest::CanonWebhook| match (&w.secret_file, &w.secret_env) {
                    (Some(f), _) => format!("file {f}"),
                    (None, Some(e)) => format!("env {e}"),
                    (None, None) => "nowhere".to_string(),
                };
                push(
                    ChangeKind::Changed,
                    format!("webhook secret now from {} (was {})", loc(b), loc(a)),
                );
            }
            if b.tolerance_secs > a.tolerance_secs {
                push(
                    ChangeKind::Widened,
                    format!(
                        "webhook replay window {} s -> {} s",
                        a.tolerance_secs, b.tolerance_secs
                    ),
                );
            } else if b.tolerance_secs < a.tolerance_secs {
                push(
                    ChangeKind::Narrowed,
                    format!(
                        "webhook replay window {} s -> {} s",
                        a.tolerance_secs, b.tolerance_secs
                    ),
                );
            }
            if a.signature_header != b.signature_header || a.timestamp_header != b.timestamp_header
            {
                push(
                    ChangeKind::Changed,
                    format!(
                        "webhook headers {}/{} -> {}/{}",
                        a.signature_header,
                        a.timestamp_header,
                        b.signature_header,
                        b.timestamp_header
                    ),
                );
            }
        }
        (None, None) => {}
    }
    if o.allow_upgrade != n.allow_upgrade {
        if n.allow_upgrade {
            push(ChangeKind::Widened, "may now upgrade (WebSocket)".into());
        } else {
            push(ChangeKind::Narrowed, "may no longer upgrade".into());
        }
    }
    if o.require_grant != n.require_grant {
        if n.require_grant {
            push(
                ChangeKind::Narrowed,
                "now only with a grant in the client certificate".into(),
            );
        } else {
            push(
                ChangeKind::Widened,
                "no longer requires a grant in the client certificate".into(),
            );
        }
    }
    if o.owner != n.owner {
        push(
            ChangeKind::Annotated,
            format!(
                "owner {} -> {}",
                o.owner.as_deref().unwrap_or("none"),
                n.owner.as_deref().unwrap_or("none")
            ),
        );
    }
    if o.reason != n.reason {
        push(ChangeKind::Annotated, "reason reworded".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::tests::{cfg, BASE, WIDENINGS};

    fn kinds(old: &str, new: &str) -> PolicyDiff {
        diff(&cfg(old), &cfg(new))
    }

    #[test]
    fn identical_configs_have_no_changes_and_need_no_approval() {
        let d = kinds(BASE, BASE);
        assert!(d.changes.is_empty());
        assert!(!d.needs_approval());
        assert!(d.to_string().contains("needs new approvals: no"));
    }

    #[test]
    fn every_widening_is_reported_as_such() {
        for (from, to) in WIDENINGS {
            let d = kinds(BASE, &BASE.replacen(from, to, 1));
            assert!(d.needs_approval(), "{from} -> {to}");
            assert!(!d.changes.is_empty(), "{from} -> {to}: no change listed");
            if to.contains("require_grant") {
                // Adding the grant requirement narrows; dropping it widens.
                let back = kinds(&BASE.replacen(from, to, 1), BASE);
                assert!(back.widens(), "{back}");
            } else if !to.contains("owner") {
                assert!(d.widens(), "{from} -> {to}: {d}");
            }
        }
    }

    #[test]
    fn widening_details_read_as_english() {
        let d = kinds(
            &BASE.replace("\"/status/**\"", "\"/status/v1/**\""),
            &BASE
                .replace(
                    "methods = [\"GET\", \"HEAD\"]",
                    "methods = [\"GET\", \"HEAD\", \"POST\"]",
                )
                .replace(
                    "source_cidrs = [\"127.0.0.0/8\", \"::1/128\"]",
                    "source_cidrs = [\"0.0.0.0/0\"]",
                )
                .replace(
                    "expires = 2027-01-31T00:00:00Z\nsource",
                    "expires = 2027-03-01T00:00:00Z\nsource",
                ),
        );
        let text = d.to_string();
        for want in [
            "WIDENED   optout `healthz`: new method POST",
            "WIDENED   optout `healthz`: broader path pattern /status/** (was /status/v1/**)",
            "WIDENED   optout `healthz`: new or wider source CIDR 0.0.0.0/0",
            "WIDENED   optout `healthz`: later expiry 2027-01-31T00:00:00Z -> 2027-03-01T00:00:00Z",
            "narrowed  optout `healthz`: source CIDR ::1/128 dropped or narrowed",
            "needs new approvals: yes",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn narrowing_is_reported_as_narrowing() {
        let d = kinds(
            BASE,
            &BASE
                .replace("methods = [\"GET\", \"HEAD\"]", "methods = [\"GET\"]")
                .replace("\"/status/**\"", "\"/status/x\"")
                .replace(
                    "expires = 2027-01-31T00:00:00Z\nsource",
                    "expires = 2027-01-01T00:00:00Z\nsource",
                )
                .replace("end = \"18:00\"", "end = \"12:00\""),
        );
        assert!(d.needs_approval());
        assert!(!d.widens(), "{d}");
        assert_eq!(d.count(ChangeKind::Narrowed), 4, "{d}");
    }

    #[test]
    fn rules_added_and_removed() {
        let without_hook = BASE
            .split("[[optout]]\nid = \"hook\"")
            .next()
            .unwrap()
            .to_string();
        let d = kinds(&without_hook, BASE);
        assert!(d
            .changes
            .iter()
            .any(|c| c.kind == ChangeKind::Added && c.subject == "optout `hook`"));
        let d = kinds(BASE, &without_hook);
        assert!(d.changes.iter().any(|c| c.kind == ChangeKind::Removed));
        assert!(!d.widens());
    }

    #[test]
    fn pattern_coverage() {
        assert!(pattern_covers("/a/**", "/a/b"));
        assert!(pattern_covers("/a/**", "/a/b/**"));
        assert!(pattern_covers("/a/**", "/a/**"));
        assert!(!pattern_covers("/a/**", "/a"));
        assert!(!pattern_covers("/a/**", "/ab"));
        assert!(!pattern_covers("/a/b/**", "/a/**"));
        assert!(!pattern_covers("/a", "/a/**"));
    }
}
