//! The compiled policy: validated, typed rules and a matcher that does not
//! scan rules linearly.
//!
//! [`Policy::compile`] is the one place where configuration becomes typed
//! rules; after it, a [`Route`] or an [`OptOutRule`] cannot be in an invalid
//! state (parse, don't validate twice). What it refuses, and why:
//! - an opt-out without owner, reason or expiry, already expired, or living
//!   longer than `gateway.max_optout_days` (invariant 2: every opt-out is
//!   narrow, owned and time-boxed);
//! - a catch-all pattern (`/**`) in any opt-out, whatever its methods
//!   (invariant 1: no rule may switch authentication off globally);
//! - path patterns not in normal form: a rule for `/a/../b` or `/A%2fb` could
//!   never match what the normalizer produces, and would hide the intent;
//! - `none` and `HS*` JWT algorithms (unsigned tokens; shared-secret tokens
//!   that anyone holding the verification key can forge);
//! - webhook rules without a readable, non-empty secret.
//!
//! The matcher indexes routes by host (exact map, then `*`) and by path prefix
//! (a trie over path segments), and opt-out rules by (route, method) into an
//! exact-path map plus a prefix trie, so a decision costs a few hash lookups
//! per path segment whatever the number of rules.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use ipnet::IpNet;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use toml::Spanned;

use crate::config::{Config, Diagnostic, LineIndex, OptOutConfig, RouteConfig, Severity, Waive};
use crate::factor::{Factor, FactorSet};
use crate::normalize::{normalize_path, NormalizedPath};

/// A webhook check, with its secret loaded.
pub struct WebhookSpec {
    pub rule: Arc<str>,
    pub signature_header: String,
    pub timestamp_header: String,
    pub tolerance_secs: u64,
    pub secret: Vec<u8>,
}

impl fmt::Debug for WebhookSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSpec")
            .field("rule", &self.rule)
            .field("signature_header", &self.signature_header)
            .field("timestamp_header", &self.timestamp_header)
            .field("tolerance_secs", &self.tolerance_secs)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The compiled, validated policy. Built once per load; shared behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    routes: Vec<Route>,
    route_ids: HashMap<Arc<str>, usize>,
    /// Routes of an exact host, by path prefix.
    routes_by_host: HashMap<Box<str>, SegmentTrie<usize>>,
    /// Routes of host `*`, by path prefix.
    routes_any_host: SegmentTrie<usize>,
    optouts: Vec<OptOutRule>,
    optout_ids: HashMap<Arc<str>, usize>,
    /// Per route (by index): method → rule index.
    optout_index: Vec<HashMap<Box<str>, RuleIndex>>,
    trusted_proxies: Vec<IpNet>,
    upstreams: Vec<Upstream>,
    webhook_headers: Vec<String>,
    /// The compiled `[risk]` section; `None`: every request scores 0.
    risk: Option<crate::risk::RiskModel>,
}

/// A compiled route: which requests it covers and what they must prove.
#[derive(Debug, Clone)]
pub struct Route {
    pub(crate) id: Arc<str>,
    host: Arc<str>,
    path_prefix: NormalizedPath,
    pub(crate) upstream: Arc<str>,
    /// Never empty; no alternative is empty.
    pub(crate) require: Arc<[FactorSet]>,
    identities: Option<HashSet<String>>,
    identities_sorted: Option<Vec<String>>,
    allow_upgrade: bool,
    /// Acceptable `acr` values for session-authenticated requests (step-up).
    pub(crate) step_up_acr: Option<Vec<String>>,
    /// "route `x` requires a or b; verified: " (reason text, built once).
    pub(crate) requires_text: Box<str>,
}

impl Route {
    /// Acceptable `acr` values for session-authenticated requests, if the
    /// route demands step-up.
    pub fn step_up_acr(&self) -> Option<&[String]> {
        self.step_up_acr.as_deref()
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    /// Lower-case host name, or `*`.
    pub fn host(&self) -> &str {
        &self.host
    }
    /// Normalized, without a trailing slash unless it is `/`.
    pub fn path_prefix(&self) -> &NormalizedPath {
        &self.path_prefix
    }
    /// Name of the upstream this route forwards to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }
    /// Alternatives of factor sets; one must be verified. Never empty.
    pub fn requirement(&self) -> &[FactorSet] {
        &self.require
    }
    /// The allow-list of principals, sorted, if the route has one.
    pub fn identities(&self) -> Option<&[String]> {
        self.identities_sorted.as_deref()
    }
    /// May `principal` use this route (true when there is no allow-list)?
    pub fn admits(&self, principal: Option<&str>) -> bool {
        match (&self.identities, principal) {
            (None, _) => true,
            (Some(set), Some(p)) => set.contains(p),
            (Some(_), None) => false,
        }
    }
    pub fn allow_upgrade(&self) -> bool {
        self.allow_upgrade
    }
    /// Does the route's prefix cover `path` (at a segment boundary)?
    pub fn covers(&self, path: &NormalizedPath) -> bool {
        prefix_covers(self.path_prefix.as_str(), path.as_str())
    }
}

/// `prefix` (normalized, no trailing slash unless `/`) covers `path` at a
/// segment boundary: `/api` covers `/api` and `/api/x`, not `/apix`.
fn prefix_covers(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// One path pattern of an opt-out rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// Exactly this normalized path (`/a/` is not `/a`).
    Exact(NormalizedPath),
    /// `prefix/**`: every path strictly below `prefix/`, i.e. starting with
    /// `prefix/` (so `/a/**` covers `/a/` and `/a/b`, not `/a` itself).
    /// The prefix is never `/`: a catch-all is refused at compile time.
    Prefix(NormalizedPath),
}

impl PathPattern {
    pub fn matches(&self, path: &NormalizedPath) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => path
                .as_str()
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathPattern::Exact(p) => write!(f, "{p}"),
            PathPattern::Prefix(p) => write!(f, "{p}/**"),
        }
    }
}

/// A daily window in UTC, start inclusive, end exclusive; wraps past
/// midnight when `start > end`. Never empty (`start != end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    start_minute: u16,
    end_minute: u16,
}

impl TimeWindow {
    /// Is `now` (taken in UTC) inside the window?
    pub fn contains(&self, now: OffsetDateTime) -> bool {
        let t = now.to_offset(UtcOffset::UTC).time();
        let m = u16::from(t.hour()) * 60 + u16::from(t.minute());
        if self.start_minute < self.end_minute {
            self.start_minute <= m && m < self.end_minute
        } else {
            m >= self.start_minute || m < self.end_minute
        }
    }
    /// Minutes after midnight UTC.
    pub fn start_minute(&self) -> u16 {
        self.start_minute
    }
    pub fn end_minute(&self) -> u16 {
        self.end_minute
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02} UTC",
            self.start_minute / 60,
            self.start_minute % 60,
            self.end_minute / 60,
            self.end_minute % 60
        )
    }
}

