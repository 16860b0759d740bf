//! The risk score: how far a request's situation is from the one an opt-out
//! rule was written for.
//!
//! An opt-out with `max_risk = N` stops applying when the request scores
//! above `N` (see [`crate::decide`]), and the request must authenticate.
//! The score is a sum of points, one term per signal the gateway can
//! observe, each weighted by the `[risk]` section of the config and capped
//! at 100 in total:
//!
//! | signal              | observed as                                   | points                                   |
//! |---------------------|-----------------------------------------------|------------------------------------------|
//! | `untrusted_source`  | source in `untrusted_cidrs`                   | the weight                               |
//! | `unknown_source`    | source in neither list                        | the weight                               |
//! | `new_device`        | certificate / device not seen for the identity | the weight                              |
//! | `rate_per_source`   | requests from the source in the window        | 0 at `rate_threshold`, linear to the weight at 2x |
//! | `rate_per_identity` | requests by the identity in the window        | as `rate_per_source`                     |
//! | `auth_failures`     | invalid credentials from the source in the window | linear to the weight at `auth_failure_threshold` |
//! | `outside_window`    | outside a candidate rule's time window        | the weight                               |
//! | `optout_velocity`   | uses of the candidate rule in the window      | 0 at `optout_velocity_threshold`, linear to the weight at 2x |
//! | `old_tls`           | TLS 1.2 (anything below 1.3)                  | the weight                               |
//!
//! This module is pure, like `decide()`: [`score`] maps weights and observed
//! numbers to a [`RiskScore`]; no I/O, no clock. The numbers are observed and
//! kept (bounded) by the gateway. Properties pinned by tests: the score is
//! zero when nothing is observed, never above 100, and never decreases when
//! any one signal grows (so an attacker cannot lower a score by doing *more*
//! of something suspicious).
//!
//! An address in both lists is untrusted: when the two lists disagree, the
//! safer reading wins.

use std::net::IpAddr;
use std::ops::Range;

use ipnet::IpNet;
use toml::Spanned;

use crate::config::{Config, Diagnostic, LineIndex, RiskConfig, RiskWeightsConfig, Severity};

/// Every signal, in the order contributions are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    UntrustedSource,
    UnknownSource,
    NewDevice,
    RatePerSource,
    RatePerIdentity,
    AuthFailures,
    OutsideWindow,
    OptoutVelocity,
    OldTls,
}

impl Signal {
    /// Every signal, in listing order.
    pub const ALL: [Signal; 9] = [
        Signal::UntrustedSource,
        Signal::UnknownSource,
        Signal::NewDevice,
        Signal::RatePerSource,
        Signal::RatePerIdentity,
        Signal::AuthFailures,
        Signal::OutsideWindow,
        Signal::OptoutVelocity,
        Signal::OldTls,
    ];

    /// The name used in the config (`[risk.weights]`), audit records and
    /// `postern explain`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::UntrustedSource => "untrusted_source",
            Signal::UnknownSource => "unknown_source",
            Signal::NewDevice => "new_device",
            Signal::RatePerSource => "rate_per_source",
            Signal::RatePerIdentity => "rate_per_identity",
            Signal::AuthFailures => "auth_failures",
            Signal::OutsideWindow => "outside_window",
            Signal::OptoutVelocity => "optout_velocity",
            Signal::OldTls => "old_tls",
        }
    }

    /// Position in [`Signal::ALL`] (for per-signal counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Points per signal (0-100 each) and the thresholds the counted signals
/// are measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiskWeights {
    pub untrusted_source: u8,
    pub unknown_source: u8,
    pub new_device: u8,
    pub rate_per_source: u8,
    pub rate_per_identity: u8,
    pub auth_failures: u8,
    pub outside_window: u8,
    pub optout_velocity: u8,
    pub old_tls: u8,
    /// Requests per window (per source, per identity) that are still normal;
    /// the rate signals score from 0 here to their full weight at twice it.
    pub rate_threshold: u32,
    /// Failures per source per window that earn `auth_failures` in full.
    pub auth_failure_threshold: u32,
    /// Uses of one opt-out rule per window that are still normal; scores
    /// from 0 here to the full weight at twice it.
    pub optout_velocity_threshold: u32,
}

