//! The gateway's side of "certificates that die young" (invariant 5):
//! revocation that takes effect at once, CRLs for the TLS layer, grants read
//! from verified certificates, and renewal over mTLS.
//!
//! Revocation is checked twice: at the handshake (the TLS verifier carries
//! the CA's current CRL and is swapped when it changes) and per request (a
//! connection opened before the revocation must not keep working). The
//! per-request check is a hash lookup in a snapshot; a watcher polls the CA
//! directory's `revoked.json` and swaps a new snapshot in within
//! [`POLL_INTERVAL`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration as StdDuration, SystemTime};

use arc_swap::ArcSwap;
use postern_pki::{
    CaStore, ClientCertRequest, Grant, IssuedCertificate, Kind, RevocationList, RevokedCert,
};
use rustls_pki_types::CertificateRevocationListDer;
use time::{Duration, OffsetDateTime};

/// The gateway's renewal endpoint.
pub const RENEW_PATH: &str = "/v1/certs/renew";

/// How often the revocation list is re-read: revocations take effect within this.
pub const POLL_INTERVAL: StdDuration = StdDuration::from_millis(200);

/// Default longest session a certificate may be renewed into, since its original issuance.
pub const DEFAULT_MAX_SESSION_AGE: Duration = Duration::days(7);

/// What a verified client certificate says beyond identity.
#[derive(Debug, Clone, Default)]
pub struct CertExtras {
    /// Opt-out grants signed into the certificate.
    pub grants: Vec<Grant>,
    /// When the session this certificate continues began (renewals keep it).
    pub session_started_at: Option<OffsetDateTime>,
}

impl CertExtras {
    /// Read postern's extensions from a certificate whose chain already verified.
    pub fn from_der(der: &[u8]) -> Result<CertExtras, String> {
        let grants = postern_pki::grants_from_cert(der)
            .map_err(|e| format!("the certificate's grant extension is invalid: {e}"))?;
        let session_started_at = postern_pki::session_started_at(der)
            .map_err(|e| format!("the certificate's session extension is invalid: {e}"))?;
        Ok(CertExtras {
            grants,
            session_started_at,
        })
    }
}

/// The CA as the gateway sees it.
pub struct CertAuthority {
    store: CaStore,
    revoked: ArcSwap<HashMap<String, RevokedCert>>,
    crls: ArcSwap<Vec<CertificateRevocationListDer<'static>>>,
    max_session_age: Duration,
    renewal: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("renewal needs a valid client certificate from this CA")]
    NoCertificate,
    #[error("the certificate {0} is revoked")]
    Revoked(String),
    #[error("the session began at {started} and may last at most {max_hours} h: sign in again for a new certificate")]
    SessionTooOld { started: String, max_hours: i64 },
    #[error("the request body is not a usable CSR: {0}")]
    BadCsr(String),
    #[error("renewal is disabled on this gateway")]
    Disabled,
}

impl CertAuthority {
    /// Open the CA directory and load its current revocations and CRL.
    pub fn open(
        dir: &Path,
        max_session_age: Duration,
        renewal: bool,
    ) -> Result<CertAuthority, String> {
        let store =
            CaStore::open(dir).map_err(|e| format!("CA directory `{}`: {e}", dir.display()))?;
        let ca = CertAuthority {
            store,
            revoked: ArcSwap::from_pointee(HashMap::new()),
            crls: ArcSwap::from_pointee(Vec::new()),
            max_session_age,
            renewal,
        };
        ca.reload()?;
        Ok(ca)
    }

    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// The CA store (issuance index, revocation), for the admin console.
    pub fn store(&self) -> &CaStore {
        &self.store
    }