/// A compiled opt-out rule: a narrow, owned, time-boxed exception.
#[derive(Debug, Clone)]
pub struct OptOutRule {
    pub(crate) id: Arc<str>,
    route: Arc<str>,
    methods: Vec<String>,
    paths: Vec<PathPattern>,
    pub(crate) waive: FactorSet,
    owner: String,
    reason: String,
    expires: OffsetDateTime,
    expires_text: String,
    source_cidrs: Option<Vec<IpNet>>,
    time_window: Option<TimeWindow>,
    pub(crate) webhook: Option<Arc<WebhookSpec>>,
    pub(crate) allow_upgrade: bool,
    pub(crate) require_grant: bool,
    /// Above this risk score the rule does not apply.
    pub(crate) max_risk: Option<u8>,
    /// A user-chosen opt-out: applies only with the user's consent.
    pub(crate) offer: Option<Arc<OfferSpec>>,
    /// "opt-out rule `x` waives f (owner o: r)" (reason text, built once).
    pub(crate) waives_text: Box<str>,
}

impl OptOutRule {
    /// The highest request risk score at which the rule still applies.
    pub fn max_risk(&self) -> Option<u8> {
        self.max_risk
    }

    /// The offer, for a user-chosen opt-out.
    pub fn offer(&self) -> Option<&Arc<OfferSpec>> {
        self.offer.as_ref()
    }

    /// Does the rule apply only with a certificate grant naming it?
    pub fn require_grant(&self) -> bool {
        self.require_grant
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    /// Id of the route it belongs to.
    pub fn route(&self) -> &str {
        &self.route
    }
    /// Upper-case methods, as listed (`HEAD` is not implied by `GET`).
    pub fn methods(&self) -> &[String] {
        &self.methods
    }
    pub fn paths(&self) -> &[PathPattern] {
        &self.paths
    }
    /// Factors this rule waives (never empty).
    pub fn waived(&self) -> FactorSet {
        self.waive
    }
    pub fn owner(&self) -> &str {
        &self.owner
    }
    pub fn reason(&self) -> &str {
        &self.reason
    }
    /// The rule is inert from this instant on.
    pub fn expires(&self) -> OffsetDateTime {
        self.expires
    }
    pub fn source_cidrs(&self) -> Option<&[IpNet]> {
        self.source_cidrs.as_deref()
    }
    pub fn time_window(&self) -> Option<TimeWindow> {
        self.time_window
    }
    pub fn webhook(&self) -> Option<&Arc<WebhookSpec>> {
        self.webhook.as_ref()
    }
    pub fn allow_upgrade(&self) -> bool {
        self.allow_upgrade
    }

    /// Why the rule is not live for this peer at `now`, or `None` if it is:
    /// live means `now < expires`, the peer is in `source_cidrs` (if set) and
    /// `now` is inside the time window (if set).
    pub fn inactive_reason(&self, now: OffsetDateTime, peer: IpAddr) -> Option<String> {
        if now >= self.expires {
            return Some(format!(
                "rule `{}` expired at {}",
                self.id, self.expires_text
            ));
        }
        if let Some(cidrs) = &self.source_cidrs {
            // An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`) is matched as IPv4
            // too, so a dual-stack listener cannot dodge or miss a v4 CIDR.
            let mapped = match peer {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
                IpAddr::V4(_) => None,
            };
            let inside = cidrs
                .iter()
                .any(|net| net.contains(&peer) || mapped.is_some_and(|m| net.contains(&m)));
            if !inside {
                return Some(format!("peer {peer} not in source_cidrs of `{}`", self.id));
            }
        }
        if let Some(window) = &self.time_window {
            if !window.contains(now) {
                return Some(format!("rule `{}` applies only within {window}", self.id));
            }
        }
        None
    }
}

/// An upstream service.
#[derive(Debug, Clone)]
pub struct Upstream {
    name: Arc<str>,
    url: String,
    https: bool,
    host: String,
    port: u16,
}

impl Upstream {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The URL as configured.
    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn is_https(&self) -> bool {
        self.https
    }
    /// Host name or IP literal (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }
    /// Explicit port, or 80 / 443 by scheme.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Rules of one (route, method): exact paths by map, `prefix/**` by trie.
#[derive(Debug, Default)]
struct RuleIndex {
    exact: HashMap<Box<str>, Vec<usize>>,
    prefix: SegmentTrie<Vec<usize>>,
}

/// A trie over path segments.
#[derive(Debug)]
struct SegmentTrie<T> {
    value: Option<T>,
    children: HashMap<Box<str>, SegmentTrie<T>>,
}

impl<T> Default for SegmentTrie<T> {
    fn default() -> Self {
        SegmentTrie {
            value: None,
            children: HashMap::new(),
        }
    }
}

impl<T> SegmentTrie<T> {
    fn entry<'a>(&mut self, segments: impl Iterator<Item = &'a str>) -> &mut Option<T> {
        let mut node = self;
        for seg in segments {
            node = node.children.entry(Box::from(seg)).or_default();
        }
        &mut node.value
    }

    /// The value of the deepest node on `path`'s segments (longest prefix).
    fn longest_prefix<'a>(&self, segments: impl Iterator<Item = &'a str>) -> Option<&T> {
        let mut node = self;
        let mut best = node.value.as_ref();
        for seg in segments {
            match node.children.get(seg) {
                Some(child) => {
                    node = child;
                    if let Some(v) = node.value.as_ref() {
                        best = Some(v);
                    }
                }
                None => break,
            }
        }
        best
    }
}