impl Default for RiskWeights {
    /// No points for anything; thresholds at their config defaults.
    fn default() -> Self {
        RiskWeights {
            untrusted_source: 0,
            unknown_source: 0,
            new_device: 0,
            rate_per_source: 0,
            rate_per_identity: 0,
            auth_failures: 0,
            outside_window: 0,
            optout_velocity: 0,
            old_tls: 0,
            rate_threshold: DEFAULT_RATE_THRESHOLD,
            auth_failure_threshold: DEFAULT_AUTH_FAILURE_THRESHOLD,
            optout_velocity_threshold: DEFAULT_OPTOUT_VELOCITY_THRESHOLD,
        }
    }
}

impl RiskWeights {
    /// The weight of one signal.
    pub fn weight(&self, signal: Signal) -> u8 {
        match signal {
            Signal::UntrustedSource => self.untrusted_source,
            Signal::UnknownSource => self.unknown_source,
            Signal::NewDevice => self.new_device,
            Signal::RatePerSource => self.rate_per_source,
            Signal::RatePerIdentity => self.rate_per_identity,
            Signal::AuthFailures => self.auth_failures,
            Signal::OutsideWindow => self.outside_window,
            Signal::OptoutVelocity => self.optout_velocity,
            Signal::OldTls => self.old_tls,
        }
    }
}

pub const DEFAULT_RATE_WINDOW_SECS: u64 = 60;
pub const DEFAULT_RATE_THRESHOLD: u32 = 100;
pub const DEFAULT_AUTH_FAILURE_THRESHOLD: u32 = 5;
pub const DEFAULT_OPTOUT_VELOCITY_THRESHOLD: u32 = 600;
/// The longest counting window (a day): longer windows would make a burst
/// weigh on a source for longer than any operator can reason about.
pub const MAX_RATE_WINDOW_SECS: u64 = 86_400;

/// What the gateway observed about one request, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RiskSignals {
    /// The source is in `untrusted_cidrs`.
    pub untrusted_source: bool,
    /// The source is in neither `trusted_cidrs` nor `untrusted_cidrs`.
    pub unknown_source: bool,
    /// The identity presents a certificate (or device) not seen before.
    pub new_device: bool,
    /// Requests from this source in the window, this one included.
    pub source_requests: u32,
    /// Requests by this identity in the window, this one included.
    pub identity_requests: u32,
    /// Invalid credentials presented from this source in the window.
    pub auth_failures: u32,
    /// The request falls outside the time window of an opt-out rule that
    /// covers it.
    pub outside_window: bool,
    /// Uses of the opt-out rule covering the request in the window, before it.
    pub optout_uses: u32,
    /// The connection negotiated TLS older than 1.3.
    pub old_tls: bool,
}

/// A request's risk: the total (0-100) and what each signal added.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RiskScore {
    /// The sum of the contributions, capped at 100.
    pub total: u8,
    /// `(signal name, points)` for every signal that added points, in
    /// [`Signal::ALL`] order. Their sum may exceed `total` (the cap).
    pub contributions: Vec<(&'static str, u8)>,
}

impl RiskScore {
    /// The points one signal added (0 when it added none).
    pub fn points(&self, signal: &str) -> u8 {
        self.contributions
            .iter()
            .find(|(name, _)| *name == signal)
            .map_or(0, |(_, p)| *p)
    }
}

