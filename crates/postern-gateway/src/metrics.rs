//! Prometheus metrics, hand-rolled: atomics, a fixed-bucket histogram, and
//! the text exposition format (0.0.4), served on a separate admin listener.
//!
//! Series whose value comes from state rather than from events (seconds until
//! each opt-out rule expires, the server certificate's remaining life) are
//! computed at scrape time from the current policy, so a reload shows at once.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_policy::Policy;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{Body, Shared};

/// Bucket upper bounds (seconds) for latency histograms: 10 µs … 5 s.
const BUCKETS: [f64; 17] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Per-request series are kept in this many shards, one per thread (by a
/// thread's first use), summed at scrape time: every request updating the
/// same counters would bounce their cache lines between the cores.
const SHARDS: usize = 8;

/// This thread's shard.
fn shard() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.try_with(|s| *s).unwrap_or(0)
}

/// One shard of a [`Histogram`], on cache lines of its own.
#[repr(align(128))]
struct HistShard {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram with fixed buckets; observations are lock-free.
pub struct Histogram {
    shards: [HistShard; SHARDS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            shards: std::array::from_fn(|_| HistShard {
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let idx = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        let Some(shard) = self.shards.get(shard()) else {
            return;
        };
        if let Some(c) = shard.counts.get(idx) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations in bucket `i` (the last is `+Inf`), over every shard.
    fn count(&self, i: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.counts.get(i).map_or(0, |c| c.load(Ordering::Relaxed)))
            .sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.count(i);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.count(BUCKETS.len());
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self
            .shards
            .iter()
            .map(|s| s.sum_nanos.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add) as f64
            / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Every series postern exports.
#[derive(Default)]
pub struct Metrics {
    /// decision → route → count, per shard (see [`SHARDS`]).
    requests: [RequestShard; SHARDS],
    /// rule → count.
    optout_uses: Mutex<BTreeMap<String, u64>>,
    pub decision_duration: Histogram,
    pub audit_write_duration: Histogram,
    audit_failures: AtomicU64,
    policy_generation: AtomicU64,
    /// Unix seconds of the last successful policy load.
    policy_load_ts: AtomicI64,
    /// Unix seconds of the gateway certificate's not-after; `i64::MIN` = unknown.
    server_cert_not_after: AtomicI64,
    alerts_sent: AtomicU64,
    alerts_dropped: AtomicU64,
    alerts_failed: AtomicU64,
}

/// One shard of the request counts, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct RequestShard(Mutex<BTreeMap<String, BTreeMap<String, u64>>>);

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(key).or_insert(0) += 1;
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            server_cert_not_after: AtomicI64::new(i64::MIN),
            ..Metrics::default()
        }
    }

    /// `postern_requests_total`'s samples, summed over the shards.
    fn render_requests(&self, out: &mut String) {
        let mut m: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for shard in &self.requests {
            let part = shard.0.lock().unwrap_or_else(|e| e.into_inner());
            for (decision, routes) in part.iter() {
                let sum = m.entry(decision.clone()).or_default();
                for (route, n) in routes {
                    *sum.entry(route.clone()).or_insert(0) += n;
                }
            }
        }
        for (decision, routes) in m.iter() {
            for (route, n) in routes {
                let _ = writeln!(
                    out,
                    "postern_requests_total{{decision=\"{}\",route=\"{}\"}} {n}",
                    escape(decision),
                    escape(route)
                );
            }
        }
    }

    /// One answered request (the final decision; `route` empty when none matched).
    pub fn request(&self, decision: &str, route: &str) {
        // Allocates only the first time a (decision, route) pair is seen.
        let Some(shard) = self.requests.get(shard()) else {
            return;
        };
        let mut m = shard.0.lock().unwrap_or_else(|e| e.into_inner());
        let routes = match m.get_mut(decision) {
            Some(routes) => routes,
            None => m.entry(decision.to_string()).or_default(),
        };
        match routes.get_mut(route) {
            Some(n) => *n += 1,
            None => {
                routes.insert(route.to_string(), 1);
            }
        }
    }

    /// An opt-out honoured (its durable audit record was written).
    pub fn optout_used(&self, rule: &str) {
        bump(&self.optout_uses, rule.to_string());
    }

    pub fn audit_failure(&self) {
        self.audit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A policy started serving: `generation` 0 is the one loaded at start,
    /// each successful reload counts one up (as `reload::ReloadOutcome::generation`).
    pub fn policy_loaded(&self, generation: u64, at: OffsetDateTime) {
        self.policy_load_ts
            .store(at.unix_timestamp(), Ordering::Relaxed);
        self.policy_generation.store(generation, Ordering::Relaxed);
    }

    pub fn policy_generation(&self) -> u64 {
        self.policy_generation.load(Ordering::Relaxed)
    }

    /// Read the gateway's own certificate (first PEM in `path`) for its not-after.
    pub fn set_server_cert(&self, path: &Path) {
        match crate::tls::load_certs(path) {
            Ok(certs) => {
                if let Some(Ok((_, cert))) = certs
                    .first()
                    .map(|c| x509_parser::parse_x509_certificate(c.as_ref()))
                {
                    self.server_cert_not_after
                        .store(cert.validity().not_after.timestamp(), Ordering::Relaxed);
                }
            }
            Err(e) => tracing::warn!(error = %e, "server certificate expiry metric unavailable"),
        }
    }

    pub fn alert_sent(&self) {
        self.alerts_sent.fetch_add(1, Ordering::Relaxed);
    }
    pub fn alert_dropped(&self) {
        self.alerts_dropped.fetch_add(1, Ordering::Relaxed);
    }
    pub fn alert_failed(&self) {
        self.alerts_failed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn alerts_dropped(&self) -> u64 {
        self.alerts_dropped.load(Ordering::Relaxed)
    }
    pub fn alerts_failed(&self) -> u64 {
        self.alerts_failed.load(Ordering::Relaxed)
    }

    /// The text exposition of every series, with state-derived values taken
    /// from `policy` at `now`.
    pub fn render(&self, policy: &Policy, now: OffsetDateTime) -> String {
        let mut out = String::with_capacity(4096);
        header_line(
            &mut out,
            "postern_requests_total",
            "counter",
            "Requests answered, by final decision and route.",
        );
        self.render_requests(&mut out);
        header_line(
            &mut out,
            "postern_optout_uses_total",
            "counter",
            "Opt-outs honoured (after their durable audit record), by rule.",
        );
        {
            let m = self.optout_uses.lock().unwrap_or_else(|e| e.into_inner());
            for (rule, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "postern_optout_uses_total{{rule=\"{}\"}} {n}",
                    escape(rule)
                );
            }
        }
        self.decision_duration.render(
            &mut out,
            "postern_decision_duration_seconds",
            "Time spent in the pure decision function.",
        );
        self.audit_write_duration.render(
            &mut out,
            "postern_audit_write_duration_seconds",
            "Latency of durable (fsynced) audit appends for opt-outs.",
        );
        counter(
            &mut out,
            "postern_audit_failures_total",
            "Durable audit appends that failed (the opt-out fell back to authentication).",
            self.audit_failures.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "postern_policy_generation",
            "Policy generation serving (0 = the policy loaded at start, +1 per successful reload).",
            self.policy_generation.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "postern_policy_load_timestamp_seconds",
            "Unix time of the last successful policy load.",
            self.policy_load_ts.load(Ordering::Relaxed) as f64,
        );
        header_line(
            &mut out,
            "postern_optout_rule_expiry_seconds",
            "gauge",
            "Seconds until each opt-out rule of the current policy expires (negative: expired).",
        );
        for rule in policy.optouts() {
            let secs = (rule.expires() - now).whole_seconds();
            let _ = writeln!(
                out,
                "postern_optout_rule_expiry_seconds{{rule=\"{}\"}} {secs}",
                escape(rule.id())
            );
        }
        let not_after = self.server_cert_not_after.load(Ordering::Relaxed);
        if not_after != i64::MIN {
            gauge(
                &mut out,
                "postern_server_certificate_expiry_seconds",
                "Seconds until the gateway's own certificate expires.",
                (not_after - now.unix_timestamp()) as f64,
            );
        }
        counter(
            &mut out,
            "postern_alerts_sent_total",
            "Alerts delivered to a sink.",
            self.alerts_sent.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "postern_alerts_dropped_total",
            "Alerts dropped because the alert queue was full.",
            self.alerts_dropped.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "postern_alerts_failed_total",
            "Alerts not delivered after every retry.",
            self.alerts_failed.load(Ordering::Relaxed),
        );
        out
    }
}

fn header_line(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header_line(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    header_line(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

/// A label value as the exposition format wants it: `\`, `"` and newline escaped.
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Bind the admin listener.
pub async fn bind_admin(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    Ok((l, local))
}

/// Serve `GET /metrics` (plain HTTP/1.1) until `stop` fires.
pub async fn serve_admin(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| admin(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = conn.await;
        });
    }
}

async fn admin(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let text = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(crate::respond::full(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_string(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET only\n".to_string(),
        ));
    }
    let runtime = shared.runtime.load_full();
    let body = shared
        .metrics
        .render(&runtime.policy, OffsetDateTime::now_utc());
    Ok(text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.00001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0025\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn counts_from_many_threads_add_up_across_shards() {
        let m = Metrics::new();
        std::thread::scope(|s| {
            for t in 0..(2 * SHARDS) {
                let m = &m;
                s.spawn(move || {
                    for _ in 0..100 {
                        m.request("allow", if t % 2 == 0 { "a" } else { "b" });
                        m.decision_duration.observe(Duration::from_millis(1));
                    }
                });
            }
        });
        let mut out = String::new();
        m.render_requests(&mut out);
        let n = 100 * SHARDS;
        assert!(
            out.contains(&format!(
                "postern_requests_total{{decision=\"allow\",route=\"a\"}} {n}\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "postern_requests_total{{decision=\"allow\",route=\"b\"}} {n}\n"
            )),
            "{out}"
        );
        let mut out = String::new();
        m.decision_duration.render(&mut out, "d", "help");
        assert!(out.contains(&format!("d_count {}\n", 2 * n)), "{out}");
        assert!(
            out.contains(&format!("d_sum {}\n", (2 * n) as f64 / 1000.0)),
            "{out}"
        );
    }
}