impl Policy {
    /// Validate a parsed config and compile it. `now` is the load time (for
    /// expiry checks: past expiry, expiry beyond `max_optout_days`). Reads
    /// webhook secrets (files / environment). Returns every error found, not
    /// just the first; warnings are returned alongside a successful policy.
    pub fn compile(
        config: &Config,
        now: OffsetDateTime,
    ) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
        let (policy, diagnostics) = Compiler::new(config, now).run();
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            Err(diagnostics)
        } else {
            Ok((policy, diagnostics))
        }
    }

    /// Lint only: every diagnostic (errors and warnings), for `postern check`.
    pub fn check(config: &Config, now: OffsetDateTime) -> Vec<Diagnostic> {
        Compiler::new(config, now).run().1
    }

    /// Every route, in file order.
    pub fn routes(&self) -> impl ExactSizeIterator<Item = &Route> + '_ {
        self.routes.iter()
    }

    pub fn route(&self, id: &str) -> Option<&Route> {
        self.route_ids.get(id).and_then(|&i| self.routes.get(i))
    }

    /// Every opt-out rule, in file order.
    pub fn optouts(&self) -> impl ExactSizeIterator<Item = &OptOutRule> + '_ {
        self.optouts.iter()
    }

    pub fn optout(&self, id: &str) -> Option<&OptOutRule> {
        self.optout_ids.get(id).and_then(|&i| self.optouts.get(i))
    }

    /// The risk model opt-outs with `max_risk` are held to (`[risk]`).
    pub fn risk(&self) -> Option<&crate::risk::RiskModel> {
        self.risk.as_ref()
    }

    /// Proxies whose `x-forwarded-for` is believed (bare IPs as /32 or /128).
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted_proxies
    }

    /// Every upstream, in file order.
    pub fn upstreams(&self) -> impl ExactSizeIterator<Item = &Upstream> + '_ {
        self.upstreams.iter()
    }

    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }

    /// Every (lower-case) signature and timestamp header name any webhook
    /// rule uses, sorted and deduplicated, so the gateway can keep them out
    /// of anything it logs and strip them where needed.
    pub fn webhook_headers(&self) -> &[String] {
        &self.webhook_headers
    }

    /// The route covering `host` (lower-case, no port) and `path`: an exact
    /// host beats `*`; among prefixes, the longest at a segment boundary.
    pub fn find_route(&self, host: &str, path: &NormalizedPath) -> Option<&Route> {
        self.find_route_index(host, path)
            .and_then(|i| self.routes.get(i))
    }

    pub(crate) fn find_route_index(&self, host: &str, path: &NormalizedPath) -> Option<usize> {
        // `example.com.` is the same host as `example.com` (absolute DNS
        // name); without this it would silently fall to the `*` routes.
        let host = host.strip_suffix('.').unwrap_or(host);
        self.routes_by_host
            .get(host)
            .and_then(|t| t.longest_prefix(path.segments()))
            .or_else(|| self.routes_any_host.longest_prefix(path.segments()))
            .copied()
    }

    pub(crate) fn route_at(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// Opt-out rules of `route` that list `method` and a pattern matching
    /// `path`, most specific first: exact paths, then prefixes from longest
    /// to shortest, file order within each. Liveness is not checked here.
    pub fn optout_candidates(
        &self,
        route: &str,
        method: &str,
        path: &NormalizedPath,
    ) -> Vec<&OptOutRule> {
        match self.route_ids.get(route) {
            Some(&i) => self.candidates(i, method, path).collect(),
            None => Vec::new(),
        }
    }

    pub(crate) fn candidates<'a>(
        &'a self,
        route: usize,
        method: &str,
        path: &NormalizedPath,
    ) -> impl Iterator<Item = &'a OptOutRule> + 'a {
        let index = self.optout_index.get(route).and_then(|m| m.get(method));
        let mut exact: &[usize] = &[];
        // Allocates only when some `prefix/**` node is on the path.
        let mut prefix_hits: Vec<&'a [usize]> = Vec::new();
        if let Some(index) = index {
            if let Some(ids) = index.exact.get(path.as_str()) {
                exact = ids;
            }
            // Walk the trie; a `prefix/**` node matches when at least one more
            // segment follows it. Deeper nodes are longer prefixes: collect
            // per depth, then take the deepest first.
            let mut node = &index.prefix;
            for seg in path.segments() {
                if let Some(v) = &node.value {
                    prefix_hits.push(v);
                }
                match node.children.get(seg) {
                    Some(child) => node = child,
                    None => break,
                }
            }
        }
        exact
            .iter()
            .chain(prefix_hits.into_iter().rev().flatten())
            .filter_map(move |&i| self.optouts.get(i))
    }
}

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];
const ALLOWED_JWT_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];
/// Beyond this, a webhook replay window is flagged.
const LONG_WEBHOOK_TOLERANCE_SECS: u64 = 900;