/// The score of one request. Pure: no I/O, no clock; same inputs, same score.
pub fn score(weights: &RiskWeights, signals: &RiskSignals) -> RiskScore {
    let w = weights;
    let s = signals;
    let terms = [
        flag(w.untrusted_source, s.untrusted_source),
        flag(w.unknown_source, s.unknown_source),
        flag(w.new_device, s.new_device),
        above(w.rate_per_source, s.source_requests, w.rate_threshold),
        above(w.rate_per_identity, s.identity_requests, w.rate_threshold),
        up_to(w.auth_failures, s.auth_failures, w.auth_failure_threshold),
        flag(w.outside_window, s.outside_window),
        above(
            w.optout_velocity,
            s.optout_uses,
            w.optout_velocity_threshold,
        ),
        flag(w.old_tls, s.old_tls),
    ];
    let mut total: u32 = 0;
    let mut contributions = Vec::new();
    for (signal, points) in Signal::ALL.into_iter().zip(terms) {
        if points > 0 {
            total += u32::from(points);
            contributions.push((signal.name(), points));
        }
    }
    RiskScore {
        total: u8::try_from(total.min(100)).unwrap_or(100),
        contributions,
    }
}

/// A yes/no signal: the weight or nothing. Weights above 100 count as 100
/// (a hand-built [`RiskWeights`] cannot overflow the scale).
fn flag(weight: u8, on: bool) -> u8 {
    if on {
        weight.min(100)
    } else {
        0
    }
}

/// A counted signal that is normal up to `threshold`: 0 points there,
/// rising linearly (rounded up, so any excess shows) to the weight at twice
/// the threshold.
fn above(weight: u8, count: u32, threshold: u32) -> u8 {
    let t = u64::from(threshold.max(1));
    let excess = u64::from(count).saturating_sub(t).min(t);
    scale(weight, excess, t)
}

/// A counted signal where every occurrence matters: linear from 0 at none
/// to the weight at `threshold`.
fn up_to(weight: u8, count: u32, threshold: u32) -> u8 {
    let t = u64::from(threshold.max(1));
    scale(weight, u64::from(count).min(t), t)
}

/// `weight * part / whole`, rounded up; `part <= whole`, `whole >= 1`.
fn scale(weight: u8, part: u64, whole: u64) -> u8 {
    let w = u64::from(weight.min(100));
    u8::try_from((w * part).div_ceil(whole)).unwrap_or(100)
}

/// Where a source address stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceClass {
    Trusted,
    Untrusted,
    /// In neither list.
    Unknown,
}

/// The compiled `[risk]` section: address lists, window and weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskModel {
    trusted: Vec<IpNet>,
    untrusted: Vec<IpNet>,
    window_secs: u64,
    weights: RiskWeights,
}

impl RiskModel {
    /// A model from parts (tests and tools; the gateway compiles one from
    /// the config). A window of 0 is taken as 1 second.
    pub fn new(
        trusted: Vec<IpNet>,
        untrusted: Vec<IpNet>,
        window_secs: u64,
        weights: RiskWeights,
    ) -> RiskModel {
        RiskModel {
            trusted,
            untrusted,
            window_secs: window_secs.clamp(1, MAX_RATE_WINDOW_SECS),
            weights,
        }
    }

    pub fn weights(&self) -> &RiskWeights {
        &self.weights
    }

    /// The counting window of the rate, failure and velocity signals.
    pub fn window_secs(&self) -> u64 {
        self.window_secs
    }

    pub fn trusted_cidrs(&self) -> &[IpNet] {
        &self.trusted
    }

    pub fn untrusted_cidrs(&self) -> &[IpNet] {
        &self.untrusted
    }

    /// Trusted, untrusted or neither. Untrusted wins over trusted; an
    /// IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is matched as IPv4 too,
    /// so a dual-stack listener cannot move a client between lists.
    pub fn source_class(&self, ip: IpAddr) -> SourceClass {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let inside = |nets: &[IpNet]| {
            nets.iter()
                .any(|n| n.contains(&ip) || mapped.is_some_and(|m| n.contains(&m)))
        };
        if inside(&self.untrusted) {
            SourceClass::Untrusted
        } else if inside(&self.trusted) {
            SourceClass::Trusted
        } else {
            SourceClass::Unknown
        }
    }

