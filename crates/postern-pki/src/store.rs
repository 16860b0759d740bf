//! The CA on disk: one directory holding the CA, its policy (TTLs), the issuance index and
//! the revocation list.
//!
//! ```text
//! <dir>/ca.pem        the CA certificate (for an intermediate: the intermediate only)
//! <dir>/chain.pem     the CA certificate followed by its issuers up to the root; append it
//!                     to a client's certificate so the gateway can build the path
//! <dir>/ca.key        the CA private key, PKCS#8, mode 0600
//! <dir>/ca.toml       trust domain, key algorithm, default and maximum certificate lifetime
//! <dir>/issued.jsonl  one line per certificate handed out (append-only)
//! <dir>/revoked.json  the revocation list (replaced atomically)
//! <dir>/crl.pem       a CRL of revoked.json, re-signed at every revocation
//! ```
//!
//! Writers: one process at a time per directory (the `postern ca` CLI). Within a process a
//! mutex serializes revocations; readers (the gateway) only ever see whole files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::ca::{
    whole_seconds, Ca, CertifiedKey, ClientCertRequest, IssuedCertificate, KeyAlg, Kind,
};
use crate::error::PkiError;
use crate::files::{append_line, write_atomic, write_new};
use crate::grant::Grant;
use crate::identity::fingerprint_sha256;
use crate::revocation::{
    normalize_serial, parse_index, IssuedRecord, RevocationList, RevocationReason, RevokedCert,
};

/// Default client certificate lifetime: a working day.
pub const DEFAULT_TTL: Duration = Duration::hours(8);
/// Default maximum lifetime any issuance may ask for.
pub const DEFAULT_MAX_TTL: Duration = Duration::hours(24);
/// The highest `max_ttl` a CA directory accepts. Certificates that die young are the point
/// (DESIGN invariant 5); a week bounds the damage of a leaked key even if revocation fails.
pub const MAX_TTL_CEILING: Duration = Duration::days(7);
/// Default validity of an intermediate CA (capped at the parent's remaining validity).
pub const INTERMEDIATE_VALIDITY: Duration = Duration::days(365);
/// How long a CRL written by the store is current (its nextUpdate). The store re-signs the
/// CRL at every revocation; the gateway should also refresh it at least this often.
pub const CRL_LIFETIME: Duration = Duration::hours(24);

const CA_PEM: &str = "ca.pem";
const CHAIN_PEM: &str = "chain.pem";
const CA_KEY: &str = "ca.key";
const CA_TOML: &str = "ca.toml";
const ISSUED: &str = "issued.jsonl";
const REVOKED: &str = "revoked.json";
const CRL_PEM: &str = "crl.pem";

/// How to create a CA directory.
#[derive(Clone)]
pub struct CaInitOptions {
    /// Subject CN of the CA certificate.
    pub common_name: String,
    /// SPIFFE trust domain of the identities it issues.
    pub trust_domain: String,
    /// Key algorithm of the CA and of the keys it generates.
    pub alg: KeyAlg,
    /// Lifetime used when the caller does not choose one (see [`CaStore::default_ttl`]).
    pub default_ttl: Duration,
    /// Longest lifetime any issuance may ask for; at most [`MAX_TTL_CEILING`].
    pub max_ttl: Duration,
    /// Validity of the CA certificate; `None` means [`crate::ROOT_VALIDITY`] for a root and
    /// [`INTERMEDIATE_VALIDITY`] (capped at the parent's expiry) for an intermediate.
    pub validity: Option<Duration>,
    /// `(certificate PEM, private key PEM)` of an existing CA: when set, the new CA is an
    /// intermediate signed by it, and only the intermediate's key is stored.
    pub parent: Option<(String, String)>,
}

impl std::fmt::Debug for CaInitOptions {
    /// Never prints the parent's private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaInitOptions")
            .field("common_name", &self.common_name)
            .field("trust_domain", &self.trust_domain)
            .field("alg", &self.alg)
            .field("default_ttl", &self.default_ttl)
            .field("max_ttl", &self.max_ttl)
            .field("validity", &self.validity)
            .field("parent", &self.parent.as_ref().map(|_| "[parent ca]"))
            .finish()
    }
}