/// Validation and compilation of one config; collects every diagnostic.
struct Compiler<'a> {
    config: &'a Config,
    now: OffsetDateTime,
    lines: LineIndex,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> Compiler<'a> {
    fn new(config: &'a Config, now: OffsetDateTime) -> Compiler<'a> {
        Compiler {
            config,
            now,
            lines: LineIndex::new(&config.source.text),
            diagnostics: Vec::new(),
        }
    }

    fn push(
        &mut self,
        severity: Severity,
        span: Option<Range<usize>>,
        field: String,
        message: String,
    ) {
        let text = &self.config.source.text;
        let (line, column) = match span {
            Some(span) if !text.is_empty() => self.lines.locate(text, span.start),
            _ => (0, 0),
        };
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.config.source.path.clone(),
            line,
            column,
            field,
            message,
        });
    }

    fn error(
        &mut self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.push(Severity::Error, span, field.into(), message.into());
    }

    fn warn(
        &mut self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.push(Severity::Warning, span, field.into(), message.into());
    }

    /// Span of a `[name]` table header, for sections without `Spanned` fields.
    fn table_span(&self, name: &str) -> Option<Range<usize>> {
        let header = format!("[{name}]");
        let text = &self.config.source.text;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            if line.trim() == header {
                let lead = line.len() - line.trim_start().len();
                return Some(offset + lead..offset + line.len());
            }
            offset += line.len();
        }
        None
    }

    fn run(mut self) -> (Policy, Vec<Diagnostic>) {
        let trusted_proxies = self.trusted_proxies();
        self.jwt();
        let upstreams = self.upstreams();
        let (routes, route_ids) = self.routes(&upstreams);

        let mut routes_by_host: HashMap<Box<str>, SegmentTrie<usize>> = HashMap::new();
        let mut routes_any_host = SegmentTrie::default();
        for (i, r) in routes.iter().enumerate() {
            let trie = if &*r.host == "*" {
                &mut routes_any_host
            } else {
                routes_by_host.entry(Box::from(&*r.host)).or_default()
            };
            let slot = trie.entry(r.path_prefix.segments());
            // Duplicates were diagnosed in `routes()`; the first one wins.
            if slot.is_none() {
                *slot = Some(i);
            }
        }
        let route_of = |host: &str, path: &NormalizedPath| -> Option<usize> {
            routes_by_host
                .get(host)
                .and_then(|t| t.longest_prefix(path.segments()))
                .or_else(|| routes_any_host.longest_prefix(path.segments()))
                .copied()
        };
        let optouts = self.optouts(&routes, &route_ids, &route_of);
        let (risk, risk_diagnostics) = crate::risk::compile(self.config);
        self.diagnostics.extend(risk_diagnostics);

        let mut optout_index: Vec<HashMap<Box<str>, RuleIndex>> =
            routes.iter().map(|_| HashMap::new()).collect();
        let mut optout_ids = HashMap::new();
        let mut webhook_headers: Vec<String> = Vec::new();
        for (i, rule) in optouts.iter().enumerate() {
            optout_ids.entry(rule.id.clone()).or_insert(i);
            if let Some(w) = &rule.webhook {
                webhook_headers.push(w.signature_header.clone());
                webhook_headers.push(w.timestamp_header.clone());
            }
            let Some(by_method) = route_ids
                .get(&rule.route)
                .and_then(|&r| optout_index.get_mut(r))
            else {
                continue;
            };
            for method in &rule.methods {
                let index = by_method.entry(Box::from(method.as_str())).or_default();
                for pattern in &rule.paths {
                    match pattern {
                        PathPattern::Exact(p) => index
                            .exact
                            .entry(Box::from(p.as_str()))
                            .or_default()
                            .push(i),
                        PathPattern::Prefix(p) => index
                            .prefix
                            .entry(p.segments())
                            .get_or_insert_with(Vec::new)
                            .push(i),
                    }
                }
            }
        }
        webhook_headers.sort();
        webhook_headers.dedup();

        let policy = Policy {
            routes,
            route_ids,
            routes_by_host,
            routes_any_host,
            optouts,
            optout_ids,
            optout_index,
            trusted_proxies,
            upstreams,
            webhook_headers,
            risk,
        };
        // File order, for `postern check`; the sort is stable, so problems
        // found at the same place keep the order they were found in.
        let mut diagnostics = self.diagnostics;
        diagnostics.sort_by_key(|d| (d.line, d.column));
        (policy, diagnostics)
    }

    fn trusted_proxies(&mut self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, entry) in self.config.gateway.trusted_proxies.iter().enumerate() {
            let field = format!("gateway.trusted_proxies[{i}]");
            match parse_net(entry.get_ref()) {
                Ok(net) => {
                    if net.prefix_len() == 0 {
                        self.warn(
                            Some(entry.span()),
                            field,
                            format!("`{net}` trusts every address to set x-forwarded-for: any client can forge its source address"),
                        );
                    }
                    out.push(net);
                }
                Err(msg) => self.error(Some(entry.span()), field, msg),
            }
        }
        out
    }

    fn jwt(&mut self) {
        let Some(jwt) = &self.config.jwt else { return };
        let span = self.table_span("jwt");
        if jwt.issuer.trim().is_empty() {
            self.error(span.clone(), "jwt.issuer", "the issuer is empty");
        }
        if jwt.audience.trim().is_empty() {
            self.error(span.clone(), "jwt.audience", "the audience is empty");
        }
        match (&jwt.jwks_file, &jwt.jwks_url) {
            (None, None) => self.error(span.clone(), "jwt", "set one of `jwks_file` or `jwks_url`"),
            (Some(_), Some(_)) => self.error(
                span.clone(),
                "jwt",
                "set only one of `jwks_file` or `jwks_url`",
            ),
            (None, Some(url)) => {
                if parse_http_url(url).is_err() {
                    self.error(
                        span.clone(),
                        "jwt.jwks_url",
                        format!("`{url}` is not an http:// or https:// URL"),
                    );
                } else if url.starts_with("http://") {
                    self.warn(
                        span.clone(),
                        "jwt.jwks_url",
                        "the key set is fetched over plain http: anyone on the path can substitute keys",
                    );
                }
            }
            (Some(_), None) => {}
        }
        if jwt.algorithms.is_empty() {
            self.error(
                span,
                "jwt.algorithms",
                "no algorithm allowed: list at least one of `RS256`, `ES256`, `EdDSA`",
            );
        }
        let mut seen = HashSet::new();
        for (i, alg) in jwt.algorithms.iter().enumerate() {
            let field = format!("jwt.algorithms[{i}]");
            let name = alg.get_ref().as_str();
            if ALLOWED_JWT_ALGORITHMS.contains(&name) {
                if !seen.insert(name) {
                    self.warn(Some(alg.span()), field, format!("`{name}` is listed twice"));
                }
            } else if name.eq_ignore_ascii_case("none") {
                self.error(
                    Some(alg.span()),
                    field,
                    "`none` is refused: it accepts unsigned tokens, which anyone can forge",
                );
            } else if name.len() >= 2 && name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("hs"))
            {
                self.error(
                    Some(alg.span()),
                    field,
                    format!(
                        "`{name}` is refused: HMAC algorithms verify with a shared secret, so whoever can verify tokens can forge them; use `RS256`, `ES256` or `EdDSA`"
                    ),
                );
            } else {
                self.error(
                    Some(alg.span()),
                    field,
                    format!("unsupported algorithm `{name}`: use `RS256`, `ES256` or `EdDSA`"),
                );
            }
        }
    }

    fn upstreams(&mut self) -> Vec<Upstream> {
        let mut out: Vec<Upstream> = Vec::new();
        for (i, up) in self.config.upstreams.iter().enumerate() {
            let cfg = up.get_ref();
            let field = if cfg.name.is_empty() {
                format!("upstream[#{i}]")
            } else {
                format!("upstream[{}]", cfg.name)
            };
            if cfg.name.trim().is_empty() {
                self.error(
                    Some(up.span()),
                    format!("{field}.name"),
                    "the upstream name is empty",
                );
                continue;
            }
            if out.iter().any(|u| *u.name == *cfg.name) {
                self.error(
                    Some(up.span()),
                    format!("{field}.name"),
                    format!("duplicate upstream name `{}`", cfg.name),
                );
                continue;
            }
            // `builtin:echo`: the gateway starts a loopback echo server (the demo's upstream).
            let parsed = if cfg.url == BUILTIN_ECHO {
                Ok((false, "127.0.0.1".to_string(), 0))
            } else {
                parse_http_url(&cfg.url)
            };
            match parsed {
                Ok((https, host, port)) => out.push(Upstream {
                    name: Arc::from(cfg.name.as_str()),
                    url: cfg.url.clone(),
                    https,
                    host,
                    port,
                }),
                Err(msg) => self.error(Some(up.span()), format!("{field}.url"), msg),
            }
        }
        out
    }

    fn routes(&mut self, upstreams: &[Upstream]) -> (Vec<Route>, HashMap<Arc<str>, usize>) {
        let mut routes: Vec<Route> = Vec::new();
        let mut ids: HashMap<Arc<str>, usize> = HashMap::new();
        let mut seen_ids: HashSet<&str> = HashSet::new();
        let mut seen_places: HashMap<(String, String), String> = HashMap::new();
        let mtls_on = !self.config.tls.client_ca.is_empty();
        let jwt_on = self.config.jwt.is_some();
        let oidc_on = self.config.oidc.is_some();
        for (i, spanned) in self.config.routes.iter().enumerate() {
            let cfg: &RouteConfig = spanned.get_ref();
            let name = if cfg.id.is_empty() {
                format!("#{i}")
            } else {
                cfg.id.clone()
            };
            let f = |k: &str| format!("route[{name}].{k}");
            let mut ok = true;
            if cfg.id.trim().is_empty() {
                self.error(Some(spanned.span()), f("id"), "the route id is empty");
                ok = false;
            } else if !seen_ids.insert(cfg.id.as_str()) {
                self.error(
                    Some(spanned.span()),
                    f("id"),
                    format!("duplicate route id `{}`", cfg.id),
                );
                ok = false;
            }
            let host = cfg.host.to_ascii_lowercase();
            if let Err(msg) = check_host(&host) {
                self.error(Some(spanned.span()), f("host"), msg);
                ok = false;
            }
            let prefix = self.route_prefix(&cfg.path_prefix, f("path_prefix"));
            if !upstreams
                .iter()
                .any(|u| *u.name == **cfg.upstream.get_ref())
            {
                self.error(
                    Some(cfg.upstream.span()),
                    f("upstream"),
                    format!("unknown upstream `{}`", cfg.upstream.get_ref()),
                );
                ok = false;
            }
            let require = self.requirement(&cfg.require, f("require"));
            if let Some(require) = &require {
                let usable = require.iter().any(|alt| {
                    (!alt.contains(Factor::Mtls) || mtls_on)
                        && (!alt.contains(Factor::Jwt) || jwt_on)
                        && (!alt.contains(Factor::Oidc) || oidc_on)
                });
                if !usable {
                    self.warn(
                        Some(cfg.require.span()),
                        f("require"),
                        "no alternative can be met: mtls needs `tls.client_ca`, jwt a `[jwt]` section and oidc an `[oidc]` section; only opt-outs can reach this route",
                    );
                } else if !oidc_on && require.iter().any(|alt| alt.contains(Factor::Oidc)) {
                    self.warn(
                        Some(cfg.require.span()),
                        f("require"),
                        "an alternative needs oidc but there is no `[oidc]` section: browsers cannot sign in on this route",
                    );
                }
            }
            if let Some(list) = &cfg.identities {
                if list.is_empty() {
                    self.warn(
                        Some(spanned.span()),
                        f("identities"),
                        "the identity allow-list is empty: every authenticated request gets 403",
                    );
                }
            }
            let (Some(prefix), Some(require), true) = (prefix, require, ok) else {
                continue;
            };
            if let Some(first) = seen_places.get(&(host.clone(), prefix.as_str().to_string())) {
                self.error(
                    Some(cfg.path_prefix.span()),
                    f("path_prefix"),
                    format!(
                        "route `{}` already covers host `{host}` and prefix `{prefix}`",
                        first
                    ),
                );
                continue;
            }
            seen_places.insert((host.clone(), prefix.as_str().to_string()), cfg.id.clone());
            let identities_sorted = cfg.identities.as_ref().map(|l| {
                let mut v = l.clone();
                v.sort();
                v.dedup();
                v
            });
            let id: Arc<str> = Arc::from(cfg.id.as_str());
            ids.insert(id.clone(), routes.len());
            let requires_text = format!(
                "route `{id}` requires {}; verified: ",
                alternatives_text(&require)
            )
            .into();
            routes.push(Route {
                id,
                host: Arc::from(host.as_str()),
                path_prefix: prefix,
                upstream: Arc::from(cfg.upstream.get_ref().as_str()),
                require: Arc::from(require),
                identities: cfg.identities.as_ref().map(|l| l.iter().cloned().collect()),
                identities_sorted,
                allow_upgrade: cfg.allow_upgrade,
                step_up_acr: cfg.step_up_acr.clone().filter(|v| !v.is_empty()),
                requires_text,
            });
        }
        (routes, ids)
    }

    fn route_prefix(&mut self, prefix: &Spanned<String>, field: String) -> Option<NormalizedPath> {
        let raw = prefix.get_ref();
        let span = Some(prefix.span());
        if raw.contains('*') {
            self.error(span, field, format!("`{raw}`: a path prefix takes no wildcard; `/api` already covers everything below `/api/`"));
            return None;
        }
        match normalize_path(raw) {
            Ok(n) if n.as_str() != raw => {
                self.error(
                    span,
                    field,
                    format!("`{raw}` is not in normal form; write `{n}`"),
                );
                None
            }
            Ok(n) if n.as_str() != "/" && n.as_str().ends_with('/') => {
                let trimmed = n.as_str().trim_end_matches('/');
                self.error(
                    span,
                    field,
                    format!("`{raw}` ends with `/`; write `{trimmed}`, which covers `{trimmed}` and everything below it"),
                );
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                self.error(span, field, format!("`{raw}`: {e}"));
                None
            }
        }
    }

    /// Alternatives of factor sets; `None` after diagnosing a problem.
    fn requirement(
        &mut self,
        require: &Spanned<Vec<Vec<String>>>,
        field: String,
    ) -> Option<Vec<FactorSet>> {
        let span = Some(require.span());
        if require.get_ref().is_empty() {
            self.error(
                span,
                field,
                "no alternative: list at least one factor set, e.g. [[\"mtls\"]]",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, alt) in require.get_ref().iter().enumerate() {
            if alt.is_empty() {
                self.error(
                    span.clone(),
                    format!("{field}[{i}]"),
                    "an empty factor set would let every request through; list at least one factor",
                );
                ok = false;
                continue;
            }
            let mut set = FactorSet::EMPTY;
            for name in alt {
                match Factor::parse(name) {
                    Some(f) => set.insert(f),
                    None => {
                        self.error(span.clone(), format!("{field}[{i}]"), unknown_factor(name));
                        ok = false;
                    }
                }
            }
            if !out.contains(&set) {
                out.push(set);
            }
        }
        ok.then_some(out)
    }

    fn optouts(
        &mut self,
        routes: &[Route],
        route_ids: &HashMap<Arc<str>, usize>,
        route_of: &dyn Fn(&str, &NormalizedPath) -> Option<usize>,
    ) -> Vec<OptOutRule> {
        let mut out = Vec::new();
        let mut seen_ids: HashSet<&str> = HashSet::new();
        for (i, spanned) in self.config.optouts.iter().enumerate() {
            let cfg: &OptOutConfig = spanned.get_ref();
            let id = cfg.id.get_ref();
            let name = if id.is_empty() {
                format!("#{i}")
            } else {
                id.clone()
            };
            let f = |k: &str| format!("optout[{name}].{k}");
            let table = Some(spanned.span());
            let mut ok = true;

            if id.trim().is_empty() {
                self.error(Some(cfg.id.span()), f("id"), "the rule id is empty");
                ok = false;
            } else if !seen_ids.insert(id.as_str()) {
                self.error(
                    Some(cfg.id.span()),
                    f("id"),
                    format!("duplicate opt-out id `{id}`"),
                );
                ok = false;
            }

            let route = route_ids
                .get(cfg.route.get_ref().as_str())
                .and_then(|&r| routes.get(r));
            if route.is_none() {
                let known = self
                    .config
                    .routes
                    .iter()
                    .any(|r| r.get_ref().id == *cfg.route.get_ref());
                let msg = if known {
                    format!(
                        "route `{}` is invalid (see its diagnostics)",
                        cfg.route.get_ref()
                    )
                } else {
                    format!("unknown route `{}`", cfg.route.get_ref())
                };
                self.error(Some(cfg.route.span()), f("route"), msg);
                ok = false;
            }

            let methods = self.methods(&cfg.methods, f("methods"));
            let paths = self.patterns(&cfg.paths, route, f("paths"));
            if let (Some(route), Some(paths)) = (route, &paths) {
                self.shadowed_patterns(route, routes, paths, &cfg.paths, f("paths"), route_of);
            }
            let waive = self.waive(&cfg.waive, route, f("waive"));
            let owner = self.required_text(
                cfg.owner.as_ref(),
                table.clone(),
                f("owner"),
                "owner",
                "who answers for this rule",
            );
            let reason = self.required_text(
                cfg.reason.as_ref(),
                table.clone(),
                f("reason"),
                "reason",
                "why this rule exists",
            );
            let expires = self.expiry(cfg.expires.as_ref(), table.clone(), f("expires"));
            let source_cidrs = self.source_cidrs(cfg.source_cidrs.as_ref(), f("source_cidrs"));
            let time_window = self.time_window(cfg.time_window.as_ref(), f("time_window"));
            let webhook = self.webhook(cfg, id, f("webhook"));
            let max_risk = match &cfg.max_risk {
                Some(m) if *m.get_ref() > 100 => {
                    self.error(
                        Some(m.span()),
                        f("max_risk"),
                        format!(
                            "`{}` is not a risk score: scores run from 0 to 100",
                            m.get_ref()
                        ),
                    );
                    ok = false;
                    None
                }
                Some(m) => Some(*m.get_ref()),
                None => None,
            };
            let offer = match &cfg.offer {
                None => None,
                Some(o) => {
                    let spec = o.get_ref();
                    let max_days = self.config.gateway.max_optout_days;
                    if spec.disclosure.trim().is_empty() || spec.title.trim().is_empty() {
                        self.error(Some(o.span()), f("offer"), "an offer needs a `title` and a `disclosure` the user reads before consenting");
                        ok = false;
                    }
                    if spec.duration_days == 0 || spec.duration_days > max_days {
                        self.error(Some(o.span()), f("offer.duration_days"), format!("a consent must last between 1 and {max_days} days (gateway.max_optout_days)"));
                        ok = false;
                    }
                    if cfg.webhook.is_some() || cfg.require_grant {
                        self.error(Some(o.span()), f("offer"), "an offer is a user's choice: it cannot also need a webhook signature or a certificate grant");
                        ok = false;
                    }
                    Some(Arc::new(OfferSpec::new(id, spec)))
                }
            };

            let (
                true,
                Some(route),
                Some(methods),
                Some(paths),
                Some(waive),
                Some(owner),
                Some(reason),
                Some(expires),
                Some(source_cidrs),
                Some(time_window),
                Some(webhook),
            ) = (
                ok,
                route,
                methods,
                paths,
                waive,
                owner,
                reason,
                expires,
                source_cidrs,
                time_window,
                webhook,
            )
            else {
                continue;
            };
            let expires_text = expires
                .format(&Rfc3339)
                .unwrap_or_else(|_| expires.to_string());
            let waives_text =
                format!("opt-out rule `{id}` waives {waive} (owner {owner}: {reason})").into();
            out.push(OptOutRule {
                id: Arc::from(id.as_str()),
                route: route.id.clone(),
                methods,
                paths,
                waive,
                owner,
                reason,
                expires,
                expires_text,
                source_cidrs,
                time_window,
                webhook,
                allow_upgrade: cfg.allow_upgrade,
                require_grant: cfg.require_grant,
                max_risk,
                offer,
                waives_text,
            });
        }
        out
    }

    fn methods(&mut self, methods: &Spanned<Vec<String>>, field: String) -> Option<Vec<String>> {
        let span = Some(methods.span());
        if methods.get_ref().is_empty() {
            self.error(
                span,
                field,
                "no methods: list the methods this rule covers, e.g. [\"GET\"]",
            );
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for m in methods.get_ref() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                self.error(
                    span.clone(),
                    field.clone(),
                    format!("`{m}` is not an upper-case method token: methods are case-sensitive, write e.g. `GET`"),
                );
                ok = false;
            } else if !KNOWN_METHODS.contains(&m.as_str()) {
                self.error(span.clone(), field.clone(), format!("unknown method `{m}`"));
                ok = false;
            } else if out.contains(m) {
                self.error(
                    span.clone(),
                    field.clone(),
                    format!("method `{m}` is listed twice"),
                );
                ok = false;
            } else {
                out.push(m.clone());
            }
        }
        ok.then_some(out)
    }

    fn patterns(
        &mut self,
        paths: &Spanned<Vec<String>>,
        route: Option<&Route>,
        field: String,
    ) -> Option<Vec<PathPattern>> {
        let span = Some(paths.span());
        if paths.get_ref().is_empty() {
            self.error(
                span,
                field,
                "no paths: list the exact paths or `prefix/**` patterns this rule covers",
            );
            return None;
        }
        let mut out: Vec<PathPattern> = Vec::new();
        let mut ok = true;
        for raw in paths.get_ref() {
            let pattern = match parse_pattern(raw) {
                Ok(p) => p,
                Err(msg) => {
                    self.error(span.clone(), field.clone(), msg);
                    ok = false;
                    continue;
                }
            };
            if let Some(route) = route {
                match pattern_scope(&pattern, route.path_prefix.as_str()) {
                    Scope::Outside => {
                        self.error(
                            span.clone(),
                            field.clone(),
                            format!(
                                "`{raw}` is outside the prefix `{}` of route `{}`: it can never match",
                                route.path_prefix, route.id
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    Scope::WholeRoute => self.warn(
                        span.clone(),
                        field.clone(),
                        format!(
                            "`{raw}` covers the whole prefix `{}` of route `{}`: consider narrower paths",
                            route.path_prefix, route.id
                        ),
                    ),
                    Scope::Inside => {}
                }
            }
            if out.contains(&pattern) {
                self.warn(
                    span.clone(),
                    field.clone(),
                    format!("`{raw}` is listed twice"),
                );
                continue;
            }
            out.push(pattern);
        }
        ok.then_some(out)
    }

    /// A pattern whose paths a more specific route takes can never apply:
    /// rules only match on their own route. Warn, so nobody believes a
    /// path is exempt when it is not.
    fn shadowed_patterns(
        &mut self,
        route: &Route,
        routes: &[Route],
        paths: &[PathPattern],
        span: &Spanned<Vec<String>>,
        field: String,
        route_of: &dyn Fn(&str, &NormalizedPath) -> Option<usize>,
    ) {
        for pattern in paths {
            let probe = match pattern {
                PathPattern::Exact(p) => p.clone(),
                PathPattern::Prefix(p) => NormalizedPath::new_unchecked(format!("{p}/")),
            };
            let Some(other) = route_of(&route.host, &probe).and_then(|i| routes.get(i)) else {
                continue;
            };
            if other.id != route.id {
                self.warn(
                    Some(span.span()),
                    field.clone(),
                    format!(
                        "`{pattern}` is routed to route `{}`, not `{}`: this pattern never applies",
                        other.id, route.id
                    ),
                );
            }
        }
    }

    fn waive(
        &mut self,
        waive: &Spanned<Waive>,
        route: Option<&Route>,
        field: String,
    ) -> Option<FactorSet> {
        let span = Some(waive.span());
        let set = match waive.get_ref() {
            Waive::Keyword(k) if k == "all" => FactorSet::all(),
            Waive::Keyword(k) => {
                self.error(
                    span,
                    field,
                    format!("`{k}`: write `\"all\"` or a list of factors such as [\"jwt\"]"),
                );
                return None;
            }
            Waive::Factors(list) => {
                if list.is_empty() {
                    self.error(
                        span,
                        field,
                        "the rule waives nothing: list factors or write `\"all\"`",
                    );
                    return None;
                }
                let mut set = FactorSet::EMPTY;
                let mut ok = true;
                for name in list {
                    match Factor::parse(name) {
                        Some(f) => set.insert(f),
                        None => {
                            self.error(span.clone(), field.clone(), unknown_factor(name));
                            ok = false;
                        }
                    }
                }
                if !ok {
                    return None;
                }
                set
            }
        };
        if let Some(route) = route {
            if route.require.iter().all(|alt| alt.minus(set) == *alt) {
                self.warn(
                    span,
                    field,
                    format!("waives `{set}`, which no alternative of route `{}` requires: the rule has no effect", route.id),
                );
            }
        }
        Some(set)
    }

    fn required_text(
        &mut self,
        value: Option<&Spanned<String>>,
        table: Option<Range<usize>>,
        field: String,
        key: &str,
        what: &str,
    ) -> Option<String> {
        match value {
            Some(v) if !v.get_ref().trim().is_empty() => Some(v.get_ref().trim().to_string()),
            Some(v) => {
                self.error(
                    Some(v.span()),
                    field,
                    format!("`{key}` is empty: say {what}"),
                );
                None
            }
            None => {
                self.error(table, field, format!("`{key}` is missing: say {what}"));
                None
            }
        }
    }

    fn expiry(
        &mut self,
        expires: Option<&Spanned<toml::value::Datetime>>,
        table: Option<Range<usize>>,
        field: String,
    ) -> Option<OffsetDateTime> {
        let max_days = self.config.gateway.max_optout_days;
        let Some(expires) = expires else {
            self.error(
                table,
                field,
                format!("`expires` is missing: every opt-out needs an expiry (at most {max_days} days ahead)"),
            );
            return None;
        };
        let span = Some(expires.span());
        let at = match datetime_to_instant(expires.get_ref()) {
            Ok(at) => at,
            Err(msg) => {
                self.error(span, field, msg);
                return None;
            }
        };
        if at <= self.now {
            self.error(
                span,
                field,
                format!("the rule expired at {}", expires.get_ref()),
            );
            return None;
        }
        let limit = self.now + time::Duration::days(i64::from(max_days));
        if at > limit {
            self.error(
                span,
                field,
                format!(
                    "expires {} which is more than gateway.max_optout_days ({max_days}) days from now",
                    expires.get_ref()
                ),
            );
            return None;
        }
        Some(at)
    }

    /// `Some(None)`: no restriction; `None`: diagnosed.
    fn source_cidrs(
        &mut self,
        cidrs: Option<&Spanned<Vec<String>>>,
        field: String,
    ) -> Option<Option<Vec<IpNet>>> {
        let Some(cidrs) = cidrs else {
            return Some(None);
        };
        let span = Some(cidrs.span());
        if cidrs.get_ref().is_empty() {
            self.error(
                span,
                field,
                "an empty source_cidrs list matches no peer; remove it or list networks",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, c) in cidrs.get_ref().iter().enumerate() {
            match parse_net(c) {
                Ok(net) => {
                    if net.prefix_len() == 0 {
                        self.warn(
                            span.clone(),
                            format!("{field}[{i}]"),
                            format!("`{c}` covers every address: it narrows nothing"),
                        );
                    }
                    out.push(net);
                }
                Err(msg) => {
                    self.error(span.clone(), format!("{field}[{i}]"), msg);
                    ok = false;
                }
            }
        }
        ok.then_some(Some(out))
    }

    fn time_window(
        &mut self,
        window: Option<&Spanned<crate::config::TimeWindowConfig>>,
        field: String,
    ) -> Option<Option<TimeWindow>> {
        let Some(window) = window else {
            return Some(None);
        };
        let span = Some(window.span());
        let start = parse_hhmm(&window.get_ref().start);
        let end = parse_hhmm(&window.get_ref().end);
        match (start, end) {
            (Some(s), Some(e)) if s == e => {
                self.error(
                    span,
                    field,
                    "start equals end: the window would be empty (or all day); remove it or fix it",
                );
                None
            }
            (Some(start_minute), Some(end_minute)) => Some(Some(TimeWindow {
                start_minute,
                end_minute,
            })),
            (s, e) => {
                for (v, k, key) in [
                    (s, &window.get_ref().start, "start"),
                    (e, &window.get_ref().end, "end"),
                ] {
                    if v.is_none() {
                        self.error(
                            span.clone(),
                            format!("{field}.{key}"),
                            format!("`{k}` is not a UTC time `HH:MM`"),
                        );
                    }
                }
                None
            }
        }
    }

    /// `Some(None)`: no webhook; `None`: diagnosed.
    fn webhook(
        &mut self,
        cfg: &OptOutConfig,
        rule: &str,
        field: String,
    ) -> Option<Option<Arc<WebhookSpec>>> {
        let Some(hook) = &cfg.webhook else {
            return Some(None);
        };
        let span = Some(hook.span());
        let w = hook.get_ref();
        let mut ok = true;
        let sig = w.signature_header.to_ascii_lowercase();
        let ts = w.timestamp_header.to_ascii_lowercase();
        for (name, key) in [(&sig, "signature_header"), (&ts, "timestamp_header")] {
            if !is_token(name) {
                self.error(
                    span.clone(),
                    format!("{field}.{key}"),
                    format!("`{name}` is not a valid header name"),
                );
                ok = false;
            }
        }
        if sig == ts {
            self.error(
                span.clone(),
                field.clone(),
                "the signature and timestamp headers must differ",
            );
            ok = false;
        }
        if w.tolerance_secs == 0 {
            self.error(
                span.clone(),
                format!("{field}.tolerance_secs"),
                "a zero tolerance refuses almost every request; use e.g. 300",
            );
            ok = false;
        } else if w.tolerance_secs > LONG_WEBHOOK_TOLERANCE_SECS {
            self.warn(
                span.clone(),
                format!("{field}.tolerance_secs"),
                format!("{} s is a long replay window", w.tolerance_secs),
            );
        }
        let secret = match (&w.secret_file, &w.secret_env) {
            (None, None) => {
                self.error(span, field, "set one of `secret_file` or `secret_env`");
                return None;
            }
            (Some(_), Some(_)) => {
                self.error(span, field, "set only one of `secret_file` or `secret_env`");
                return None;
            }
            (Some(file), None) => {
                let path = self.config.resolve(file);
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        self.check_secret_permissions(
                            &path,
                            span.clone(),
                            format!("{field}.secret_file"),
                        );
                        Some((bytes, format!("file `{}`", path.display())))
                    }
                    Err(e) => {
                        self.error(
                            span.clone(),
                            format!("{field}.secret_file"),
                            format!("cannot read `{}`: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, Some(var)) => match std::env::var_os(var) {
                Some(v) => Some((
                    v.into_encoded_bytes(),
                    format!("environment variable `{var}`"),
                )),
                None => {
                    self.error(
                        span.clone(),
                        format!("{field}.secret_env"),
                        format!("environment variable `{var}` is not set"),
                    );
                    None
                }
            },
        };
        let (mut secret, from) = secret?;
        // A trailing newline from `echo secret > file` is not part of the secret.
        while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
            secret.pop();
        }
        if secret.is_empty() {
            self.error(
                span,
                field,
                format!("the webhook secret from {from} is empty"),
            );
            return None;
        }
        if !ok {
            return None;
        }
        Some(Some(Arc::new(WebhookSpec {
            rule: Arc::from(rule),
            signature_header: sig,
            timestamp_header: ts,
            tolerance_secs: w.tolerance_secs,
            secret,
        })))
    }

    #[cfg(unix)]
    fn check_secret_permissions(
        &mut self,
        path: &std::path::Path,
        span: Option<Range<usize>>,
        field: String,
    ) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                self.warn(
                    span,
                    field,
                    format!(
                        "`{}` is readable by group or others; make it 0600",
                        path.display()
                    ),
                );
            }
        }
    }

    #[cfg(not(unix))]
    fn check_secret_permissions(
        &mut self,
        _path: &std::path::Path,
        _span: Option<Range<usize>>,
        _field: String,
    ) {
    }
}

/// `a or b or c`, for reasons.
pub(crate) fn alternatives_text(alts: &[FactorSet]) -> String {
    let mut out = String::new();
    for (i, a) in alts.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&a.to_string());
    }
    out
}