    /// [`score`] with this model's weights.
    pub fn score(&self, signals: &RiskSignals) -> RiskScore {
        score(&self.weights, signals)
    }
}

/// Compile the `[risk]` section: every problem as a diagnostic with file,
/// line and field. Also warns about `max_risk` rules that can never take
/// effect (no `[risk]` section, or every weight 0).
pub(crate) fn compile(config: &Config) -> (Option<RiskModel>, Vec<Diagnostic>) {
    let mut c = Checker {
        config,
        lines: LineIndex::new(&config.source.text),
        diagnostics: Vec::new(),
    };
    let model = config.risk.as_ref().map(|r| c.model(r));
    // A weight refused above reads as 0: say so once, as that error.
    let refused = c.diagnostics.iter().any(|d| d.severity == Severity::Error);
    let inert = match &model {
        None => Some("there is no [risk] section, so every request scores 0"),
        Some(_) if refused => None,
        Some(m) if Signal::ALL.iter().all(|s| m.weights.weight(*s) == 0) => {
            Some("every [risk.weights] weight is 0, so every request scores 0")
        }
        Some(_) => None,
    };
    if let Some(why) = inert {
        for o in &config.optouts {
            let o = o.get_ref();
            if let Some(max) = &o.max_risk {
                c.push(
                    Severity::Warning,
                    Some(max.span()),
                    format!("optout[{}].max_risk", o.id.get_ref()),
                    format!("max_risk never takes effect: {why}"),
                );
            }
        }
    }
    (model, c.diagnostics)
}

