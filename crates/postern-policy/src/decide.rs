//! The pure decision core: `decide(policy, facts, identity, now) -> Decision`.
//!
//! No I/O, no clock reads, no async. The gateway gathers facts and identity at
//! the edges, calls this, then acts on the [`Decision`]. `postern explain` is a
//! thin shell over the same function.
//!
//! The order of the decision, and the invariant each step keeps:
//! 1. Route lookup (exact host, then `*`; longest path prefix). No route: 404.
//! 2. Any present-but-invalid credential: 401, and no opt-out is even
//!    looked at. An attacker with a stolen-but-revoked certificate must not
//!    do better than one with none.
//! 3. The route's own requirement ("base"). An authenticated request never
//!    needs an opt-out, so none is recorded for it.
//! 4. Otherwise the most specific *live* opt-out rule (not expired, peer in
//!    its CIDRs, inside its time window) may waive factors. The base decision
//!    travels along as `fallback`: if the webhook condition fails or the
//!    audit record cannot be written, the gateway falls back to it.
//! 5. Upgrades (WebSocket) only where the route or rule allows them.

use std::net::IpAddr;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::factor::{Factor, FactorSet};
use crate::normalize::NormalizedPath;
use crate::policy::{alternatives_text, Policy, WebhookSpec};

/// What the gateway observed about a request, before authentication.
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    /// Request method as sent, e.g. `GET` (case-sensitive per RFC 9110).
    pub method: &'a str,
    /// Host without port, lower-cased by the gateway (a trailing dot is
    /// ignored). Route hosts are compiled lower-case, so an upper-case host
    /// here finds only the `*` routes.
    pub host: &'a str,
    /// The normalized path: the one matched and the one forwarded.
    pub path: &'a NormalizedPath,
    /// The client's address (after trusted-proxy processing).
    pub peer: IpAddr,
    /// The request asks to switch protocols (`Upgrade`).
    pub upgrade: bool,
    /// The request's risk score, 0-100, computed at the edge from observed
    /// signals (0 when no risk engine is configured). Opt-out rules with
    /// `max_risk` do not apply above it.
    pub risk: u8,
}

/// A credential that was presented but did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCredential {
    pub factor: Factor,
    pub reason: String,
}

/// Who the request proved to be, as established by the gateway's authenticators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The authenticated principal (e.g. `alice`), if any factor verified.
    pub principal: Option<String>,
    /// Factors presented and verified.
    pub verified: FactorSet,
    /// Credentials presented but invalid. Any entry here means 401, even where
    /// an opt-out would otherwise apply: only an *absent* credential may fall
    /// into an opt-out.
    pub invalid: Vec<InvalidCredential>,
    /// Opt-out grants carried by the verified client certificate (only ever
    /// filled from a certificate whose chain, signature and revocation status
    /// were checked: the grant is inside the signed certificate).
    pub grants: Vec<GrantClaim>,
    /// The OIDC session's authentication context class (`acr`), if any.
    pub acr: Option<String>,
    /// The OIDC session's authentication methods (`amr`).
    pub amr: Vec<String>,
    /// User-chosen opt-outs this user consented to on this device (from the
    /// device-bound consent record, checked by the gateway).
    pub consents: Vec<ConsentClaim>,
}

/// A recorded consent to an offer, as the decision core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentClaim {
    /// The offer (opt-out rule) id.
    pub offer: String,
    /// SHA-256 (hex) of the exact disclosure text the user saw.
    pub disclosure_sha256: String,
    pub expires: OffsetDateTime,
}

/// A grant signed into a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantClaim {
    pub id: String,
    /// Opt-out rule ids it covers.
    pub rules: Vec<String>,
    /// Factors it may waive; empty: whatever the rule waives.
    pub waives: FactorSet,
    /// Never later than the certificate's own not-after.
    pub not_after: OffsetDateTime,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity::default()
    }
}

/// How an allowed request got through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthVia {
    /// It satisfied the route's requirement with these factors.
    Authenticated(FactorSet),
    /// An opt-out rule waived (some of) the requirement.
    OptOut {
        rule: Arc<str>,
        waived: FactorSet,
        /// Factors that were still required and verified.
        verified: FactorSet,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward upstream.
    Allow { via: AuthVia },
    /// 401: authenticate with one of these factor sets.
    Challenge { accepted: Vec<FactorSet> },
    /// 401 for a session whose authentication is too weak for the route:
    /// re-authenticate with one of these `acr` values (RFC 9470), keeping
    /// the session and the request.
    StepUp { acr_values: Vec<String> },
    /// 403: authenticated, not allowed (identity not on the route, upgrade not allowed).
    Forbidden,
    /// 404: no route covers the host and path.
    NoRoute,
}