fn unknown_factor(name: &str) -> String {
    format!("unknown factor `{name}`: use `mtls` or `jwt`")
}

/// A CIDR, or a bare IP as a single-address network.
pub(crate) fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has host bits set; did you mean `{}`?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => Err(format!(
            "`{s}` is not a CIDR (`10.0.0.0/8`) or an IP address"
        )),
    }
}

/// `HH:MM`, 00:00 to 23:59, as minutes after midnight.
fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// RFC 9110 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A route host: `*`, a DNS name, an IPv4 address or a bracketed IPv6
/// address, without a port.
fn check_host(host: &str) -> Result<(), String> {
    if host == "*" {
        return Ok(());
    }
    if host.is_empty() {
        return Err("the host is empty; use `*` for any host".into());
    }
    if host.contains('*') {
        return Err(format!(
            "`{host}`: only `*` alone is supported as a wildcard host"
        ));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("`{host}` is not a valid IPv6 literal"));
    }
    if host.contains(':') {
        return Err(format!("`{host}`: give the host without a port"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(format!("`{host}` is not a valid host name"));
    }
    Ok(())
}

/// The upstream URL that names the gateway's built-in echo server.
pub const BUILTIN_ECHO: &str = "builtin:echo";

/// `http://host[:port][/path]` or `https://...`: (https, host, port).
fn parse_http_url(url: &str) -> Result<(bool, String, u16), String> {
    let bad = |why: &str| {
        format!("`{url}` is not a valid upstream URL ({why}); write `http://host:port` or `https://host[:port]`")
    };
    let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(bad("the scheme must be http or https"));
    };
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("no query, fragment or whitespace"));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad("no user info"));
    }
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let (inner, tail) = after.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
        inner
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("bad IPv6 literal"))?;
        (inner.to_string(), tail.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !host.contains(':') && check_host(&host.to_ascii_lowercase()).is_err() {
        return Err(bad("bad host"));
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u16>()
        {
            Ok(p) if p != 0 => p,
            _ => return Err(bad("bad port")),
        },
        Some(_) => return Err(bad("bad port")),
    };
    Ok((https, host, port))
}