struct Checker<'a> {
    config: &'a Config,
    lines: LineIndex,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
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

    /// Span of the `[risk]` header, for problems without a field of their own.
    fn header_span(&self) -> Option<Range<usize>> {
        let text = &self.config.source.text;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            if line.trim() == "[risk]" {
                let lead = line.len() - line.trim_start().len();
                return Some(offset + lead..offset + line.len());
            }
            offset += line.len();
        }
        None
    }

    fn model(&mut self, r: &RiskConfig) -> RiskModel {
        let trusted = self.nets(&r.trusted_cidrs, "trusted_cidrs");
        let untrusted = self.nets(&r.untrusted_cidrs, "untrusted_cidrs");
        for net in &trusted {
            if let Some(entry) = r
                .untrusted_cidrs
                .iter()
                .find(|e| parse_net(e.get_ref()).ok() == Some(*net))
            {
                self.push(
                    Severity::Warning,
                    Some(entry.span()),
                    "risk.untrusted_cidrs".to_string(),
                    format!("`{net}` is in both lists; it counts as untrusted"),
                );
            }
        }
        let window_secs = self.bounded(
            r.rate_window_secs.as_ref(),
            "risk.rate_window_secs",
            DEFAULT_RATE_WINDOW_SECS,
            1,
            MAX_RATE_WINDOW_SECS,
        );
        let threshold = |c: &mut Self, v: Option<&Spanned<u64>>, field: &str, default: u32| {
            let v = c.bounded(v, field, u64::from(default), 1, u64::from(u32::MAX));
            u32::try_from(v).unwrap_or(default)
        };
        let rate_threshold = threshold(
            self,
            r.rate_threshold.as_ref(),
            "risk.rate_threshold",
            DEFAULT_RATE_THRESHOLD,
        );
        let auth_failure_threshold = threshold(
            self,
            r.auth_failure_threshold.as_ref(),
            "risk.auth_failure_threshold",
            DEFAULT_AUTH_FAILURE_THRESHOLD,
        );
        let optout_velocity_threshold = threshold(
            self,
            r.optout_velocity_threshold.as_ref(),
            "risk.optout_velocity_threshold",
            DEFAULT_OPTOUT_VELOCITY_THRESHOLD,
        );
        let weights = match &r.weights {
            Some(w) => self.weights(
                w,
                rate_threshold,
                auth_failure_threshold,
                optout_velocity_threshold,
            ),
            None => {
                let span = self.header_span();
                self.push(
                    Severity::Warning,
                    span,
                    "risk.weights".to_string(),
                    "no [risk.weights]: every signal scores 0".to_string(),
                );
                RiskWeights {
                    rate_threshold,
                    auth_failure_threshold,
                    optout_velocity_threshold,
                    ..RiskWeights::default()
                }
            }
        };
        if trusted.is_empty() && untrusted.is_empty() && weights.unknown_source > 0 {
            let span = r
                .weights
                .as_ref()
                .and_then(|w| w.unknown_source.as_ref().map(Spanned::span));
            self.push(
                Severity::Warning,
                span,
                "risk.weights.unknown_source".to_string(),
                "neither trusted_cidrs nor untrusted_cidrs is set: every source is unknown and scores these points".to_string(),
            );
        }
        RiskModel {
            trusted,
            untrusted,
            window_secs,
            weights,
        }
    }

    fn weights(
        &mut self,
        w: &RiskWeightsConfig,
        rate_threshold: u32,
        auth_failure_threshold: u32,
        optout_velocity_threshold: u32,
    ) -> RiskWeights {
        // Destructured so that a new weight in the config cannot be forgotten here.
        let RiskWeightsConfig {
            untrusted_source,
            unknown_source,
            new_device,
            rate_per_source,
            rate_per_identity,
            auth_failures,
            outside_window,
            optout_velocity,
            old_tls,
        } = w;
        let mut points = |v: &Option<Spanned<u64>>, signal: Signal| {
            let field = format!("risk.weights.{}", signal.name());
            let p = self.bounded(v.as_ref(), &field, 0, 0, 100);
            u8::try_from(p).unwrap_or(0)
        };
        RiskWeights {
            untrusted_source: points(untrusted_source, Signal::UntrustedSource),
            unknown_source: points(unknown_source, Signal::UnknownSource),
            new_device: points(new_device, Signal::NewDevice),
            rate_per_source: points(rate_per_source, Signal::RatePerSource),
            rate_per_identity: points(rate_per_identity, Signal::RatePerIdentity),
            auth_failures: points(auth_failures, Signal::AuthFailures),
            outside_window: points(outside_window, Signal::OutsideWindow),
            optout_velocity: points(optout_velocity, Signal::OptoutVelocity),
            old_tls: points(old_tls, Signal::OldTls),
            rate_threshold,
            auth_failure_threshold,
            optout_velocity_threshold,
        }
    }

    /// A number in `min..=max`, or the default (with an error) when outside.
    fn bounded(
        &mut self,
        v: Option<&Spanned<u64>>,
        field: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            n
        } else {
            self.push(
                Severity::Error,
                Some(v.span()),
                field.to_string(),
                format!("{n} is out of range: use {min} to {max}"),
            );
            default
        }
    }

    fn nets(&mut self, entries: &[Spanned<String>], list: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match parse_net(entry.get_ref()) {
                Ok(net) => out.push(net),
                Err(msg) => self.push(
                    Severity::Error,
                    Some(entry.span()),
                    format!("risk.{list}[{i}]"),
                    msg,
                ),
            }
        }
        out
    }
}

