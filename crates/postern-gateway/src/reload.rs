//! Policy hot reload with last-good fallback (invariant 6).
//!
//! A reload is triggered by SIGHUP, by [`ReloadHandle::reload_now`], or by a
//! change of the config, reviewers or approvals file (polled by mtime, size
//! and inode every `poll`; a change is taken once the files have been still
//! for one more poll, so an editor's several writes make one reload).
//!
//! A candidate is validated completely before anything is swapped: parse,
//! compile, reviewer pin, quorum over the opt-out digest, upstream table,
//! and a durable audit record. Only then is `Shared.runtime` swapped
//! (`ArcSwap::store`); requests in flight keep the `Arc<Runtime>` they
//! loaded and complete on the old policy. On any failure the last good
//! policy keeps serving and the refusal is audited with its reasons.
//!
//! The reviewers file is pinned at start: a reload may drop reviewers or
//! raise the quorum, never add or re-key reviewers, lower the quorum or drop
//! `[review]` (see [`postern_review::Reviewers::may_be_replaced_by`]), so
//! whoever can write the policy files cannot appoint themselves reviewers on
//! a live gateway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postern_audit::AuditEvent;
use postern_policy::{Config, Policy, Severity};
use postern_review::{approvals_path, Reviewers};
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::{Runtime, Shared, Upstream};

/// How the reloader watches.
#[derive(Debug, Clone)]
pub struct ReloadOptions {
    /// File poll interval (0: no polling, only SIGHUP / `reload_now`).
    pub poll: Duration,
    /// Reload on SIGHUP (Unix).
    pub sighup: bool,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        ReloadOptions {
            poll: Duration::from_millis(500),
            sighup: true,
        }
    }
}

/// The outcome of the latest load attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Attempts so far (0: the policy the gateway started with).
    pub attempt: u64,
    /// Policies swapped in so far (0: the one it started with).
    pub generation: u64,
    /// Did this attempt swap the policy in?
    pub loaded: bool,
    /// The opt-out digest of the candidate, when it could be computed.
    pub digest: Option<String>,
    /// Reviewers whose approvals counted.
    pub approvers: Vec<String>,
    /// Why the candidate was refused (empty when loaded).
    pub reasons: Vec<String>,
    /// Sequence number of the audit record of this load or refusal.
    pub audit_seq: Option<u64>,
}