/// Parse one opt-out path pattern: an exact normalized path, or a normalized
/// prefix followed by `/**`. `*` anywhere else is refused, and so is `/**`
/// alone (a catch-all).
fn parse_pattern(raw: &str) -> Result<PathPattern, String> {
    let (base, prefix) = match raw.strip_suffix("/**") {
        Some(base) => (base, true),
        None => (raw, false),
    };
    if prefix && base.is_empty() {
        return Err(format!(
            "`{raw}` is a catch-all: no rule may switch authentication off globally; list the paths it needs"
        ));
    }
    if base.contains('*') {
        return Err(format!("`{raw}`: `*` is only allowed as a final `/**`"));
    }
    let normal = normalize_path(base).map_err(|e| format!("`{raw}`: {e}"))?;
    if normal.as_str() != base {
        let suggestion = if prefix {
            format!("{normal}/**")
        } else {
            normal.to_string()
        };
        return Err(format!(
            "`{raw}` is not in normal form; write `{suggestion}`"
        ));
    }
    if prefix {
        if base.ends_with('/') {
            return Err(format!(
                "`{raw}`: write `{}/**`",
                base.trim_end_matches('/')
            ));
        }
        Ok(PathPattern::Prefix(normal))
    } else {
        Ok(PathPattern::Exact(normal))
    }
}

