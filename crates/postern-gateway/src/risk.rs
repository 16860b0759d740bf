//! Risk signals: what the gateway has seen lately, kept in bounded memory,
//! and turned into a [`RiskScore`] per request by the pure
//! [`postern_policy::risk::score`].
//!
//! State, all in fixed-capacity tables (65,536 keys each by default):
//! - per source: requests and invalid credentials in the sliding window.
//!   IPv6 sources are counted per /64, the block one host usually holds, so
//!   a client cannot dodge its rate by walking its own prefix;
//! - per identity: requests in the sliding window;
//! - per opt-out rule: uses in the sliding window (velocity);
//! - per (identity, certificate or device): seen or not.
//!
//! A sliding window is two fixed windows: the count of the current one plus
//! the previous one's, weighted by how much of it still overlaps the sliding
//! window. O(1) memory per key, exact when the rate is steady.
//!
//! **Memory is bounded.** Each table is split into 16 shards, each a
//! `std::sync::Mutex` over a fixed array of slots and an index; when a shard
//! is full, a new key evicts one chosen by the CLOCK (second-chance)
//! algorithm, which approximates least-recently-used: a key touched since the
//! hand last passed survives one more round. A flood of sources therefore
//! costs old entries, never memory. The cost of that: under a flood of more
//! distinct sources than the table holds, a source's counters may be
//! forgotten between two of its requests (its rate reads low), and a device
//! may be forgotten (it reads as new, the safe direction).
//!
//! Nothing here reads a clock: `now` comes from the caller. State lives in
//! memory and restarts with the process (every device is new after a
//! restart). When a reload changes `rate_window_secs`, the counters restart.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use postern_policy::risk::{RiskModel, RiskScore, RiskSignals, Signal, SourceClass};
use postern_policy::{NormalizedPath, OptOutRule, Policy};
use time::OffsetDateTime;

/// Keys per table unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 65_536;
const SHARDS: usize = 16;

/// What the gateway knows about one request when it scores it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The client address (after trusted-proxy processing).
    pub source: IpAddr,
    /// The verified principal, if any factor verified.
    pub identity: Option<&'a str>,
    /// What identifies the client's device for `new_device`: the verified
    /// client certificate's fingerprint, or a device cookie's id.
    pub device: Option<&'a str>,
    /// `TLSv1.3`, `TLSv1.2`, ... Anything but `TLSv1.3` scores `old_tls`.
    pub tls_version: &'a str,
    /// The opt-out rules that cover the request (see [`candidate_rules`]):
    /// their time windows and velocity are scored.
    pub rules: &'a [&'a OptOutRule],
}

/// The opt-out rules covering (host, method, path), most specific first,
/// whether live or not: the ones `decide()` will look at.
pub fn candidate_rules<'p>(
    policy: &'p Policy,
    host: &str,
    method: &str,
    path: &NormalizedPath,
) -> Vec<&'p OptOutRule> {
    match policy.find_route(host, path) {
        Some(route) => policy.optout_candidates(route.id(), method, path),
        None => Vec::new(),
    }
}

/// The bounded signal state of one gateway.
pub struct RiskState {
    sources: Table<SourceCounts>,
    identities: Table<Window>,
    rules: Table<Window>,
    devices: Table<()>,
    /// Keys the tables by a keyed hash (SipHash with a per-process key), so
    /// a client cannot aim its keys at one shard or collide with another's.
    keys: RandomState,
    /// The window length the counters were taken with (ms).
    window_ms: AtomicU64,
    /// How often each signal added points, for the admin console.
    fired: [AtomicU64; Signal::ALL.len()],
}

/// Table sizes, for tests and the admin console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub sources: usize,
    pub identities: usize,
    pub rules: usize,
    pub devices: usize,
}

impl Default for RiskState {
    fn default() -> Self {
        RiskState::new(DEFAULT_CAPACITY)
    }
}

impl RiskState {
    /// Tables of at most `capacity` keys each (rounded down to a multiple
    /// of the shard count, at least one key per shard).
    pub fn new(capacity: usize) -> RiskState {
        RiskState {
            sources: Table::new(capacity),
            identities: Table::new(capacity),
            rules: Table::new(capacity),
            devices: Table::new(capacity),
            keys: RandomState::new(),
            window_ms: AtomicU64::new(0),
            fired: Default::default(),
        }
    }

