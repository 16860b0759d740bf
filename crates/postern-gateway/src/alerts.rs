//! Alerts: webhook sinks fed by a bounded queue that never blocks a request.
//!
//! Raising an alert is `try_send` on a bounded channel: when the queue is
//! full the alert is dropped and counted (`postern_alerts_dropped_total`),
//! never waited for. A worker delivers each alert as JSON (with a
//! Slack-compatible `text` field) with a per-attempt timeout and bounded
//! retries with exponential backoff; alerts that still fail are counted
//! (`postern_alerts_failed_total`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri};
use postern_policy::config::{AlertConfig, AlertEventKind, OptOutAlertMode};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::metrics::Metrics;
use crate::{Shared, UpstreamClient};

/// Deliveries in flight at once, per sink.
const CONCURRENCY: usize = 4;
/// How often rule expiry is checked.
const EXPIRY_CHECK: Duration = Duration::from_secs(300);
/// Warn this long before a rule expires (largest first).
const EXPIRY_WARNINGS: [(i64, &str); 2] = [(86_400, "1 day"), (7 * 86_400, "7 days")];

/// One alert, as sent (JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Slack-compatible summary.
    pub text: String,
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Sequence number of the audit record this alert is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Event-specific fields (policy digest, approvers, expiry, …).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Alert {
    pub fn new(kind: AlertEventKind, text: String, time: OffsetDateTime) -> Alert {
        Alert {
            text,
            event: event_name(kind),
            rule: None,
            request_id: None,
            audit_seq: None,
            identity: None,
            peer: None,
            time,
            reasons: Vec::new(),
            details: serde_json::Map::new(),
        }
    }
}

pub fn event_name(kind: AlertEventKind) -> &'static str {
    match kind {
        AlertEventKind::Optout => "optout",
        AlertEventKind::Policy => "policy",
        AlertEventKind::AuditFailure => "audit_failure",
        AlertEventKind::CredentialRefused => "credential_refused",
        AlertEventKind::RuleExpiry => "rule_expiry",
    }
}

/// Per-rule opt-out alert state of one sink.
#[derive(Default)]
struct RuleState {
    /// first_per_window: when the window started.
    window_start: Option<Instant>,
    /// rate: the current minute, uses in it, and whether it already alerted.
    minute_start: Option<Instant>,
    minute_uses: u32,
    minute_alerted: bool,
}

struct Sink {
    cfg: AlertConfig,
    events: HashSet<AlertEventKind>,
    rules: Mutex<HashMap<String, RuleState>>,
    /// This sink's bounded queue (a slow sink cannot starve the others).
    tx: mpsc::Sender<Bytes>,
}

impl Sink {
    fn wants(&self, kind: AlertEventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }

    /// Does this opt-out use raise an alert on this sink (per its mode)?
    fn optout_due(&self, rule: &str, now: Instant) -> Option<String> {
        let (mode, window, rate) = match self.cfg.rule.get(rule) {
            Some(o) => (
                o.optout_mode,
                o.window_secs.unwrap_or(self.cfg.window_secs),
                o.rate_per_min.unwrap_or(self.cfg.rate_per_min),
            ),
            None => (
                self.cfg.optout_mode,
                self.cfg.window_secs,
                self.cfg.rate_per_min,
            ),
        };
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let st = rules.entry(rule.to_string()).or_default();
        match mode {
            OptOutAlertMode::Every => Some(String::new()),
            OptOutAlertMode::FirstPerWindow => {
                let window = Duration::from_secs(window);
                match st.window_start {
                    Some(t) if now.duration_since(t) < window => None,
                    _ => {
                        st.window_start = Some(now);
                        Some(format!(" (first use in {}s)", window.as_secs()))
                    }
                }
            }
            OptOutAlertMode::Rate => {
                let fresh = st
                    .minute_start
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
                if fresh {
                    st.minute_start = Some(now);
                    st.minute_uses = 0;
                    st.minute_alerted = false;
                }
                st.minute_uses = st.minute_uses.saturating_add(1);
                if st.minute_uses > rate && !st.minute_alerted {
                    st.minute_alerted = true;
                    Some(format!(" (more than {rate} uses in a minute)"))
                } else {
                    None
                }
            }
        }
    }
}

/// The alert dispatcher held in [`Shared`].
pub struct Alerts {
    sinks: Vec<Sink>,
    metrics: Arc<Metrics>,
    /// `(rule, expiry, threshold)` already warned about.
    expiry_warned: Mutex<HashSet<(String, i64, i64)>>,
}