impl CaInitOptions {
    /// A root CA with the default algorithm and lifetimes.
    pub fn new(common_name: impl Into<String>, trust_domain: impl Into<String>) -> Self {
        CaInitOptions {
            common_name: common_name.into(),
            trust_domain: trust_domain.into(),
            alg: KeyAlg::default(),
            default_ttl: DEFAULT_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            validity: None,
            parent: None,
        }
    }
}

/// `ca.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaConfig {
    common_name: String,
    trust_domain: String,
    key_alg: String,
    default_ttl_seconds: i64,
    max_ttl_seconds: i64,
    intermediate: bool,
}

/// Validated lifetimes: `0 < default_ttl <= max_ttl <= MAX_TTL_CEILING`.
fn check_ttls(default_ttl: Duration, max_ttl: Duration) -> Result<(), String> {
    if !default_ttl.is_positive() || !max_ttl.is_positive() {
        return Err("lifetimes must be positive".into());
    }
    if default_ttl > max_ttl {
        return Err(format!(
            "default_ttl `{default_ttl}` exceeds max_ttl `{max_ttl}`"
        ));
    }
    if max_ttl > MAX_TTL_CEILING {
        return Err(format!(
            "max_ttl `{max_ttl}` exceeds the ceiling of `{MAX_TTL_CEILING}`"
        ));
    }
    Ok(())
}

/// A CA directory, opened.
///
/// Invariants: the CA loaded and matches its key; `ca.toml` agrees with the key algorithm;
/// `0 < default_ttl <= max_ttl <= MAX_TTL_CEILING`. Every certificate it hands out has a
/// lifetime of at most `max_ttl` and is in `issued.jsonl` (synced) before it is returned.
#[derive(Debug)]
pub struct CaStore {
    dir: PathBuf,
    ca: Ca,
    chain_pem: String,
    default_ttl: Duration,
    max_ttl: Duration,
    intermediate: bool,
    /// Serializes read-modify-write of `revoked.json` within this process.
    revocation_lock: Mutex<()>,
}