enum Scope {
    /// Every path the pattern matches is on the route.
    Inside,
    /// The pattern covers everything (or everything below) the route's prefix.
    WholeRoute,
    /// The pattern can never match a path of the route.
    Outside,
}

fn pattern_scope(pattern: &PathPattern, route_prefix: &str) -> Scope {
    match pattern {
        PathPattern::Exact(p) => {
            if prefix_covers(route_prefix, p.as_str()) {
                Scope::Inside
            } else {
                Scope::Outside
            }
        }
        PathPattern::Prefix(p) => {
            let p = p.as_str();
            // The route's prefix is at or below the pattern's: every path of
            // the route below `p/` is waived.
            if p == route_prefix || prefix_covers(p, route_prefix) {
                Scope::WholeRoute
            } else if prefix_covers(route_prefix, p) {
                Scope::Inside
            } else {
                Scope::Outside
            }
        }
    }
}

/// A TOML offset datetime as an instant. Local datetimes, dates and times are
/// refused: an expiry must be an absolute instant, not "midnight wherever the
/// gateway happens to run".
fn datetime_to_instant(dt: &toml::value::Datetime) -> Result<OffsetDateTime, String> {
    let (Some(date), Some(t), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err(format!(
            "`{dt}` has no UTC offset: expiries are absolute instants; write e.g. `{}`",
            "2027-01-31T00:00:00Z"
        ));
    };
    let invalid = || format!("`{dt}` is not a valid date and time");
    let month = time::Month::try_from(date.month).map_err(|_| invalid())?;
    let date = time::Date::from_calendar_date(i32::from(date.year), month, date.day)
        .map_err(|_| invalid())?;
    let clock = time::Time::from_hms_nano(t.hour, t.minute, t.second, t.nanosecond)
        .map_err(|_| invalid())?;
    let offset_secs = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i32::from(minutes) * 60,
    };
    let offset = UtcOffset::from_whole_seconds(offset_secs).map_err(|_| invalid())?;
    Ok(time::PrimitiveDateTime::new(date, clock).assume_offset(offset))
}