/// A CIDR or a bare address, with the compiler's rules (no host bits set).
fn parse_net(s: &str) -> Result<IpNet, String> {
    crate::policy::parse_net(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    fn weights_all(points: u8) -> RiskWeights {
        RiskWeights {
            untrusted_source: points,
            unknown_source: points,
            new_device: points,
            rate_per_source: points,
            rate_per_identity: points,
            auth_failures: points,
            outside_window: points,
            optout_velocity: points,
            old_tls: points,
            rate_threshold: 10,
            auth_failure_threshold: 5,
            optout_velocity_threshold: 20,
        }
    }

    #[test]
    fn nothing_observed_scores_zero() {
        let s = score(&weights_all(100), &RiskSignals::default());
        assert_eq!(s.total, 0);
        assert!(s.contributions.is_empty());
    }

    #[test]
    fn flags_add_their_weight_and_are_named() {
        let w = RiskWeights {
            untrusted_source: 30,
            old_tls: 5,
            ..RiskWeights::default()
        };
        let s = score(
            &w,
            &RiskSignals {
                untrusted_source: true,
                old_tls: true,
                new_device: true, // weight 0: not listed
                ..RiskSignals::default()
            },
        );
        assert_eq!(s.total, 35);
        assert_eq!(
            s.contributions,
            vec![("untrusted_source", 30), ("old_tls", 5)]
        );
        assert_eq!(s.points("old_tls"), 5);
        assert_eq!(s.points("new_device"), 0);
    }

    #[test]
    fn rate_scores_nothing_up_to_the_threshold_and_the_full_weight_at_twice_it() {
        let w = RiskWeights {
            rate_per_source: 40,
            rate_threshold: 10,
            ..RiskWeights::default()
        };
        let at = |n| {
            score(
                &w,
                &RiskSignals {
                    source_requests: n,
                    ..RiskSignals::default()
                },
            )
            .total
        };
        assert_eq!(at(0), 0);
        assert_eq!(at(10), 0);
        assert_eq!(at(11), 4);
        assert_eq!(at(15), 20);
        assert_eq!(at(20), 40);
        assert_eq!(at(1_000_000), 40);
        assert_eq!(at(u32::MAX), 40);
    }

    #[test]
    fn every_auth_failure_counts_up_to_the_threshold() {
        let w = RiskWeights {
            auth_failures: 50,
            auth_failure_threshold: 5,
            ..RiskWeights::default()
        };
        let at = |n| {
            score(
                &w,
                &RiskSignals {
                    auth_failures: n,
                    ..RiskSignals::default()
                },
            )
            .total
        };
        assert_eq!(at(0), 0);
        assert_eq!(at(1), 10);
        assert_eq!(at(5), 50);
        assert_eq!(at(500), 50);
    }

    #[test]
    fn total_is_capped_at_100_but_contributions_are_kept() {
        let s = score(
            &weights_all(60),
            &RiskSignals {
                untrusted_source: true,
                old_tls: true,
                ..RiskSignals::default()
            },
        );
        assert_eq!(s.total, 100);
        assert_eq!(
            s.contributions
                .iter()
                .map(|(_, p)| u32::from(*p))
                .sum::<u32>(),
            120
        );
    }

    #[test]
    fn weights_above_100_and_zero_thresholds_do_not_overflow() {
        let mut w = weights_all(255);
        w.rate_threshold = 0;
        w.auth_failure_threshold = 0;
        w.optout_velocity_threshold = 0;
        let s = score(
            &w,
            &RiskSignals {
                source_requests: u32::MAX,
                auth_failures: u32::MAX,
                ..RiskSignals::default()
            },
        );
        assert_eq!(s.total, 100);
        assert!(s.contributions.iter().all(|(_, p)| *p <= 100));
    }

    #[test]
    fn untrusted_wins_and_mapped_ipv4_is_matched() {
        let m = RiskModel::new(
            vec!["10.0.0.0/8".parse().unwrap()],
            vec!["10.6.6.0/24".parse().unwrap()],
            60,
            RiskWeights::default(),
        );
        assert_eq!(
            m.source_class("10.1.2.3".parse().unwrap()),
            SourceClass::Trusted
        );
        assert_eq!(
            m.source_class("10.6.6.6".parse().unwrap()),
            SourceClass::Untrusted
        );
        assert_eq!(
            m.source_class("::ffff:10.6.6.6".parse().unwrap()),
            SourceClass::Untrusted
        );
        assert_eq!(
            m.source_class("::ffff:10.1.1.1".parse().unwrap()),
            SourceClass::Trusted
        );
        assert_eq!(
            m.source_class("192.0.2.1".parse().unwrap()),
            SourceClass::Unknown
        );
    }

    fn signals() -> impl Strategy<Value = RiskSignals> {
        (
            any::<[bool; 5]>(),
            (any::<u32>(), 0u32..100, any::<u32>(), 0u32..100),
        )
            .prop_map(|(f, (a, b, c, d))| RiskSignals {
                untrusted_source: f[0],
                unknown_source: f[1],
                new_device: f[2],
                outside_window: f[3],
                old_tls: f[4],
                source_requests: a,
                identity_requests: b,
                auth_failures: c,
                optout_uses: d,
            })
    }

    fn weights() -> impl Strategy<Value = RiskWeights> {
        (any::<[u8; 9]>(), 0u32..50, 0u32..10, 0u32..50).prop_map(|(p, r, a, v)| RiskWeights {
            untrusted_source: p[0],
            unknown_source: p[1],
            new_device: p[2],
            rate_per_source: p[3],
            rate_per_identity: p[4],
            auth_failures: p[5],
            outside_window: p[6],
            optout_velocity: p[7],
            old_tls: p[8],
            rate_threshold: r,
            auth_failure_threshold: a,
            optout_velocity_threshold: v,
        })
    }

    /// `s` with one signal raised (a flag set, a count increased by `by`).
    fn raise(mut s: RiskSignals, which: usize, by: u32) -> RiskSignals {
        match which {
            0 => s.untrusted_source = true,
            1 => s.unknown_source = true,
            2 => s.new_device = true,
            3 => s.source_requests = s.source_requests.saturating_add(by),
            4 => s.identity_requests = s.identity_requests.saturating_add(by),
            5 => s.auth_failures = s.auth_failures.saturating_add(by),
            6 => s.outside_window = true,
            7 => s.optout_uses = s.optout_uses.saturating_add(by),
            _ => s.old_tls = true,
        }
        s
    }

    proptest! {
        #[test]
        fn score_is_monotone_in_every_signal(w in weights(), s in signals(), which in 0usize..9, by in 0u32..200) {
            let before = score(&w, &s);
            let after = score(&w, &raise(s, which, by));
            prop_assert!(after.total >= before.total, "{before:?} -> {after:?}");
            for signal in Signal::ALL {
                prop_assert!(after.points(signal.name()) >= before.points(signal.name()));
            }
        }

        #[test]
        fn score_is_capped_and_consistent(w in weights(), s in signals()) {
            let r = score(&w, &s);
            prop_assert!(r.total <= 100);
            let sum: u32 = r.contributions.iter().map(|(_, p)| u32::from(*p)).sum();
            prop_assert_eq!(u32::from(r.total), sum.min(100));
            for (name, p) in &r.contributions {
                prop_assert!(*p > 0 && *p <= 100);
                let signal = Signal::ALL.iter().find(|s| s.name() == *name);
                prop_assert!(signal.is_some_and(|s| *p <= w.weight(*s).min(100)));
            }
        }

        #[test]
        fn all_zero_signals_score_zero(w in weights()) {
            prop_assert_eq!(score(&w, &RiskSignals::default()), RiskScore::default());
        }
    }

    const BASE: &str = r#"
[tls]
cert = "server.pem"
key = "server.key"
[audit]
path = "audit.jsonl"
signing_key = "audit.key"
[[upstream]]
name = "echo"
url = "http://127.0.0.1:9000"
[[route]]
id = "app"
path_prefix = "/"
upstream = "echo"
require = [["mtls"]]
[[optout]]
id = "healthz"
route = "app"
methods = ["GET"]
paths = ["/healthz"]
waive = "all"
owner = "platform-team"
reason = "load balancer health checks"
expires = 2027-01-31T00:00:00Z
max_risk = 40
"#;

    fn compiled(extra: &str) -> (Option<RiskModel>, Vec<Diagnostic>) {
        let text = format!("{BASE}{extra}");
        let config = Config::parse(Path::new("p.toml"), &text).unwrap();
        compile(&config)
    }

    fn line_of(extra: &str, needle: &str) -> usize {
        format!("{BASE}{extra}")
            .lines()
            .position(|l| l.contains(needle))
            .unwrap()
            + 1
    }

    #[test]
    fn risk_section_compiles_with_defaults() {
        let extra = "[risk]\ntrusted_cidrs = [\"10.0.0.0/8\"]\nuntrusted_cidrs = [\"192.0.2.7\"]\n[risk.weights]\nuntrusted_source = 60\nold_tls = 10\n";
        let (m, d) = compiled(extra);
        assert!(d.is_empty(), "{d:?}");
        let m = m.unwrap();
        assert_eq!(m.window_secs(), DEFAULT_RATE_WINDOW_SECS);
        assert_eq!(m.weights().untrusted_source, 60);
        assert_eq!(m.weights().new_device, 0);
        assert_eq!(m.weights().rate_threshold, DEFAULT_RATE_THRESHOLD);
        assert_eq!(
            m.source_class("192.0.2.7".parse().unwrap()),
            SourceClass::Untrusted
        );
    }

    #[test]
    fn out_of_range_weight_is_an_error_naming_line_and_field() {
        let extra = "[risk]\nuntrusted_cidrs = [\"192.0.2.0/24\"]\n[risk.weights]\nuntrusted_source = 60\nnew_device = 101\n";
        let (_, d) = compiled(extra);
        let e: Vec<_> = d.iter().filter(|d| d.severity == Severity::Error).collect();
        assert_eq!(e.len(), 1, "{d:?}");
        let (_, d) = compiled("[risk]\n[risk.weights]\nold_tls = 300\n");
        assert_eq!(
            d.len(),
            1,
            "only the error, no 'every weight is 0' warning: {d:?}"
        );
        assert_eq!(e[0].field, "risk.weights.new_device");
        assert_eq!(e[0].line, line_of(extra, "new_device = 101"));
        assert_eq!(e[0].file, Path::new("p.toml"));
        assert!(e[0].message.contains("0 to 100"), "{}", e[0]);
    }

    #[test]
    fn bad_cidr_zero_window_and_zero_threshold_are_errors() {
        let extra = "[risk]\ntrusted_cidrs = [\"10.0.0.1/8\", \"nonsense\"]\nrate_window_secs = 0\nrate_threshold = 0\n[risk.weights]\nrate_per_source = 10\n";
        let (_, d) = compiled(extra);
        let fields: Vec<_> = d
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| (d.field.as_str(), d.line))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("risk.trusted_cidrs[0]", line_of(extra, "trusted_cidrs")),
                ("risk.trusted_cidrs[1]", line_of(extra, "trusted_cidrs")),
                ("risk.rate_window_secs", line_of(extra, "rate_window_secs")),
                ("risk.rate_threshold", line_of(extra, "rate_threshold")),
            ],
            "{d:?}"
        );
    }

    #[test]
    fn unknown_risk_field_is_a_parse_error() {
        let text = format!("{BASE}[risk]\n[risk.weights]\nuntrusted_sauce = 3\n");
        let d = Config::parse(Path::new("p.toml"), &text).unwrap_err();
        assert!(d[0].message.contains("untrusted_sauce"), "{}", d[0]);
    }

    #[test]
    fn max_risk_without_a_risk_section_warns() {
        let (m, d) = compiled("");
        assert!(m.is_none());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].severity, Severity::Warning);
        assert_eq!(d[0].field, "optout[healthz].max_risk");
        assert_eq!(d[0].line, line_of("", "max_risk"));
        let (_, d) = compiled("[risk]\n[risk.weights]\nold_tls = 0\n");
        assert!(
            d.iter()
                .any(|d| d.message.contains("every [risk.weights] weight is 0")),
            "{d:?}"
        );
    }
}