/// A check the gateway must perform (with I/O) before an opt-out stands.
#[derive(Debug, Clone)]
pub enum Condition {
    /// Verify the webhook signature over timestamp + body (see [`crate::webhook`]).
    WebhookSignature(Arc<WebhookSpec>),
}

/// The answer, with why.
#[derive(Debug, Clone)]
pub struct Decision {
    pub verdict: Verdict,
    /// Route id that covered the request.
    pub route: Option<Arc<str>>,
    /// Upstream name of that route.
    pub upstream: Option<Arc<str>>,
    /// The opt-out rule that applied (or was considered and refused).
    pub rule: Option<Arc<str>>,
    /// Human-readable reasons, in the order they were established.
    pub reasons: Vec<String>,
    /// The opt-out stands only if this check passes; else use `fallback`.
    pub condition: Option<Condition>,
    /// For an opt-out allow: the decision as if no opt-out applied. The
    /// gateway falls back to it when the condition fails or the audit record
    /// cannot be written (fail closed, invariant 3 and 7).
    pub fallback: Option<Box<Decision>>,
    /// The route allows protocol upgrades for this request.
    pub upgrade_allowed: bool,
    /// The certificate grant that let a `require_grant` rule apply.
    pub grant: Option<Arc<str>>,
    /// The route's requirement, for [`Decision::fall_back`] when there is no
    /// fallback decision.
    alternatives: Arc<[FactorSet]>,
}

impl Decision {
    /// True when this is an allow through an opt-out rule.
    pub fn is_optout(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Allow {
                via: AuthVia::OptOut { .. }
            }
        )
    }

    /// The opt-out did not stand (condition failed, audit unavailable):
    /// return the fallback decision with `why` added to its reasons.
    /// For a decision without a fallback, returns a challenge.
    pub fn fall_back(self, why: &str) -> Decision {
        let mut d = match self.fallback {
            Some(base) => *base,
            None => Decision {
                verdict: Verdict::Challenge {
                    accepted: self.alternatives.to_vec(),
                },
                route: self.route,
                upstream: self.upstream,
                rule: self.rule,
                reasons: self.reasons,
                condition: None,
                fallback: None,
                upgrade_allowed: false,
                grant: None,
                alternatives: self.alternatives,
            },
        };
        d.reasons.push(why.to_string());
        d.condition = None;
        d
    }

    /// The route's requirement (empty when no route matched).
    pub fn route_requirement(&self) -> &[FactorSet] {
        &self.alternatives
    }
}