impl Alerts {
    /// Validate the sinks and start the delivery worker (no worker when there are none).
    pub fn start(
        configs: &[AlertConfig],
        client: UpstreamClient,
        metrics: Arc<Metrics>,
    ) -> Result<Alerts, String> {
        let mut sinks = Vec::with_capacity(configs.len());
        for cfg in configs {
            let uri: Uri = cfg
                .url
                .parse()
                .map_err(|e| format!("[[alert]] url is not a valid URL: {e}"))?;
            match uri.scheme_str() {
                Some("http") | Some("https") if uri.authority().is_some() => {}
                _ => {
                    return Err("[[alert]] url must be http:// or https:// with a host".to_string())
                }
            }
            if cfg.max_attempts == 0 || cfg.queue_size == 0 {
                return Err("[[alert]] max_attempts and queue_size must be at least 1".to_string());
            }
            let (tx, rx) = mpsc::channel(cfg.queue_size);
            tokio::spawn(deliver(
                rx,
                uri,
                cfg.clone(),
                client.clone(),
                metrics.clone(),
            ));
            sinks.push(Sink {
                cfg: cfg.clone(),
                events: cfg.events.iter().copied().collect(),
                rules: Mutex::new(HashMap::new()),
                tx,
            });
        }
        Ok(Alerts {
            sinks,
            metrics,
            expiry_warned: Mutex::new(HashSet::new()),
        })
    }

    /// Queue `alert` for every sink that wants its kind. Never waits.
    pub fn raise(&self, kind: AlertEventKind, alert: &Alert) {
        let mut body = None;
        for sink in &self.sinks {
            if sink.wants(kind) {
                self.enqueue(sink, alert, &mut body);
            }
        }
    }

    fn enqueue(&self, sink: &Sink, alert: &Alert, body: &mut Option<Bytes>) {
        let bytes = match body {
            Some(b) => b.clone(),
            None => match serde_json::to_vec(alert) {
                Ok(v) => {
                    let b = Bytes::from(v);
                    *body = Some(b.clone());
                    b
                }
                Err(e) => {
                    tracing::error!(error = %e, "alert not serializable");
                    return;
                }
            },
        };
        if sink.tx.try_send(bytes).is_err() {
            self.metrics.alert_dropped();
        }
    }

    /// An opt-out was honoured; its durable audit record is `audit_seq`.
    pub fn optout_used(
        &self,
        rule: &str,
        request_id: &str,
        audit_seq: u64,
        identity: Option<&str>,
        peer: &str,
        path: Option<&str>,
    ) {
        let now = Instant::now();
        for sink in &self.sinks {
            if !sink.wants(AlertEventKind::Optout) {
                continue;
            }
            let Some(why) = sink.optout_due(rule, now) else {
                continue;
            };
            let mut a = Alert::new(
                AlertEventKind::Optout,
                format!(
                    "postern: opt-out `{rule}` used by {peer} on {}{why} (audit record #{audit_seq}, request {request_id})",
                    path.unwrap_or("?")
                ),
                OffsetDateTime::now_utc(),
            );
            a.rule = Some(rule.to_string());
            a.request_id = Some(request_id.to_string());
            a.audit_seq = Some(audit_seq);
            a.identity = identity.map(str::to_string);
            a.peer = Some(peer.to_string());
            // The text differs per sink (its mode), so serialize per sink.
            self.enqueue(sink, &a, &mut None);
        }
    }

    /// The audit sink failed; an opt-out fell back to authentication.
    pub fn audit_failure(&self, rule: &str, request_id: &str, peer: &str, error: &str) {
        let mut a = Alert::new(
            AlertEventKind::AuditFailure,
            format!("postern: audit sink failed ({error}); opt-out `{rule}` not honoured, request {request_id} fell back to authentication"),
            OffsetDateTime::now_utc(),
        );
        a.rule = Some(rule.to_string());
        a.request_id = Some(request_id.to_string());
        a.peer = Some(peer.to_string());
        a.reasons = vec![error.to_string()];
        self.raise(AlertEventKind::AuditFailure, &a);
    }

    /// A revoked, expired or invalid credential was presented.
    pub fn credential_refused(
        &self,
        request_id: Option<&str>,
        peer: &str,
        identity: Option<&str>,
        reasons: Vec<String>,
    ) {
        let mut a = Alert::new(
            AlertEventKind::CredentialRefused,
            format!(
                "postern: credential refused from {peer}: {}",
                reasons.join("; ")
            ),
            OffsetDateTime::now_utc(),
        );
        a.request_id = request_id.map(str::to_string);
        a.peer = Some(peer.to_string());
        a.identity = identity.map(str::to_string);
        a.reasons = reasons;
        self.raise(AlertEventKind::CredentialRefused, &a);
    }

