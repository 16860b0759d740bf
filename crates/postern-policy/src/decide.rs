//! The pure decision core: `decide(policy, facts, identity, now) -> Decision`.
//!
//! No I/O, no clock reads, no async. The gateway gathers facts and identity at
//! the edges, calls this, then acts on the [`Decision`]. `postern explain` is a
//! thin shell over the same function.

use std::net::IpAddr;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::factor::{Factor, FactorSet};
use crate::normalize::NormalizedPath;
use crate::policy::{Policy, WebhookSpec};

/// What the gateway observed about a request, before authentication.
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    /// Request method as sent, e.g. `GET` (case-sensitive per RFC 9110).
    pub method: &'a str,
    /// Host without port, lower-cased by the gateway.
    pub host: &'a str,
    /// The normalized path: the one matched and the one forwarded.
    pub path: &'a NormalizedPath,
    /// The client's address (after trusted-proxy processing).
    pub peer: IpAddr,
    /// The request asks to switch protocols (`Upgrade`).
    pub upgrade: bool,
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
        todo!("{why}")
    }
}

/// Decide what to do with a request. Pure: same inputs, same answer.
pub fn decide(
    policy: &Policy,
    facts: &RequestFacts<'_>,
    identity: &Identity,
    now: OffsetDateTime,
) -> Decision {
    todo!("{policy:?} {facts:?} {identity:?} {now}")
}