/// Decide what to do with a request. Pure: same inputs, same answer.
///
/// See the module documentation for the order of checks. `now` is only used
/// for rule expiry and time windows.
pub fn decide(
    policy: &Policy,
    facts: &RequestFacts<'_>,
    identity: &Identity,
    now: OffsetDateTime,
) -> Decision {
    let Some((route_index, route)) = policy
        .find_route_index(facts.host, facts.path)
        .and_then(|i| policy.route_at(i).map(|r| (i, r)))
    else {
        return Decision {
            verdict: Verdict::NoRoute,
            route: None,
            upstream: None,
            rule: None,
            reasons: vec![format!(
                "no route covers host `{}` and path `{}`",
                facts.host, facts.path
            )],
            condition: None,
            fallback: None,
            upgrade_allowed: false,
            grant: None,
            alternatives: Arc::from(Vec::new()),
        };
    };
    let mut reasons = Vec::with_capacity(4);
    reasons.push(concat(&[
        "route `",
        &route.id,
        "` covers `",
        facts.path.as_str(),
        "`",
    ]));
    let decision = |verdict: Verdict, reasons: Vec<String>| Decision {
        verdict,
        route: Some(route.id.clone()),
        upstream: Some(route.upstream.clone()),
        rule: None,
        reasons,
        condition: None,
        fallback: None,
        upgrade_allowed: false,
        grant: None,
        alternatives: route.require.clone(),
    };

    if !identity.invalid.is_empty() {
        for c in &identity.invalid {
            reasons.push(format!(
                "the {} credential was presented but is invalid ({}); a present but invalid credential never falls into an opt-out",
                c.factor, c.reason
            ));
        }
        let accepted = route.require.to_vec();
        return decision(Verdict::Challenge { accepted }, reasons);
    }

    let (base_verdict, base_reason) = authenticate(route, identity);
    if matches!(base_verdict, Verdict::Allow { .. }) {
        reasons.push(base_reason);
        let mut d = decision(base_verdict, reasons);
        apply_upgrade(&mut d, facts.upgrade, route.allow_upgrade(), || {
            format!("route `{}`", route.id)
        });
        return d;
    }

    // Candidates, most specific first; the first live one is the rule.
    let mut considered: Option<&Arc<str>> = None;
    let mut live = None;
    let mut grant: Option<&GrantClaim> = None;
    for rule in policy.candidates(route_index, facts.method, facts.path) {
        let why_not = rule
            .inactive_reason(now, facts.peer)
            .or_else(|| too_risky(rule, facts.risk))
            .or_else(|| {
                rule.offer
                    .as_ref()
                    .and_then(|o| consent_missing(o, identity, now))
            });
        match why_not {
            Some(why) => {
                considered.get_or_insert(&rule.id);
                reasons.push(why);
            }
            None if rule.require_grant => match grant_for(identity, &rule.id, now) {
                Ok(g) => {
                    reasons.push(format!(
                        "certificate grant `{}` covers rule `{}` until {}",
                        g.id,
                        rule.id,
                        rfc3339(g.not_after)
                    ));
                    grant = Some(g);
                    live = Some(rule);
                    break;
                }
                Err(why) => {
                    considered.get_or_insert(&rule.id);
                    reasons.push(why);
                }
            },
            None => {
                live = Some(rule);
                break;
            }
        }
    }

    let Some(rule) = live else {
        reasons.push(base_reason);
        let mut d = decision(base_verdict, reasons);
        d.rule = considered.cloned();
        return d;
    };

    let base = {
        let mut r = reasons.clone();
        r.push(base_reason);
        let mut d = decision(base_verdict, r);
        apply_upgrade(&mut d, facts.upgrade, route.allow_upgrade(), || {
            format!("route `{}`", route.id)
        });
        d
    };

    // A grant narrows what it may waive to what it names.
    let waived = match grant {
        Some(g) if !g.waives.is_empty() => {
            FactorSet::from_iter(rule.waive.iter().filter(|f| g.waives.contains(*f)))
        }
        _ => rule.waive,
    };
    let mut remaining: Vec<FactorSet> = Vec::with_capacity(route.require.len());
    for alt in route.require.iter() {
        let rest = alt.minus(waived);
        if !remaining.contains(&rest) {
            remaining.push(rest);
        }
    }
    let met = remaining
        .iter()
        .copied()
        .find(|rest| identity.verified.is_superset(*rest));
    let mut d = match met {
        Some(rest) if !rest.is_empty() && !route.admits(identity.principal.as_deref()) => {
            // A partial waiver still authenticates: the route's allow-list
            // applies, or waiving one factor would let anyone else in.
            reasons.push(format!(
                "rule `{}` waives {waived} but {} is not among the identities of route `{}`",
                rule.id,
                principal_text(identity),
                route.id
            ));
            decision(Verdict::Forbidden, reasons)
        }
        Some(rest) => {
            reasons.push(if rest.is_empty() && waived == rule.waive {
                rule.waives_text.to_string()
            } else {
                format!(
                    "opt-out rule `{}` waives {waived}; {rest} verified (owner {}: {})",
                    rule.id,
                    rule.owner(),
                    rule.reason()
                )
            });
            let mut d = decision(
                Verdict::Allow {
                    via: AuthVia::OptOut {
                        rule: rule.id.clone(),
                        waived,
                        verified: rest,
                    },
                },
                reasons,
            );
            d.condition = rule.webhook.clone().map(Condition::WebhookSignature);
            d.fallback = Some(Box::new(base));
            d
        }
        None => {
            reasons.push(format!(
                "opt-out rule `{}` waives {waived}; still required: {}",
                rule.id,
                alternatives_text(&remaining)
            ));
            decision(
                Verdict::Challenge {
                    accepted: remaining,
                },
                reasons,
            )
        }
    };
    d.rule = Some(rule.id.clone());
    d.grant = grant.map(|g| Arc::from(g.id.as_str()));
    apply_upgrade(&mut d, facts.upgrade, rule.allow_upgrade, || {
        format!("opt-out rule `{}`", rule.id)
    });
    d
}