    /// A policy was loaded (`loaded`) or refused. For the reload path:
    /// `digest` of the opt-outs, `approvers` who signed it, `audit_seq` of
    /// the load/refusal audit record, `reasons` for a refusal.
    pub fn policy_event(
        &self,
        loaded: bool,
        digest: &str,
        approvers: &[String],
        audit_seq: Option<u64>,
        reasons: &[String],
    ) {
        let text = if loaded {
            format!(
                "postern: policy {} loaded (approved by {})",
                short(digest),
                if approvers.is_empty() {
                    "nobody".to_string()
                } else {
                    approvers.join(", ")
                }
            )
        } else {
            format!(
                "postern: policy {} REFUSED, last good policy keeps serving: {}",
                short(digest),
                reasons.join("; ")
            )
        };
        let mut a = Alert::new(AlertEventKind::Policy, text, OffsetDateTime::now_utc());
        a.audit_seq = audit_seq;
        a.reasons = reasons.to_vec();
        a.details.insert(
            "outcome".to_string(),
            (if loaded { "loaded" } else { "refused" }).into(),
        );
        a.details.insert("digest".to_string(), digest.into());
        a.details
            .insert("approvers".to_string(), approvers.to_vec().into());
        self.raise(AlertEventKind::Policy, &a);
    }

    /// Warn once per rule and threshold (7 days, 1 day) before it expires.
    pub fn check_rule_expiry(&self, policy: &postern_policy::Policy, now: OffsetDateTime) {
        if self.sinks.is_empty() {
            return;
        }
        for rule in policy.optouts() {
            let left = (rule.expires() - now).whole_seconds();
            if left <= 0 {
                continue;
            }
            // Only the tightest threshold crossed: a rule 12 h from expiry warns "1 day" once.
            let Some((threshold, label)) = EXPIRY_WARNINGS.iter().find(|(t, _)| left <= *t) else {
                continue;
            };
            let key = (
                rule.id().to_string(),
                rule.expires().unix_timestamp(),
                *threshold,
            );
            {
                let mut warned = self.expiry_warned.lock().unwrap_or_else(|e| e.into_inner());
                if !warned.insert(key) {
                    continue;
                }
            }
            let expires = rule
                .expires()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let mut a = Alert::new(
                AlertEventKind::RuleExpiry,
                format!(
                    "postern: opt-out `{}` (owner {}) expires within {label}, at {expires}",
                    rule.id(),
                    rule.owner()
                ),
                now,
            );
            a.rule = Some(rule.id().to_string());
            a.details.insert("expires".to_string(), expires.into());
            a.details.insert("seconds_left".to_string(), left.into());
            self.raise(AlertEventKind::RuleExpiry, &a);
        }
    }
}

fn short(digest: &str) -> &str {
    digest.get(..16).unwrap_or(digest)
}

/// One sink's delivery worker: at most [`CONCURRENCY`] deliveries at once.
async fn deliver(
    mut rx: mpsc::Receiver<Bytes>,
    uri: Uri,
    cfg: AlertConfig,
    client: UpstreamClient,
    metrics: Arc<Metrics>,
) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let cfg = Arc::new(cfg);
    loop {
        // Take a permit first: while every delivery is in flight, alerts
        // wait in the bounded queue (and overflow is counted as dropped).
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(body) = rx.recv().await else {
            return;
        };
        let uri = uri.clone();
        let cfg = cfg.clone();
        let client = client.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if send_with_retry(&client, &uri, &cfg, body).await {
                metrics.alert_sent();
            } else {
                metrics.alert_failed();
            }
        });
    }
}

async fn send_with_retry(
    client: &UpstreamClient,
    uri: &Uri,
    cfg: &AlertConfig,
    body: Bytes,
) -> bool {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut backoff = Duration::from_millis(cfg.backoff_ms);
    for attempt in 1..=cfg.max_attempts {
        let req = Request::post(uri.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header(
                header::USER_AGENT,
                HeaderValue::from_static("postern-alerts"),
            )
            .body(crate::respond::full(body.clone()));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "alert request could not be built");
                return false;
            }
        };
        let outcome = match tokio::time::timeout(timeout, client.request(req)).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("status {}", resp.status())),
        };
        match outcome {
            Ok(()) => return true,
            Err(e) => {
                // Only the host: webhook paths (Slack's) are secrets.
                let host = uri.authority().map_or("", |a| a.as_str());
                tracing::warn!(sink = %host, attempt, error = %e, "alert delivery failed");
            }
        }
        if attempt < cfg.max_attempts {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(Duration::from_secs(60));
        }
    }
    false
}

/// Check rule expiry now and every [`EXPIRY_CHECK`] until `stop`.
pub async fn expiry_task(shared: Weak<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let runtime = shared.runtime.load_full();
        shared
            .alerts
            .check_rule_expiry(&runtime.policy, OffsetDateTime::now_utc());
    }
}

/// A TLS handshake refused (expired, revoked or foreign client certificate).
pub fn handshake_refused(shared: &Shared, peer: SocketAddr, reason: &str) {
    shared.alerts.credential_refused(
        None,
        &peer.ip().to_string(),
        None,
        vec![format!("TLS handshake refused: {reason}")],
    );
}
