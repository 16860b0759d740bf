//! postern's edges: the TLS/mTLS listener, authentication, the reverse
//! proxy and the wiring to the audit log. The decisions themselves are made
//! by the pure core in `postern-policy`; this crate gathers facts, acts on
//! the decision, and writes the audit record.

pub mod alerts;
pub mod authn;
pub mod certs;
pub mod consent;
pub mod console;
pub mod echo;
pub mod h1serve;
pub mod headers;
pub mod metrics;
pub mod oidc;
pub mod reload;
pub mod respond;
pub mod risk;
pub mod server;
pub mod service;
pub mod session;
pub mod tls;
pub mod upstream;
pub mod workers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use postern_audit::AuditLog;
use postern_policy::Policy;

pub use server::{start, GatewayError, RunningGateway};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of everything postern sends.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// The pooled client that talks to upstreams (HTTP/1.1, plain or TLS).
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Where an upstream is.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// `authority` as the `Host` of requests sent to it.
    pub host: Option<http::HeaderValue>,
}

impl Upstream {
    pub fn new(scheme: Scheme, authority: Authority) -> Upstream {
        let host = http::HeaderValue::from_str(authority.as_str()).ok();
        Upstream {
            scheme,
            authority,
            host,
        }
    }
}

/// What changes on a policy reload, swapped atomically.
pub struct Runtime {
    pub policy: Policy,
    pub upstreams: HashMap<String, Upstream>,
}

/// State shared by every connection.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub authn: authn::Authenticator,
    pub audit: AuditLog,
    pub client: UpstreamClient,
    /// Keep-alive connections to plain-http upstreams (see [`upstream`]).
    pub pool: Arc<upstream::Pool>,
    pub trust_domain: String,
    pub max_body: usize,
    pub upstream_timeout: Duration,
    pub metrics: Arc<metrics::Metrics>,
    pub alerts: alerts::Alerts,
    /// Browser sign-in (`[oidc]`), when configured.
    pub oidc: Option<Arc<oidc::Oidc>>,
    /// Recent requests, failures, opt-out uses and devices (bounded), for
    /// the risk score.
    pub risk: risk::RiskState,
    /// What the admin console shows that the request path records (recent
    /// opt-out uses, the policy serving now), and its hooks.
    pub console: console::ConsoleState,
    /// Consents to user-chosen opt-outs, when the policy has offers.
    pub consents: Option<Arc<consent::ConsentStore>>,
}

impl Shared {
    pub fn policy(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }
}