/// A running reloader. Dropping it leaves it running; call [`ReloadHandle::stop`].
pub struct ReloadHandle {
    trigger: Arc<Notify>,
    status: watch::Receiver<ReloadOutcome>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ReloadHandle {
    /// Ask for a reload now (as SIGHUP does).
    pub fn reload_now(&self) {
        self.trigger.notify_one();
    }

    /// The latest outcome; `changed()` on it waits for the next attempt.
    pub fn status(&self) -> watch::Receiver<ReloadOutcome> {
        self.status.clone()
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Identity of a file's current content, cheaply: (mtime ns, size, inode).
type Stamp = Option<(i128, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let ino = 0;
    Some((mtime, meta.len(), ino))
}

/// What the reloader remembers between attempts.
struct State {
    config_path: PathBuf,
    /// The reviewers of the policy serving now; `None`: review not enforced.
    pinned: Option<Reviewers>,
    /// Addresses of running built-in echo servers, by upstream name (reused).
    echo: HashMap<String, Upstream>,
    attempt: u64,
    generation: u64,
}

impl State {
    fn watched(&self) -> Vec<PathBuf> {
        let mut v = vec![self.config_path.clone(), approvals_path(&self.config_path)];
        if let Some(r) = &self.pinned {
            v.push(r.path.clone());
        }
        v
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.watched().iter().map(|p| stamp(p)).collect()
    }
}

/// Start watching `config_path` and reloading `shared.runtime` from it.
/// Writes the audit record of the policy the gateway started with.
pub fn spawn_reloader(
    shared: Arc<Shared>,
    config_path: PathBuf,
    opts: ReloadOptions,
) -> ReloadHandle {
    let trigger = Arc::new(Notify::new());
    let (status_tx, status) = watch::channel(ReloadOutcome::default());
    let (stop, stop_rx) = watch::channel(false);
    // Pin and stamp now, before returning: a change made right after this
    // call is then a change, never the baseline.
    let (state, record) = initial_state(&shared, config_path);
    let task = tokio::spawn(run(
        shared,
        state,
        record,
        opts,
        trigger.clone(),
        status_tx,
        stop_rx,
    ));
    ReloadHandle {
        trigger,
        status,
        stop,
        task,
    }
}

async fn run(
    shared: Arc<Shared>,
    mut state: State,
    record: AuditEvent,
    opts: ReloadOptions,
    trigger: Arc<Notify>,
    status: watch::Sender<ReloadOutcome>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = state.stamps();
    if let Err(e) = shared.audit.append_durable(record).await {
        tracing::error!(error = %e, "auditing the initial policy load failed");
    }
    let mut pending = false;

    #[cfg(unix)]
    let mut hup = if opts.sighup {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    } else {
        None
    };
    let poll = if opts.poll.is_zero() {
        Duration::from_secs(3600)
    } else {
        opts.poll
    };
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<()>();
        let now = tokio::select! {
            _ = stop.changed() => break,
            _ = trigger.notified() => true,
            _ = sighup => {
                tracing::info!("SIGHUP: reloading the policy");
                true
            }
            _ = tokio::time::sleep(poll) => {
                if opts.poll.is_zero() {
                    continue;
                }
                let current = state.stamps();
                if current != last {
                    // Changed since the last look: wait until it is still.
                    last = current;
                    pending = true;
                    false
                } else {
                    std::mem::replace(&mut pending, false)
                }
            }
        };
        if now {
            let outcome = attempt(&shared, &mut state).await;
            last = state.stamps();
            pending = false;
            status.send_replace(outcome);
        }
    }
}

/// Pin the reviewers and remember the built-in upstreams of the policy the
/// gateway started with; the audit record of that load.
fn initial_state(shared: &Shared, config_path: PathBuf) -> (State, AuditEvent) {
    let mut state = State {
        config_path,
        pinned: None,
        echo: HashMap::new(),
        attempt: 0,
        generation: 0,
    };
    let mut ev = AuditEvent::new(OffsetDateTime::now_utc(), "policy");
    ev.decision = Some("loaded".to_string());
    let mut extra = serde_json::json!({
        "generation": 0,
        "config": state.config_path.display().to_string(),
    });
    if let Ok(config) = Config::load(&state.config_path) {
        let runtime = shared.runtime.load();
        for u in &config.upstreams {
            let u = u.get_ref();
            if u.url == postern_policy::policy::BUILTIN_ECHO {
                if let Some(up) = runtime.upstreams.get(&u.name) {
                    state.echo.insert(u.name.clone(), up.clone());
                }
            }
        }
        extra["digest"] = postern_review::digest(&config).into();
        match postern_review::check_config(&config) {
            Ok(Some(status)) => {
                extra["approvers"] = status.verification.approvers.clone().into();
                extra["quorum"] = status.verification.quorum.into();
                state.pinned = Some(status.reviewers);
            }
            Ok(None) => extra["review"] = "not enforced (no [review] section)".into(),
            Err(e) => {
                tracing::error!(error = %e, "cannot pin the reviewers of the running policy");
            }
        }
    }
    ev.extra = Some(extra);
    (state, ev)
}

/// A candidate that passed every check but the swap.
struct Candidate {
    policy: Policy,
    upstreams: HashMap<String, Upstream>,
    echo: HashMap<String, Upstream>,
    pinned: Option<Reviewers>,
}

async fn attempt(shared: &Shared, state: &mut State) -> ReloadOutcome {
    state.attempt += 1;
    let mut outcome = ReloadOutcome {
        attempt: state.attempt,
        generation: state.generation,
        ..ReloadOutcome::default()
    };
    let result = validate(state, &mut outcome).await;
    let mut ev = AuditEvent::new(OffsetDateTime::now_utc(), "policy");
    let mut extra = serde_json::json!({
        "attempt": state.attempt,
        "config": state.config_path.display().to_string(),
        "approvers": outcome.approvers,
    });
    if let Some(d) = &outcome.digest {
        extra["digest"] = d.clone().into();
    }
    match result {
        Ok(candidate) => {
            ev.decision = Some("loaded".to_string());
            extra["generation"] = (state.generation + 1).into();
            ev.extra = Some(extra);
            // The record is durable before the new policy serves a request.
            match shared.audit.append_durable(ev).await {
                Ok(seq) => outcome.audit_seq = Some(seq),
                Err(e) => {
                    outcome.reasons = vec![format!(
                        "the audit log cannot record the load ({e}); keeping the last good policy"
                    )];
                    refuse(shared, state, &mut outcome).await;
                    return outcome;
                }
            }
            shared.runtime.store(Arc::new(Runtime {
                policy: candidate.policy,
                upstreams: candidate.upstreams,
            }));
            state.generation += 1;
            state.echo = candidate.echo;
            state.pinned = candidate.pinned;
            outcome.generation = state.generation;
            outcome.loaded = true;
            shared.console.policy_loaded(crate::console::PolicyInfo {
                generation: state.generation,
                loaded_at: Some(OffsetDateTime::now_utc()),
                config: state.config_path.display().to_string(),
                digest: outcome.digest.clone(),
                approvers: outcome.approvers.clone(),
                quorum: state.pinned.as_ref().map(|r| r.quorum),
            });
            shared
                .metrics
                .policy_loaded(state.generation, OffsetDateTime::now_utc());
            shared.alerts.policy_event(
                true,
                outcome.digest.as_deref().unwrap_or(""),
                &outcome.approvers,
                outcome.audit_seq,
                &[],
            );
            tracing::info!(
                generation = state.generation,
                digest = outcome.digest.as_deref().unwrap_or(""),
                approvers = %outcome.approvers.join(","),
                "policy reloaded"
            );
        }
        Err(reasons) => {
            outcome.reasons = reasons;
            refuse(shared, state, &mut outcome).await;
        }
    }
    outcome
}

/// Audit (and alert) a refusal; the last good policy keeps serving.
async fn refuse(shared: &Shared, state: &State, outcome: &mut ReloadOutcome) {
    tracing::error!(
        config = %state.config_path.display(),
        reasons = %outcome.reasons.join("; "),
        "policy refused; the last good policy keeps serving"
    );
    let mut ev = AuditEvent::new(OffsetDateTime::now_utc(), "policy");
    ev.decision = Some("refused".to_string());
    ev.reasons = outcome.reasons.clone();
    let mut extra = serde_json::json!({
        "attempt": outcome.attempt,
        "generation": state.generation,
        "config": state.config_path.display().to_string(),
        "approvers": outcome.approvers,
    });
    if let Some(d) = &outcome.digest {
        extra["digest"] = d.clone().into();
    }
    ev.extra = Some(extra);
    match shared.audit.append_durable(ev).await {
        Ok(seq) => outcome.audit_seq = Some(seq),
        Err(e) => tracing::error!(error = %e, "auditing a policy refusal failed"),
    }
    shared.alerts.policy_event(
        false,
        outcome.digest.as_deref().unwrap_or(""),
        &outcome.approvers,
        outcome.audit_seq,
        &outcome.reasons,
    );
}

/// Every check a candidate must pass; the reasons it fails otherwise.
async fn validate(state: &State, outcome: &mut ReloadOutcome) -> Result<Candidate, Vec<String>> {
    let config = Config::load(&state.config_path)
        .map_err(|diags| diags.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
    outcome.digest = Some(postern_review::digest(&config));
    let policy = match Policy::compile(&config, OffsetDateTime::now_utc()) {
        Ok((policy, _warnings)) => policy,
        Err(diags) => {
            return Err(diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .map(|d| d.to_string())
                .collect())
        }
    };
    let status = postern_review::check_config(&config).map_err(|e| vec![e.to_string()])?;
    let pinned = match (&state.pinned, status) {
        (Some(_), None) => {
            return Err(vec![
                "the [review] section was removed: review cannot be switched off by a reload; restart the gateway to take it".to_string(),
            ])
        }
        (None, None) => None,
        (old, Some(status)) => {
            outcome.approvers = status.verification.approvers.clone();
            if let Some(old) = old {
                old.may_be_replaced_by(&status.reviewers)
                    .map_err(|e| vec![format!("{}: {e}", status.reviewers.path.display())])?;
            }
            if !status.verification.holds() {
                let mut reasons = vec![status.verification.summary()];
                reasons.extend(
                    status
                        .verification
                        .ignored
                        .iter()
                        .map(|i| format!("not counted: {i}")),
                );
                return Err(reasons);
            }
            Some(status.reviewers)
        }
    };
    let (upstreams, echo) = build_upstreams(&config, &state.echo)
        .await
        .map_err(|e| vec![e])?;
    Ok(Candidate {
        policy,
        upstreams,
        echo,
        pinned,
    })
}

/// The upstream table of a candidate. A `builtin:echo` upstream keeps the
/// echo server already running under its name.
async fn build_upstreams(
    config: &Config,
    running_echo: &HashMap<String, Upstream>,
) -> Result<(HashMap<String, Upstream>, HashMap<String, Upstream>), String> {
    let mut map = HashMap::new();
    let mut echo = HashMap::new();
    for u in &config.upstreams {
        let u = u.get_ref();
        if u.url == postern_policy::policy::BUILTIN_ECHO {
            let up = match running_echo.get(&u.name) {
                Some(up) => up.clone(),
                None => {
                    let addr = crate::echo::spawn_echo()
                        .await
                        .map_err(|e| format!("upstream `{}`: {e}", u.name))?;
                    parse_upstream(&u.name, &format!("http://{addr}"))?
                }
            };
            echo.insert(u.name.clone(), up.clone());
            map.insert(u.name.clone(), up);
        } else {
            map.insert(u.name.clone(), parse_upstream(&u.name, &u.url)?);
        }
    }
    Ok((map, echo))
}

fn parse_upstream(name: &str, url: &str) -> Result<Upstream, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("upstream `{name}`: bad url `{url}`: {e}"))?;
    match (uri.scheme().cloned(), uri.authority().cloned()) {
        (Some(scheme), Some(authority)) => Ok(Upstream::new(scheme, authority)),
        _ => Err(format!(
            "upstream `{name}`: url `{url}` needs scheme and host"
        )),
    }
}