    /// Count this request and score it: the observed signals and the score.
    /// Records the request against its source and identity, and the device
    /// as seen for the identity (so only its first request is "new").
    pub fn assess(
        &self,
        model: &RiskModel,
        obs: &Observation<'_>,
        now: OffsetDateTime,
    ) -> (RiskSignals, RiskScore) {
        let win = self.window(model);
        let t = millis(now);
        let class = model.source_class(obs.source);
        let mut signals = RiskSignals {
            untrusted_source: class == SourceClass::Untrusted,
            unknown_source: class == SourceClass::Unknown,
            old_tls: obs.tls_version != "TLSv1.3",
            outside_window: obs
                .rules
                .iter()
                .any(|r| r.time_window().is_some_and(|w| !w.contains(now))),
            ..RiskSignals::default()
        };

        let source = self.keys.hash_one((0u8, source_key(obs.source)));
        self.sources.with(source, |c| {
            c.requests.add(t, win);
            signals.source_requests = c.requests.estimate(t, win);
            signals.auth_failures = c.failures.estimate(t, win);
        });
        if let Some(id) = obs.identity {
            let key = self.keys.hash_one((1u8, id));
            self.identities.with(key, |w| {
                w.add(t, win);
                signals.identity_requests = w.estimate(t, win);
            });
            if let Some(device) = obs.device {
                let key = self.keys.hash_one((2u8, id, device));
                signals.new_device = !self.devices.insert(key);
            }
        }
        for rule in obs.rules {
            let key = self.keys.hash_one((3u8, rule.id()));
            let uses = self.rules.peek(key, |w| w.estimate(t, win)).unwrap_or(0);
            signals.optout_uses = signals.optout_uses.max(uses);
        }

        let score = model.score(&signals);
        for signal in Signal::ALL {
            if score.points(signal.name()) > 0 {
                if let Some(c) = self.fired.get(signal.index()) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        (signals, score)
    }

    /// An invalid credential (or a refused TLS handshake) from `source`.
    pub fn auth_failure(&self, model: &RiskModel, source: IpAddr, now: OffsetDateTime) {
        let win = self.window(model);
        let key = self.keys.hash_one((0u8, source_key(source)));
        self.sources.with(key, |c| c.failures.add(millis(now), win));
    }

    /// An opt-out use was honoured (its audit record is durable).
    pub fn optout_used(&self, model: &RiskModel, rule: &str, now: OffsetDateTime) {
        let win = self.window(model);
        let key = self.keys.hash_one((3u8, rule));
        self.rules.with(key, |w| w.add(millis(now), win));
    }

    /// Mark a device as known for an identity without scoring a request:
    /// a certificate renewed through the gateway continues the device of
    /// the certificate that renewed it.
    pub fn device_seen(&self, identity: &str, device: &str) {
        let key = self.keys.hash_one((2u8, identity, device));
        self.devices.insert(key);
    }

    /// Keys held per table.
    pub fn sizes(&self) -> Sizes {
        Sizes {
            sources: self.sources.len(),
            identities: self.identities.len(),
            rules: self.rules.len(),
            devices: self.devices.len(),
        }
    }

    /// How many scored requests each signal added points to, most first
    /// (signals that never fired are left out).
    pub fn fired(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = Signal::ALL
            .iter()
            .zip(&self.fired)
            .map(|(s, c)| (s.name(), c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        out
    }

    /// The model's window in ms; a changed window restarts the counters
    /// (counts taken over another length mean something else).
    fn window(&self, model: &RiskModel) -> u64 {
        let win = model.window_secs().max(1).saturating_mul(1000);
        let old = self.window_ms.swap(win, Ordering::Relaxed);
        if old != win && old != 0 {
            self.sources.clear();
            self.identities.clear();
            self.rules.clear();
        }
        win
    }
}

/// The audit form: `{"total": 42, "signals": {"untrusted_source": 30, ...},
/// "observed": {"source_requests": 12, ...}}` (counts that are 0 left out).
pub fn audit_json(signals: &RiskSignals, score: &RiskScore) -> serde_json::Value {
    let contributions: serde_json::Map<String, serde_json::Value> = score
        .contributions
        .iter()
        .map(|(name, p)| ((*name).to_string(), (*p).into()))
        .collect();
    let mut observed = serde_json::Map::new();
    for (name, n) in [
        ("source_requests", signals.source_requests),
        ("identity_requests", signals.identity_requests),
        ("auth_failures", signals.auth_failures),
        ("optout_uses", signals.optout_uses),
    ] {
        if n > 0 {
            observed.insert(name.to_string(), n.into());
        }
    }
    serde_json::json!({
        "total": score.total,
        "signals": contributions,
        "observed": observed,
    })
}

/// Milliseconds since the epoch (0 before it).
fn millis(now: OffsetDateTime) -> u64 {
    u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The address a source is counted under: IPv4 (also when mapped into
/// IPv6) as itself, IPv6 by its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct SourceCounts {
    requests: Window,
    failures: Window,
}

/// A sliding-window counter over two fixed windows.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    /// Index of the current fixed window (`now / length`).
    index: u64,
    current: u32,
    previous: u32,
}

impl Window {
    fn roll(&mut self, now_ms: u64, len_ms: u64) {
        let i = now_ms / len_ms;
        // A clock that steps back stays in the current window.
        if i <= self.index {
            return;
        }
        self.previous = if i == self.index + 1 { self.current } else { 0 };
        self.current = 0;
        self.index = i;
    }

    fn add(&mut self, now_ms: u64, len_ms: u64) {
        self.roll(now_ms, len_ms);
        self.current = self.current.saturating_add(1);
    }

    /// Events in the last `len_ms`: the current window's, plus the share of
    /// the previous one the sliding window still covers.
    fn estimate(&mut self, now_ms: u64, len_ms: u64) -> u32 {
        self.roll(now_ms, len_ms);
        let into = now_ms % len_ms;
        let carried = u64::from(self.previous) * (len_ms - into) / len_ms;
        self.current
            .saturating_add(u32::try_from(carried).unwrap_or(u32::MAX))
    }
}

/// A fixed-capacity map from (already hashed) keys to values, sharded.
struct Table<V> {
    shards: Box<[Mutex<Shard<V>>]>,
}

impl<V: Default> Table<V> {
    fn new(capacity: usize) -> Table<V> {
        let per_shard = (capacity / SHARDS).max(1);
        Table {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(per_shard)))
                .collect(),
        }
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard<V>> {
        // Bits 32.. pick the shard: the index below uses the low bits and
        // hashbrown's tags the top seven, so the three do not correlate.
        let i = usize::try_from((key >> 32) % SHARDS as u64).unwrap_or(0);
        // Nothing panics while a shard is held; a poisoned lock still holds
        // consistent counters. `i < SHARDS`, the number of shards.
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run `f` on the value of `key`, inserting a default (and evicting if
    /// full) when it is absent.
    fn with<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> R {
        f(self.shard(key).get_or_insert(key).0)
    }

    /// Run `f` on the value of `key` only if present (no insertion).
    fn peek<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        self.shard(key).get(key).map(f)
    }

    /// Insert `key`; true when it was already there.
    fn insert(&self, key: u64) -> bool {
        self.shard(key).get_or_insert(key).1
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|m| {
                m.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .slots
                    .len()
            })
            .sum()
    }

    fn clear(&self) {
        for m in self.shards.iter() {
            let mut s = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            s.slots.clear();
            s.index.clear();
            s.hand = 0;
        }
    }
}

/// Keys arrive hashed: the index uses them as they are.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Slot<V> {
    key: u64,
    /// Touched since the clock hand last passed.
    referenced: bool,
    value: V,
}

struct Shard<V> {
    index: HashMap<u64, usize, BuildHasherDefault<PassThrough>>,
    slots: Vec<Slot<V>>,
    hand: usize,
    cap: usize,
}

impl<V: Default> Shard<V> {
    fn new(cap: usize) -> Shard<V> {
        Shard {
            // Twice the slots: with deletions the table then always rehashes
            // in place and never grows.
            index: HashMap::with_capacity_and_hasher(2 * cap, BuildHasherDefault::default()),
            slots: Vec::with_capacity(cap),
            hand: 0,
            cap,
        }
    }

    fn get(&mut self, key: u64) -> Option<&mut V> {
        let i = *self.index.get(&key)?;
        let slot = self.slots.get_mut(i)?;
        slot.referenced = true;
        Some(&mut slot.value)
    }

    /// The value of `key` (a default one when new) and whether it was there.
    fn get_or_insert(&mut self, key: u64) -> (&mut V, bool) {
        // Indexing below: the index only ever holds positions of live slots,
        // and `victim` returns one (the shard is full, so non-empty).
        if let Some(&i) = self.index.get(&key) {
            let slot = &mut self.slots[i];
            slot.referenced = true;
            return (&mut slot.value, true);
        }
        // A new key starts unreferenced: a key seen once (a scan, a flood)
        // is the first to go; one seen again earns its second chance.
        let fresh = Slot {
            key,
            referenced: false,
            value: V::default(),
        };
        let i = if self.slots.len() < self.cap {
            self.slots.push(fresh);
            self.slots.len() - 1
        } else {
            let i = self.victim();
            let old = std::mem::replace(&mut self.slots[i], fresh);
            self.index.remove(&old.key);
            i
        };
        self.index.insert(key, i);
        (&mut self.slots[i].value, false)
    }

    /// CLOCK: advance the hand past referenced slots (clearing their bit)
    /// to the first unreferenced one. Ends within two sweeps.
    fn victim(&mut self) -> usize {
        let len = self.slots.len();
        for _ in 0..=2 * len {
            if self.hand >= len {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            match self.slots.get_mut(i) {
                Some(s) if s.referenced => s.referenced = false,
                Some(_) => return i,
                None => {}
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_policy::risk::RiskWeights;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2027-01-01 00:00:00 UTC);

    fn model(window_secs: u64, weights: RiskWeights) -> RiskModel {
        RiskModel::new(
            vec!["10.0.0.0/8".parse().unwrap()],
            vec!["192.0.2.0/24".parse().unwrap()],
            window_secs,
            weights,
        )
    }

    fn obs<'a>(
        source: &str,
        identity: Option<&'a str>,
        device: Option<&'a str>,
    ) -> Observation<'a> {
        Observation {
            source: source.parse().unwrap(),
            identity,
            device,
            tls_version: "TLSv1.3",
            rules: &[],
        }
    }

    fn ms(n: i64) -> time::Duration {
        time::Duration::milliseconds(n)
    }

    #[test]
    fn window_counts_then_forgets() {
        let mut w = Window::default();
        let t = millis(T0);
        for _ in 0..10 {
            w.add(t, 1000);
        }
        assert_eq!(w.estimate(t + 999, 1000), 10);
        // Half of the previous window still overlaps.
        assert_eq!(w.estimate(t + 1500, 1000), 5);
        assert_eq!(w.estimate(t + 2000, 1000), 0);
        // A clock stepping back keeps the current window.
        w.add(t + 5000, 1000);
        assert_eq!(w.estimate(t + 4000, 1000), 1);
    }

    #[test]
    fn source_rate_rises_and_calms() {
        let m = model(
            1,
            RiskWeights {
                rate_per_source: 50,
                rate_threshold: 5,
                ..RiskWeights::default()
            },
        );
        let state = RiskState::new(1024);
        let o = obs("10.1.1.1", None, None);
        let mut last = RiskScore::default();
        for _ in 0..10 {
            last = state.assess(&m, &o, T0).1;
        }
        assert_eq!(last.total, 50, "{last:?}");
        // Another source is not affected.
        assert_eq!(
            state.assess(&m, &obs("10.1.1.2", None, None), T0).1.total,
            0
        );
        // Two windows later the burst is forgotten.
        assert_eq!(state.assess(&m, &o, T0 + ms(2000)).1.total, 0);
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let m = model(
            60,
            RiskWeights {
                rate_per_source: 50,
                rate_threshold: 1,
                ..RiskWeights::default()
            },
        );
        let state = RiskState::new(1024);
        state.assess(&m, &obs("2001:db8:1:2::1", None, None), T0);
        let (s, _) = state.assess(&m, &obs("2001:db8:1:2::ffff", None, None), T0);
        assert_eq!(s.source_requests, 2);
        let (s, _) = state.assess(&m, &obs("2001:db8:1:3::1", None, None), T0);
        assert_eq!(s.source_requests, 1);
    }

    #[test]
    fn device_is_new_once_per_identity() {
        let m = model(
            60,
            RiskWeights {
                new_device: 30,
                ..RiskWeights::default()
            },
        );
        let state = RiskState::new(1024);
        let first = state.assess(&m, &obs("10.0.0.1", Some("alice"), Some("fp1")), T0);
        assert!(first.0.new_device);
        assert_eq!(first.1.contributions, vec![("new_device", 30)]);
        assert!(
            !state
                .assess(&m, &obs("10.0.0.1", Some("alice"), Some("fp1")), T0)
                .0
                .new_device
        );
        // The same certificate is new for another identity.
        assert!(
            state
                .assess(&m, &obs("10.0.0.1", Some("bob"), Some("fp1")), T0)
                .0
                .new_device
        );
        // A renewed certificate continues the device.
        state.device_seen("alice", "fp2");
        assert!(
            !state
                .assess(&m, &obs("10.0.0.1", Some("alice"), Some("fp2")), T0)
                .0
                .new_device
        );
        assert_eq!(state.fired(), vec![("new_device", 2)]);
    }

    #[test]
    fn auth_failures_and_velocity_are_read_back() {
        let m = model(
            10,
            RiskWeights {
                auth_failures: 40,
                auth_failure_threshold: 4,
                ..RiskWeights::default()
            },
        );
        let state = RiskState::new(1024);
        let src: IpAddr = "192.0.2.9".parse().unwrap();
        state.auth_failure(&m, src, T0);
        state.auth_failure(&m, src, T0);
        let (s, score) = state.assess(&m, &obs("192.0.2.9", None, None), T0 + ms(10));
        assert_eq!(s.auth_failures, 2);
        assert!(s.untrusted_source);
        assert_eq!(score.points("auth_failures"), 20);
        for _ in 0..3 {
            state.optout_used(&m, "healthz", T0);
        }
        assert_eq!(state.sizes().rules, 1);
    }

    #[test]
    fn tls_12_and_source_lists_score() {
        let m = model(
            60,
            RiskWeights {
                untrusted_source: 60,
                unknown_source: 10,
                old_tls: 15,
                ..RiskWeights::default()
            },
        );
        let state = RiskState::new(1024);
        let mut o = obs("192.0.2.1", None, None);
        o.tls_version = "TLSv1.2";
        let (_, s) = state.assess(&m, &o, T0);
        assert_eq!(s.total, 75);
        assert_eq!(
            s.contributions,
            vec![("untrusted_source", 60), ("old_tls", 15)]
        );
        let (_, s) = state.assess(&m, &obs("198.51.100.1", None, None), T0);
        assert_eq!(s.contributions, vec![("unknown_source", 10)]);
        assert_eq!(
            state.assess(&m, &obs("10.9.9.9", None, None), T0).1.total,
            0
        );
    }

    #[test]
    fn a_changed_window_restarts_the_counters() {
        let state = RiskState::new(1024);
        let m1 = model(1, RiskWeights::default());
        for _ in 0..5 {
            state.assess(&m1, &obs("10.0.0.1", None, None), T0);
        }
        let m60 = model(60, RiskWeights::default());
        let (s, _) = state.assess(&m60, &obs("10.0.0.1", None, None), T0);
        assert_eq!(s.source_requests, 1);
    }

    #[test]
    fn a_million_sources_stay_within_the_cap() {
        let state = RiskState::new(DEFAULT_CAPACITY);
        let initial_index_capacity = state.sources.shards[0].lock().unwrap().index.capacity();
        let m = model(60, RiskWeights::default());
        for i in 0u32..1_000_000 {
            let ip = IpAddr::from(i.to_be_bytes());
            let o = Observation {
                source: ip,
                identity: None,
                device: None,
                tls_version: "TLSv1.3",
                rules: &[],
            };
            state.assess(&m, &o, T0);
            if i % 100_000 == 0 {
                assert!(state.sizes().sources <= DEFAULT_CAPACITY);
            }
        }
        assert_eq!(state.sizes().sources, DEFAULT_CAPACITY);
        assert_eq!(state.sizes().identities, 0);
        for shard in state.sources.shards.iter() {
            let s = shard.lock().unwrap();
            assert_eq!(s.slots.len(), DEFAULT_CAPACITY / SHARDS);
            assert_eq!(s.index.len(), s.slots.len());
            // Never grown (tombstones may lower what `capacity` reports).
            assert!(s.index.capacity() <= initial_index_capacity);
        }
    }

    #[test]
    fn a_busy_key_survives_a_flood_of_one_off_keys() {
        // CLOCK keeps what is used between sweeps.
        let table: Table<Window> = Table::new(SHARDS * 64);
        let keys = RandomState::new();
        let busy = keys.hash_one("busy");
        for i in 0u64..100_000 {
            table.with(keys.hash_one(i), |w| w.add(0, 1000));
            if i % 16 == 0 {
                table.with(busy, |w| w.add(0, 1000));
            }
        }
        let n = table.peek(busy, |w| w.estimate(0, 1000));
        assert_eq!(n, Some(6250));
        assert_eq!(table.len(), SHARDS * 64);
    }

    /// The hot-path cost per request: `cargo test --release -p
    /// postern-gateway --lib risk::tests::cost_per_request -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn cost_per_request() {
        let text = r#"
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
time_window = { start = "08:00", end = "18:00" }
[risk]
trusted_cidrs = ["10.0.0.0/8"]
untrusted_cidrs = ["192.0.2.0/24"]
[risk.weights]
untrusted_source = 60
unknown_source = 10
new_device = 20
rate_per_source = 40
rate_per_identity = 30
auth_failures = 40
outside_window = 20
optout_velocity = 30
old_tls = 10
"#;
        let config = postern_policy::Config::parse(std::path::Path::new("p.toml"), text).unwrap();
        let (policy, _) = Policy::compile(&config, T0).unwrap();
        let model = policy.risk().unwrap();
        let path = postern_policy::split_target("/healthz").unwrap().0;
        let identities: Vec<String> = (0..1000).map(|i| format!("user{i}")).collect();
        let devices: Vec<String> = (0..1000).map(|i| format!("{i:064x}")).collect();
        for (label, sources) in [
            ("10k sources", 10_000u32),
            ("1M sources (evicting)", 1_000_000),
        ] {
            let state = RiskState::default();
            let n = 2_000_000u32;
            let started = std::time::Instant::now();
            let mut total = 0u64;
            for i in 0..n {
                let now = T0 + time::Duration::microseconds(i64::from(i));
                let rules = candidate_rules(&policy, "app.example", "GET", &path);
                let who = (i % 1000) as usize;
                let obs = Observation {
                    source: IpAddr::from((0x0a00_0000 + i % sources).to_be_bytes()),
                    identity: Some(&identities[who]),
                    device: Some(&devices[who]),
                    tls_version: "TLSv1.3",
                    rules: &rules,
                };
                total += u64::from(state.assess(model, &obs, now).1.total);
                if i % 100 == 0 {
                    state.optout_used(model, "healthz", now);
                }
            }
            let per = started.elapsed() / n;
            println!(
                "{label}: {per:?} per request (candidate lookup + assess), sum {total}, sizes {:?}",
                state.sizes()
            );
        }
    }

    #[test]
    fn shard_index_and_slots_agree_after_evictions() {
        let mut s: Shard<u32> = Shard::new(8);
        for k in 0u64..1000 {
            *s.get_or_insert(k).0 += 1;
            assert_eq!(s.index.len(), s.slots.len());
            for (i, slot) in s.slots.iter().enumerate() {
                assert_eq!(s.index.get(&slot.key), Some(&i));
            }
        }
        assert_eq!(s.slots.len(), 8);
        assert!(s.get_or_insert(999).1);
    }
}