/// A user-chosen opt-out's offer, compiled: the disclosure and its digest
/// (consents are bound to the exact text), and who is eligible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSpec {
    pub id: Arc<str>,
    pub title: String,
    pub disclosure: String,
    /// SHA-256 (hex) of `disclosure`.
    pub disclosure_sha256: String,
    pub duration_days: u32,
    pub require_email_verified: bool,
    pub require_amr_any: Vec<String>,
}

impl OfferSpec {
    fn new(id: &str, cfg: &crate::config::OfferConfig) -> OfferSpec {
        use sha2::Digest;
        OfferSpec {
            id: Arc::from(id),
            title: cfg.title.clone(),
            disclosure: cfg.disclosure.clone(),
            disclosure_sha256: hex::encode(sha2::Sha256::digest(cfg.disclosure.as_bytes())),
            duration_days: cfg.duration_days,
            require_email_verified: cfg.require_email_verified,
            require_amr_any: cfg.require_amr_any.clone(),
        }
    }

    /// May a user with these verified claims accept the offer? Every reason
    /// they may not, in words the consent page shows.
    pub fn eligibility(&self, email_verified: bool, amr: &[String]) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if self.require_email_verified && !email_verified {
            why.push("your identity provider has not verified your email address".to_string());
        }
        if !self.require_amr_any.is_empty() && !amr.iter().any(|m| self.require_amr_any.contains(m))
        {
            why.push(format!(
                "you did not sign in with a strong method ({} required)",
                self.require_amr_any.join(" or ")
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }
}