    /// Re-read `revoked.json` and `crl.pem`; keep the previous snapshot on
    /// error. Returns the entries revoked since the previous snapshot.
    pub fn reload(&self) -> Result<Vec<RevokedCert>, String> {
        let list = RevocationList::load(self.store.revoked_path()).map_err(|e| e.to_string())?;
        let map: HashMap<String, RevokedCert> = list
            .entries()
            .iter()
            .map(|r| (r.serial_hex.clone(), r.clone()))
            .collect();
        let before = self.revoked.load();
        let added: Vec<RevokedCert> = map
            .iter()
            .filter(|(serial, _)| !before.contains_key(*serial))
            .map(|(_, r)| r.clone())
            .collect();
        self.revoked.store(Arc::new(map));
        let crl_path = self.store.crl_path();
        match std::fs::read_to_string(&crl_path) {
            Ok(pem) => {
                let crls = postern_pki::crls_from_pem(&pem)
                    .map_err(|e| format!("`{}`: {e}", crl_path.display()))?;
                self.crls.store(Arc::new(crls));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.crls.store(Arc::new(Vec::new()))
            }
            Err(e) => return Err(format!("`{}`: {e}", crl_path.display())),
        }
        Ok(added)
    }

    /// The revocation entry for a serial, if revoked.
    pub fn revoked(&self, serial_hex: &str) -> Option<RevokedCert> {
        let list = self.revoked.load();
        if list.is_empty() {
            return None;
        }
        // Serials from `client_identity` are already in normal form (the
        // common case, no allocation); anything else is normalized first.
        if let Some(r) = list.get(serial_hex) {
            return Some(r.clone());
        }
        let serial = postern_pki::normalize_serial(serial_hex).ok()?;
        list.get(&serial).cloned()
    }

    /// The CA's current CRLs, for the TLS verifier.
    pub fn crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.crls.load().as_ref().clone()
    }

    /// Watch `revoked.json` and `crl.pem`; on change reload and call `changed`.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        changed: impl Fn(&[RevokedCert]) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let ca = Arc::clone(self);
        tokio::spawn(async move {
            let paths = [ca.store.revoked_path(), ca.store.crl_path()];
            let mut last = stamps(&paths);
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = stamps(&paths);
                if now == last {
                    continue;
                }
                match ca.reload() {
                    Ok(added) => {
                        last = now;
                        tracing::info!(dir = %ca.dir().display(), new = added.len(), "revocations reloaded");
                        changed(&added);
                    }
                    // A half-written file: try again next tick, keep the old snapshot.
                    Err(e) => {
                        tracing::warn!(error = %e, "reloading revocations failed; keeping the previous list")
                    }
                }
            }
        })
    }

    /// Issue a renewed certificate for the holder of `current` (verified, not
    /// revoked, not expired: checked by the caller's authentication), keeping
    /// its identity and grants (grants keep their own not-after), refusing
    /// past the maximum session age.
    pub fn renew(
        &self,
        principal: &str,
        serial_hex: &str,
        extras: &CertExtras,
        csr_pem: &str,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, RenewError> {
        if !self.renewal {
            return Err(RenewError::Disabled);
        }
        if self.revoked(serial_hex).is_some() {
            return Err(RenewError::Revoked(serial_hex.to_string()));
        }
        let started = extras.session_started_at.unwrap_or(now);
        if now - started > self.max_session_age {
            return Err(RenewError::SessionTooOld {
                started: crate::authn::fmt_time(started),
                max_hours: self.max_session_age.whole_hours(),
            });
        }
        let (kind, name) = match principal.split_once('/') {
            Some(("service", name)) => (Kind::Service, name),
            _ => (Kind::User, principal),
        };
        // Grants that already lapsed are not carried over (issuance refuses them).
        let grants: Vec<Grant> = extras
            .grants
            .iter()
            .filter(|g| g.not_after > now)
            .cloned()
            .collect();
        let req = ClientCertRequest::new(name, kind, self.store.default_ttl())
            .with_grants(grants)
            .continuing_session(started);
        self.store
            .sign_client_csr(csr_pem, &req, now)
            .map_err(|e| RenewError::BadCsr(e.to_string()))
    }

    /// The chain to send after a leaf (empty for a root CA).
    pub fn chain_pem(&self) -> &str {
        if self.store.is_intermediate() {
            self.store.chain_pem()
        } else {
            ""
        }
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| m.modified().ok().map(|t| (t, m.len())))
        })
        .collect()
}