/// The route's own requirement, without opt-outs.
fn authenticate(route: &crate::policy::Route, identity: &Identity) -> (Verdict, String) {
    // Step-up: a session whose `acr` the route does not accept satisfies no
    // alternative that relies on the session.
    let weak_session = match &route.step_up_acr {
        Some(acceptable) => !identity
            .acr
            .as_ref()
            .is_some_and(|a| acceptable.contains(a)),
        None => false,
    };
    let met = route.require.iter().copied().find(|alt| {
        identity.verified.is_superset(*alt) && !(weak_session && alt.contains(Factor::Oidc))
    });
    if met.is_none() && weak_session {
        let by_session = route
            .require
            .iter()
            .any(|alt| alt.contains(Factor::Oidc) && identity.verified.is_superset(*alt));
        if let (true, Some(acceptable)) = (by_session, &route.step_up_acr) {
            return (
                Verdict::StepUp {
                    acr_values: acceptable.clone(),
                },
                format!(
                    "route `{}` needs a session with acr {}; this session has {}",
                    route.id,
                    acceptable.join(" or "),
                    identity.acr.as_deref().unwrap_or("none")
                ),
            );
        }
    }
    match met {
        Some(set) if route.admits(identity.principal.as_deref()) => {
            // Built by hand: this is every authenticated request's reason.
            let mut why = String::with_capacity(48);
            why.push_str("authenticated with ");
            set.push_to(&mut why);
            why.push_str(" as ");
            push_principal(&mut why, identity);
            (
                Verdict::Allow {
                    via: AuthVia::Authenticated(set),
                },
                why,
            )
        }
        Some(set) => (
            Verdict::Forbidden,
            format!(
                "authenticated with {set}, but {} is not among the identities of route `{}`",
                principal_text(identity),
                route.id
            ),
        ),
        None => {
            let mut why = String::with_capacity(route.requires_text.len() + 8);
            why.push_str(&route.requires_text);
            identity.verified.push_to(&mut why);
            (
                Verdict::Challenge {
                    accepted: route.require.to_vec(),
                },
                why,
            )
        }
    }
}

/// Upgrades pass only where allowed; an allowed request asking for an
/// upgrade it may not have becomes 403 rather than a silent plain request.
fn apply_upgrade(d: &mut Decision, asked: bool, allowed: bool, by: impl FnOnce() -> String) {
    if !asked {
        return;
    }
    if allowed {
        d.upgrade_allowed = matches!(d.verdict, Verdict::Allow { .. });
        return;
    }
    if matches!(d.verdict, Verdict::Allow { .. }) {
        d.reasons
            .push(format!("{} does not allow protocol upgrades", by()));
        d.verdict = Verdict::Forbidden;
        d.condition = None;
        d.fallback = None;
    }
}

fn principal_text(identity: &Identity) -> String {
    let mut s = String::new();
    push_principal(&mut s, identity);
    s
}

fn push_principal(out: &mut String, identity: &Identity) {
    match &identity.principal {
        Some(p) => {
            out.push('`');
            out.push_str(p);
            out.push('`');
        }
        None => out.push_str("an unnamed principal"),
    }
}

/// The pieces joined, allocated once.
fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

/// The live grant, carried by a verified certificate, that covers `rule`.
/// Grants only count with a verified mTLS factor.
fn grant_for<'a>(
    identity: &'a Identity,
    rule: &str,
    now: OffsetDateTime,
) -> Result<&'a GrantClaim, String> {
    if !identity.verified.contains(Factor::Mtls) {
        return Err(format!("rule `{rule}` requires a certificate grant and no verified client certificate was presented"));
    }
    let mut expired = None;
    for g in identity
        .grants
        .iter()
        .filter(|g| g.rules.iter().any(|r| r == rule))
    {
        if now < g.not_after {
            return Ok(g);
        }
        expired = Some(g);
    }
    Err(match expired {
        Some(g) => format!(
            "certificate grant `{}` for rule `{rule}` expired at {}",
            g.id,
            rfc3339(g.not_after)
        ),
        None => format!(
            "rule `{rule}` requires a certificate grant and the certificate carries none for it"
        ),
    })
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Dynamic risk: a rule with `max_risk` stops applying above it.
fn too_risky(rule: &crate::policy::OptOutRule, risk: u8) -> Option<String> {
    match rule.max_risk {
        Some(max) if risk > max => Some(format!(
            "risk score {risk} is above max_risk {max} of rule `{}`",
            rule.id
        )),
        _ => None,
    }
}

/// A user-chosen opt-out applies only with a live consent to the offer's
/// current disclosure (changing the text voids earlier consents).
fn consent_missing(
    offer: &crate::policy::OfferSpec,
    identity: &Identity,
    now: OffsetDateTime,
) -> Option<String> {
    let mine: Vec<&ConsentClaim> = identity
        .consents
        .iter()
        .filter(|c| *c.offer == *offer.id)
        .collect();
    if mine.is_empty() {
        return Some(format!(
            "offer `{}` applies only to a user who consented to it on this device",
            offer.id
        ));
    }
    let current: Vec<&&ConsentClaim> = mine
        .iter()
        .filter(|c| c.disclosure_sha256 == offer.disclosure_sha256)
        .collect();
    if current.is_empty() {
        return Some(format!(
            "the consent to offer `{}` was given to an earlier disclosure; the user must read and accept the new one",
            offer.id
        ));
    }
    if current.iter().all(|c| now >= c.expires) {
        return Some(format!("the consent to offer `{}` has expired", offer.id));
    }
    None
}