impl CaStore {
    /// Creates a CA in `dir` (created 0700 if missing) and returns it opened.
    ///
    /// Refuses to touch a directory that already holds any CA file: overwriting a CA would
    /// orphan every certificate it issued and silently re-key the trust root. Files are
    /// created exclusively (`O_EXCL`), so two concurrent `init`s cannot both succeed.
    /// `ca.toml` is written last; a directory without it is reported as incomplete.
    pub fn init(
        dir: impl AsRef<Path>,
        opts: &CaInitOptions,
        now: OffsetDateTime,
    ) -> Result<CaStore, PkiError> {
        let dir = dir.as_ref();
        check_ttls(opts.default_ttl, opts.max_ttl).map_err(|reason| PkiError::CaStore {
            path: dir.join(CA_TOML),
            reason,
        })?;
        for name in [CA_PEM, CHAIN_PEM, CA_KEY, CA_TOML, ISSUED, REVOKED, CRL_PEM] {
            if dir.join(name).exists() {
                return Err(PkiError::CaExists(dir.to_owned()));
            }
        }

        let (ca, chain_pem) = match &opts.parent {
            None => {
                let ca = Ca::generate(
                    &crate::ca::CaSpec {
                        common_name: &opts.common_name,
                        trust_domain: &opts.trust_domain,
                        alg: opts.alg,
                        validity: opts.validity.unwrap_or(crate::ROOT_VALIDITY),
                        now,
                    },
                    None,
                )?;
                let chain = ca.cert_pem().to_owned();
                (ca, chain)
            }
            Some((parent_cert, parent_key)) => {
                let parent = Ca::from_pem(parent_cert, parent_key, &opts.trust_domain)?;
                let validity = match opts.validity {
                    Some(v) => v,
                    None => INTERMEDIATE_VALIDITY.min(parent.not_after() - whole_seconds(now)),
                };
                let ca = parent.issue_intermediate(
                    &opts.common_name,
                    &opts.trust_domain,
                    opts.alg,
                    validity,
                    now,
                )?;
                let mut chain = ca.cert_pem().to_owned();
                chain.push_str(parent_cert);
                (ca, chain)
            }
        };

        create_private_dir(dir)?;
        let exists = |e: PkiError| match e {
            PkiError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
                PkiError::CaExists(dir.to_owned())
            }
            other => other,
        };
        write_new(&dir.join(CA_KEY), ca.key_pem().as_bytes(), 0o600).map_err(exists)?;
        write_new(&dir.join(CA_PEM), ca.cert_pem().as_bytes(), 0o644).map_err(exists)?;
        write_new(&dir.join(CHAIN_PEM), chain_pem.as_bytes(), 0o644).map_err(exists)?;
        let revoked = RevocationList::new();
        write_new(&dir.join(REVOKED), &revoked.to_json()?, 0o644).map_err(exists)?;
        let config = CaConfig {
            common_name: opts.common_name.clone(),
            trust_domain: opts.trust_domain.clone(),
            key_alg: opts.alg.as_str().to_owned(),
            default_ttl_seconds: opts.default_ttl.whole_seconds(),
            max_ttl_seconds: opts.max_ttl.whole_seconds(),
            intermediate: opts.parent.is_some(),
        };
        let toml = toml::to_string(&config).map_err(|e| PkiError::CaStore {
            path: dir.join(CA_TOML),
            reason: e.to_string(),
        })?;
        let store = CaStore {
            dir: dir.to_owned(),
            ca,
            chain_pem,
            default_ttl: opts.default_ttl,
            max_ttl: opts.max_ttl,
            intermediate: opts.parent.is_some(),
            revocation_lock: Mutex::new(()),
        };
        store.write_crl(&revoked, now)?;
        write_new(&dir.join(CA_TOML), toml.as_bytes(), 0o644).map_err(exists)?;
        Ok(store)
    }

    /// Opens an existing CA directory.
    ///
    /// Refuses an incomplete directory, a `ca.toml` that disagrees with the key, lifetimes
    /// outside `0 < default <= max <= MAX_TTL_CEILING`, and (on Unix) a `ca.key` readable by
    /// group or others, like ssh does for private keys.
    pub fn open(dir: impl AsRef<Path>) -> Result<CaStore, PkiError> {
        let dir = dir.as_ref();
        let toml_path = dir.join(CA_TOML);
        let toml_text = read(&toml_path).map_err(|e| match e {
            PkiError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                PkiError::CaStore {
                    path: toml_path.clone(),
                    reason: "missing: this is not a ca directory, or `init` did not finish".into(),
                }
            }
            other => other,
        })?;
        let config: CaConfig = toml::from_str(&toml_text).map_err(|e| PkiError::CaStore {
            path: toml_path.clone(),
            reason: e.to_string(),
        })?;
        let default_ttl = Duration::seconds(config.default_ttl_seconds);
        let max_ttl = Duration::seconds(config.max_ttl_seconds);
        check_ttls(default_ttl, max_ttl).map_err(|reason| PkiError::CaStore {
            path: toml_path.clone(),
            reason,
        })?;
        let key_path = dir.join(CA_KEY);
        check_private(&key_path)?;
        let ca = Ca::from_pem(
            &read(&dir.join(CA_PEM))?,
            &read(&key_path)?,
            &config.trust_domain,
        )?;
        if ca.alg().as_str() != config.key_alg {
            return Err(PkiError::CaStore {
                path: toml_path,
                reason: format!("key_alg is `{}` but ca.key is {}", config.key_alg, ca.alg()),
            });
        }
        let chain_pem = read(&dir.join(CHAIN_PEM))?;
        Ok(CaStore {
            dir: dir.to_owned(),
            ca,
            chain_pem,
            default_ttl,
            max_ttl,
            intermediate: config.intermediate,
            revocation_lock: Mutex::new(()),
        })
    }

    /// The CA itself (for `cert_pem`, `trust_domain`, ...). Issuing through it directly
    /// bypasses `max_ttl` and the issuance index; use the store's methods instead.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `chain.pem`: this CA's certificate, then its issuers up to the root.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// Whether this CA is an intermediate under another CA.
    pub fn is_intermediate(&self) -> bool {
        self.intermediate
    }

    /// The lifetime to use when the caller does not choose one.
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl
    }

    /// The longest lifetime issuance accepts.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// Path of `revoked.json`, for a gateway that watches it.
    pub fn revoked_path(&self) -> PathBuf {
        self.dir.join(REVOKED)
    }

    /// Path of `crl.pem`, for a gateway that loads CRLs into its verifier.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL_PEM)
    }

    /// A client certificate (see [`Ca::issue_client`]), at most `max_ttl`, recorded in the
    /// issuance index before it is returned.
    pub fn issue_client(
        &self,
        name: &str,
        kind: Kind,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<CertifiedKey, PkiError> {
        self.issue_client_with(&ClientCertRequest::new(name, kind, ttl), now)
    }

    /// A client certificate with grants / session start (see [`Ca::issue_client_with`]), at
    /// most `max_ttl`, recorded in the issuance index before it is returned.
    pub fn issue_client_with(
        &self,
        req: &ClientCertRequest,
        now: OffsetDateTime,
    ) -> Result<CertifiedKey, PkiError> {
        self.check_ttl(req.ttl)?;
        let (issued, key_pem) = self.ca.issue_client_keyed(req, now)?;
        self.record(req, &issued, now)?;
        Ok(issued.into_certified(key_pem))
    }

    /// A client certificate for the key in a CSR (PEM): the CSR proves possession of the key,
    /// and the CA ignores every name it requests (see [`Ca::sign_client_csr`]). At most
    /// `max_ttl`; recorded in the issuance index before it is returned.
    pub fn issue_from_csr(
        &self,
        csr_pem: &str,
        name: &str,
        kind: Kind,
        ttl: Duration,
        grants: &[Grant],
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, PkiError> {
        let req = ClientCertRequest::new(name, kind, ttl).with_grants(grants.to_vec());
        self.sign_client_csr(csr_pem, &req, now)
    }

    /// [`CaStore::issue_from_csr`] with a full request (for renewals that keep the session).
    pub fn sign_client_csr(
        &self,
        csr_pem: &str,
        req: &ClientCertRequest,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, PkiError> {
        self.check_ttl(req.ttl)?;
        let issued = self.ca.sign_client_csr(csr_pem, req, now)?;
        self.record(req, &issued, now)?;
        Ok(issued)
    }

    /// A server certificate (see [`Ca::issue_server`]), at most `max_ttl`, recorded in the
    /// issuance index as `server/<first DNS name or IP>`.
    pub fn issue_server(
        &self,
        dns: &[&str],
        ips: &[IpAddr],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<CertifiedKey, PkiError> {
        self.check_ttl(ttl)?;
        let (issued, key_pem) = self.ca.issue_server_keyed(dns, ips, ttl, now)?;
        let name = dns
            .first()
            .map(|d| (*d).to_owned())
            .or_else(|| ips.first().map(IpAddr::to_string))
            .unwrap_or_default();
        self.append_record(&IssuedRecord {
            serial_hex: issued.serial_hex.clone(),
            identity: format!("server/{name}"),
            kind: "server".into(),
            issued_at: whole_seconds(now),
            not_after: issued.not_after,
            grants: Vec::new(),
            fingerprint_sha256: fingerprint_sha256(&issued.cert_der),
        })?;
        Ok(issued.into_certified(key_pem))
    }

    /// Every certificate issued, oldest first.
    pub fn issued(&self) -> Result<Vec<IssuedRecord>, PkiError> {
        let path = self.dir.join(ISSUED);
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_index(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(PkiError::io(path, e)),
        }
    }

    /// The current revocation list (read from `revoked.json`).
    pub fn revocations(&self) -> Result<RevocationList, PkiError> {
        RevocationList::load(self.revoked_path())
    }

    /// Whether `serial_hex` (any hex form) is revoked, reading `revoked.json` now. The
    /// gateway's hot path should hold a [`RevocationList`] snapshot instead.
    pub fn is_revoked(&self, serial_hex: &str) -> Result<bool, PkiError> {
        Ok(self.revocations()?.is_revoked(serial_hex))
    }

    /// Revokes one certificate by serial (any hex form) and re-signs `crl.pem`. Returns
    /// whether it was newly revoked (`false`: already revoked; the first record is kept).
    /// Serials this CA never issued may be revoked too (for example from a lost index).
    pub fn revoke(
        &self,
        serial_hex: &str,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<bool, PkiError> {
        let serial = normalize_serial(serial_hex)?;
        let known = self.issued()?.into_iter().find(|r| r.serial_hex == serial);
        let added = self.update_revocations(now, |list| {
            list.add(RevokedCert {
                serial_hex: serial.clone(),
                reason,
                revoked_at: whole_seconds(now),
                identity: known.as_ref().map(|r| r.identity.clone()),
                not_after: known.as_ref().map(|r| r.not_after),
            })
        })?;
        Ok(added)
    }

    /// Revokes every unexpired certificate issued to `identity` (a principal as the gateway
    /// sees it: `alice`, `service/billing`, `server/gw.example.org`) and re-signs `crl.pem`.
    /// Returns the serials newly revoked. Errors if no certificate was ever issued to it, so a
    /// typo is not mistaken for success.
    pub fn revoke_identity(
        &self,
        identity: &str,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, PkiError> {
        let records: Vec<IssuedRecord> = self
            .issued()?
            .into_iter()
            .filter(|r| r.identity == identity)
            .collect();
        if records.is_empty() {
            return Err(PkiError::UnknownIdentity(identity.to_owned()));
        }
        self.update_revocations(now, |list| {
            let mut newly = Vec::new();
            // Expired certificates are dead already; listing them would only grow the CRL.
            for r in records.iter().filter(|r| r.not_after >= now) {
                let added = list.add(RevokedCert {
                    serial_hex: r.serial_hex.clone(),
                    reason,
                    revoked_at: whole_seconds(now),
                    identity: Some(r.identity.clone()),
                    not_after: Some(r.not_after),
                });
                if added {
                    newly.push(r.serial_hex.clone());
                }
            }
            newly
        })
    }

    /// A DER CRL (RFC 5280 v2) of the current revocation list, signed by this CA:
    /// thisUpdate `now`, nextUpdate `now +` [`CRL_LIFETIME`], CRL number = `now` in Unix
    /// seconds (monotonic as long as the clock is, without a counter to persist). Entries
    /// whose certificate has expired are left out (RFC 5280 §3.3).
    pub fn crl_der(&self, now: OffsetDateTime) -> Result<Vec<u8>, PkiError> {
        self.crl_of(&self.revocations()?, now)
    }

    /// [`CaStore::crl_der`] as PEM (`X509 CRL`).
    pub fn crl_pem(&self, now: OffsetDateTime) -> Result<String, PkiError> {
        Ok(crate::pem::encode_pem("X509 CRL", &self.crl_der(now)?))
    }

    fn crl_of(&self, list: &RevocationList, now: OffsetDateTime) -> Result<Vec<u8>, PkiError> {
        let revoked = list
            .entries()
            .iter()
            .filter(|r| r.not_after.is_none_or(|t| t >= now))
            .map(|r| {
                let serial = hex::decode(&r.serial_hex)
                    .map_err(|_| PkiError::InvalidSerial(r.serial_hex.clone()))?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&serial),
                    revocation_time: r.revoked_at,
                    reason_code: Some(r.reason.to_rcgen()),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let crl_number = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        self.ca
            .sign_crl(revoked, now, now + CRL_LIFETIME, crl_number)
    }

    fn write_crl(&self, list: &RevocationList, now: OffsetDateTime) -> Result<(), PkiError> {
        let pem = crate::pem::encode_pem("X509 CRL", &self.crl_of(list, now)?);
        write_atomic(&self.dir.join(CRL_PEM), pem.as_bytes(), 0o644)
    }

    /// Read-modify-write of `revoked.json` under the process mutex: atomic replace, then the
    /// CRL is re-signed from the new list.
    fn update_revocations<T>(
        &self,
        now: OffsetDateTime,
        change: impl FnOnce(&mut RevocationList) -> T,
    ) -> Result<T, PkiError> {
        // A poisoned mutex only means another thread panicked mid-update; the file on disk
        // is still whole (atomic replace), so carry on from it.
        let _guard = self
            .revocation_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list = self.revocations()?;
        let out = change(&mut list);
        write_atomic(&self.revoked_path(), &list.to_json()?, 0o644)?;
        self.write_crl(&list, now)?;
        Ok(out)
    }

    fn check_ttl(&self, ttl: Duration) -> Result<(), PkiError> {
        if ttl > self.max_ttl {
            return Err(PkiError::TtlExceedsMax {
                requested: ttl,
                max: self.max_ttl,
            });
        }
        Ok(())
    }

    fn record(
        &self,
        req: &ClientCertRequest,
        issued: &IssuedCertificate,
        now: OffsetDateTime,
    ) -> Result<(), PkiError> {
        let identity = match req.kind {
            Kind::User => req.name.clone(),
            Kind::Service => format!("service/{}", req.name),
        };
        self.append_record(&IssuedRecord {
            serial_hex: issued.serial_hex.clone(),
            identity,
            kind: req.kind.segment().to_owned(),
            issued_at: whole_seconds(now),
            not_after: issued.not_after,
            grants: req.grants.iter().map(|g| g.id.clone()).collect(),
            fingerprint_sha256: fingerprint_sha256(&issued.cert_der),
        })
    }

    fn append_record(&self, record: &IssuedRecord) -> Result<(), PkiError> {
        let line = serde_json::to_string(record).map_err(|e| PkiError::CaStore {
            path: self.dir.join(ISSUED),
            reason: e.to_string(),
        })?;
        append_line(&self.dir.join(ISSUED), &line, 0o644)
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| PkiError::io(path, e))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PkiError::io(dir, e))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|e| PkiError::io(dir, e))
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| PkiError::io(path, e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::CaStore {
            path: path.to_owned(),
            reason: format!(
                "the ca key is readable by others (mode {mode:o}); run `chmod 600` on it"
            ),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), PkiError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{client_identity, grants_from_cert};
    use time::macros::datetime;
    use x509_parser::prelude::{parse_x509_certificate, parse_x509_crl};

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn init(dir: &Path) -> CaStore {
        CaStore::init(dir, &CaInitOptions::new("postern CA", "example.org"), NOW).unwrap()
    }

    #[test]
    fn init_writes_the_layout_and_open_reads_it_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let store = init(&dir);
        for name in [CA_PEM, CHAIN_PEM, CA_KEY, CA_TOML, REVOKED, CRL_PEM] {
            assert!(dir.join(name).is_file(), "{name}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.join(CA_KEY)), 0o600);
            assert_eq!(mode(&dir), 0o700);
        }
        let toml = std::fs::read_to_string(dir.join(CA_TOML)).unwrap();
        assert!(toml.contains("trust_domain = \"example.org\""), "{toml}");
        assert!(toml.contains("key_alg = \"ecdsa-p256\""), "{toml}");
        assert!(toml.contains("default_ttl_seconds = 28800"), "{toml}");
        assert!(toml.contains("max_ttl_seconds = 86400"), "{toml}");

        let opened = CaStore::open(&dir).unwrap();
        assert_eq!(opened.ca().cert_pem(), store.ca().cert_pem());
        assert_eq!(opened.ca().trust_domain(), "example.org");
        assert_eq!(
            (opened.default_ttl(), opened.max_ttl()),
            (DEFAULT_TTL, DEFAULT_MAX_TTL)
        );
        assert!(!opened.is_intermediate());
        assert_eq!(opened.chain_pem(), store.ca().cert_pem());
    }

    #[test]
    fn init_refuses_to_overwrite_a_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let store = init(tmp.path());
        let before = store.ca().cert_pem().to_owned();
        assert!(matches!(
            CaStore::init(tmp.path(), &CaInitOptions::new("other", "example.org"), NOW),
            Err(PkiError::CaExists(_))
        ));
        assert_eq!(CaStore::open(tmp.path()).unwrap().ca().cert_pem(), before);
    }

    #[test]
    fn lifetimes_are_validated_and_enforced() {
        let tmp = tempfile::tempdir().unwrap();
        let mut opts = CaInitOptions::new("ca", "example.org");
        opts.default_ttl = Duration::hours(48);
        assert!(matches!(
            CaStore::init(tmp.path(), &opts, NOW),
            Err(PkiError::CaStore { .. })
        ));
        opts.default_ttl = DEFAULT_TTL;
        opts.max_ttl = Duration::days(30);
        assert!(matches!(
            CaStore::init(tmp.path(), &opts, NOW),
            Err(PkiError::CaStore { .. })
        ));
        let store = init(tmp.path());
        assert!(matches!(
            store.issue_client("alice", Kind::User, Duration::hours(25), NOW),
            Err(PkiError::TtlExceedsMax { .. })
        ));
        assert!(matches!(
            store.issue_server(&["gw"], &[], Duration::days(2), NOW),
            Err(PkiError::TtlExceedsMax { .. })
        ));
        assert!(
            store.issued().unwrap().is_empty(),
            "refused issuance left a record"
        );
        store
            .issue_client("alice", Kind::User, Duration::hours(24), NOW)
            .unwrap();
    }

    #[test]
    fn every_issuance_is_indexed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = init(tmp.path());
        let a = store
            .issue_client("alice", Kind::User, Duration::hours(8), NOW)
            .unwrap();
        let b = store
            .issue_client("billing", Kind::Service, Duration::hours(1), NOW)
            .unwrap();
        let s = store
            .issue_server(&["gw.example.org"], &[], Duration::hours(24), NOW)
            .unwrap();
        let csr_key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&csr_key)
            .unwrap()
            .pem()
            .unwrap();
        let grant = Grant {
            id: "CHG-9".into(),
            rules: vec!["health".into()],
            waives: Vec::new(),
            not_after: NOW + Duration::hours(1),
            reason: "demo".into(),
            approved_by: "carol".into(),
        };
        let c = store
            .issue_from_csr(&csr, "carol", Kind::User, Duration::hours(2), &[grant], NOW)
            .unwrap();
        assert_eq!(grants_from_cert(&c.cert_der).unwrap()[0].id, "CHG-9");

        let index = store.issued().unwrap();
        let ids: Vec<_> = index.iter().map(|r| r.identity.as_str()).collect();
        assert_eq!(
            ids,
            ["alice", "service/billing", "server/gw.example.org", "carol"]
        );
        for (record, der) in index
            .iter()
            .zip([&a.cert_der, &b.cert_der, &s.cert_der, &c.cert_der])
        {
            let (_, cert) = parse_x509_certificate(der).unwrap();
            assert_eq!(
                record.serial_hex,
                crate::identity::normalize_serial_bytes(cert.raw_serial())
            );
            assert_eq!(record.not_after, cert.validity().not_after.to_datetime());
            assert_eq!(record.fingerprint_sha256, fingerprint_sha256(der));
        }
        assert_eq!(index[3].grants, ["CHG-9"]);
    }

    #[test]
    fn revoke_identity_revokes_live_certificates_and_persists() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = CaInitOptions::new("postern CA", "example.org");
        let store = CaStore::init(tmp.path(), &opts, NOW - Duration::days(1)).unwrap();
        let old = store
            .issue_client(
                "alice",
                Kind::User,
                Duration::hours(1),
                NOW - Duration::hours(3),
            )
            .unwrap();
        let live1 = store
            .issue_client("alice", Kind::User, Duration::hours(8), NOW)
            .unwrap();
        let live2 = store
            .issue_client("alice", Kind::User, Duration::hours(8), NOW)
            .unwrap();
        let bob = store
            .issue_client("bob", Kind::User, Duration::hours(8), NOW)
            .unwrap();
        let serial = |der: &[u8]| {
            client_identity(der, "example.org", NOW - Duration::hours(3)).map(|i| i.serial_hex)
        };
        let live_serial = |der: &[u8]| client_identity(der, "example.org", NOW).unwrap().serial_hex;

        let revoked = store
            .revoke_identity("alice", RevocationReason::AffiliationChanged, NOW)
            .unwrap();
        assert_eq!(
            revoked,
            [live_serial(&live1.cert_der), live_serial(&live2.cert_der)]
        );
        assert!(!store.is_revoked(&serial(&old.cert_der).unwrap()).unwrap());
        assert!(store.is_revoked(&live_serial(&live1.cert_der)).unwrap());
        assert!(!store.is_revoked(&live_serial(&bob.cert_der)).unwrap());
        // Again: nothing new.
        assert!(store
            .revoke_identity("alice", RevocationReason::Superseded, NOW)
            .unwrap()
            .is_empty());
        assert!(matches!(
            store.revoke_identity("alcie", RevocationReason::Unspecified, NOW),
            Err(PkiError::UnknownIdentity(_))
        ));

        let reopened = CaStore::open(tmp.path()).unwrap();
        let list = reopened.revocations().unwrap();
        assert_eq!(list.entries().len(), 2);
        assert_eq!(
            list.entries()[0].reason,
            RevocationReason::AffiliationChanged
        );
        assert_eq!(list.entries()[0].identity.as_deref(), Some("alice"));
        let upper = live_serial(&bob.cert_der).to_uppercase();
        assert!(reopened
            .revoke(&upper, RevocationReason::KeyCompromise, NOW)
            .unwrap());
        assert!(!reopened
            .revoke(&upper, RevocationReason::KeyCompromise, NOW)
            .unwrap());
        assert!(reopened.is_revoked(&live_serial(&bob.cert_der)).unwrap());
        assert!(matches!(
            reopened.revoke("zz", RevocationReason::KeyCompromise, NOW),
            Err(PkiError::InvalidSerial(_))
        ));
    }

    #[test]
    fn crl_lists_revoked_serials_and_drops_expired_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let store = init(tmp.path());
        let c = store
            .issue_client("alice", Kind::User, Duration::hours(1), NOW)
            .unwrap();
        let serial = client_identity(&c.cert_der, "example.org", NOW)
            .unwrap()
            .serial_hex;
        store
            .revoke(&serial, RevocationReason::KeyCompromise, NOW)
            .unwrap();

        let der = store.crl_der(NOW).unwrap();
        let (_, crl) = parse_x509_crl(&der).unwrap();
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| crate::identity::normalize_serial_bytes(r.raw_serial()))
            .collect();
        assert_eq!(serials, [serial]);
        let (_, ca_cert) = parse_x509_certificate(store.ca().cert_der()).unwrap();
        crl.verify_signature(ca_cert.public_key()).unwrap();
        assert_eq!(crl.last_update().to_datetime(), NOW);

        // crl.pem on disk was re-signed by the revocation.
        let on_disk =
            crate::pem::crls_from_pem(&std::fs::read_to_string(store.crl_path()).unwrap()).unwrap();
        let (_, disk_crl) = parse_x509_crl(&on_disk[0]).unwrap();
        assert_eq!(disk_crl.iter_revoked_certificates().count(), 1);

        let later = NOW + Duration::hours(2);
        let der = store.crl_der(later).unwrap();
        let (_, crl) = parse_x509_crl(&der).unwrap();
        assert_eq!(crl.iter_revoked_certificates().count(), 0);
    }

    #[test]
    fn intermediate_chains_to_its_root_and_cannot_have_children() {
        let tmp = tempfile::tempdir().unwrap();
        let root = init(&tmp.path().join("root"));
        let mut opts = CaInitOptions::new("postern issuing CA", "example.org");
        opts.parent = Some((
            root.ca().cert_pem().to_owned(),
            root.ca().key_pem().to_owned(),
        ));
        let inter = CaStore::init(tmp.path().join("issuing"), &opts, NOW).unwrap();
        assert!(inter.is_intermediate());
        let chain = crate::pem::certs_from_pem(inter.chain_pem()).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].as_ref(), inter.ca().cert_der());
        assert_eq!(chain[1].as_ref(), root.ca().cert_der());

        let (_, root_cert) = parse_x509_certificate(root.ca().cert_der()).unwrap();
        let (_, inter_cert) = parse_x509_certificate(inter.ca().cert_der()).unwrap();
        inter_cert
            .verify_signature(Some(root_cert.public_key()))
            .unwrap();
        let bc = inter_cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca && bc.path_len_constraint == Some(0));
        assert_eq!(inter.ca().not_after(), NOW + INTERMEDIATE_VALIDITY);

        let client = inter
            .issue_client("alice", Kind::User, Duration::hours(1), NOW)
            .unwrap();
        let (_, client_cert) = parse_x509_certificate(&client.cert_der).unwrap();
        client_cert
            .verify_signature(Some(inter_cert.public_key()))
            .unwrap();
        let id = client_identity(&client.cert_der, "example.org", NOW).unwrap();
        assert_eq!(id.issuer_dn, "CN=postern issuing CA");

        let reopened = CaStore::open(tmp.path().join("issuing")).unwrap();
        assert!(reopened.is_intermediate());
        let mut deeper = CaInitOptions::new("too deep", "example.org");
        deeper.parent = Some((
            inter.ca().cert_pem().to_owned(),
            inter.ca().key_pem().to_owned(),
        ));
        assert!(matches!(
            CaStore::init(tmp.path().join("deeper"), &deeper, NOW),
            Err(PkiError::NotACa(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn open_refuses_a_readable_key_and_a_mismatched_config() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path());
        let key = tmp.path().join(CA_KEY);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            CaStore::open(tmp.path()),
            Err(PkiError::CaStore { .. })
        ));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        CaStore::open(tmp.path()).unwrap();

        let toml_path = tmp.path().join(CA_TOML);
        let toml = std::fs::read_to_string(&toml_path).unwrap();
        std::fs::write(&toml_path, toml.replace("ecdsa-p256", "ed25519")).unwrap();
        assert!(matches!(
            CaStore::open(tmp.path()),
            Err(PkiError::CaStore { .. })
        ));
        std::fs::write(&toml_path, toml.replace("86400", "31536000")).unwrap();
        assert!(matches!(
            CaStore::open(tmp.path()),
            Err(PkiError::CaStore { .. })
        ));
    }

    #[test]
    fn open_reports_a_missing_or_incomplete_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let err = CaStore::open(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("not a ca directory"), "{err}");
    }
}
