//! Revocation: the list of certificates that died before their time, and the index of every
//! certificate issued, which lets an operator revoke "everything alice holds" at once.

use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::PkiError;
use crate::identity::normalize_serial_bytes;

/// Why a certificate was revoked (the RFC 5280 §5.3.1 reason codes postern uses).
///
/// `certificateHold` is deliberately absent: postern's revocation is final, and a
/// certificate that should work again is simply re-issued (it lives hours anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    /// No reason given.
    #[default]
    Unspecified,
    /// The private key leaked or may have.
    KeyCompromise,
    /// The issuing CA's key leaked or may have.
    CaCompromise,
    /// The holder's affiliation changed (left the team, the company).
    AffiliationChanged,
    /// Replaced by a newer certificate.
    Superseded,
    /// No longer needed.
    CessationOfOperation,
    /// A privilege (for example a grant it carries) was withdrawn.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    pub(crate) fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::CaCompromise => rcgen::RevocationReason::CaCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedCert {
    /// Serial, normalized (lowercase hex, no separators or leading zero bytes).
    pub serial_hex: String,
    /// Why.
    pub reason: RevocationReason,
    /// When the CA processed the revocation.
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
    /// Whose certificate it was, when the issuance index knew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// When the certificate expires anyway, when known. After that instant the entry may be
    /// left out of CRLs (RFC 5280 §3.3), because every verifier refuses the certificate.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub not_after: Option<OffsetDateTime>,
}

/// The revocation list, as persisted in `revoked.json`.
///
/// A snapshot: the gateway loads it (or the CRL) and swaps in a new one when the file
/// changes, so the per-request check is a lookup with no I/O.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    /// Format version, 1.
    version: u32,
    /// Entries, in revocation order, at most one per serial.
    revoked: Vec<RevokedCert>,
}

impl RevocationList {
    /// Loads `revoked.json`; a missing file is an empty list (nothing was ever revoked).
    pub fn load(path: impl AsRef<Path>) -> Result<RevocationList, PkiError> {
        let path = path.as_ref();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RevocationList::new()),
            Err(e) => return Err(PkiError::io(path, e)),
        };
        let list: RevocationList =
            serde_json::from_slice(&bytes).map_err(|e| PkiError::CaStore {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if list.version != 1 {
            return Err(PkiError::CaStore {
                path: path.to_owned(),
                reason: format!("unsupported version {}", list.version),
            });
        }
        Ok(list)
    }

    /// An empty list.
    pub fn new() -> RevocationList {
        RevocationList {
            version: 1,
            revoked: Vec::new(),
        }
    }

    /// Whether the certificate with this serial (any hex form: upper/lower case, `:`
    /// separators, leading zeros) is revoked. A string that is not a serial is never revoked.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        match normalize_serial(serial_hex) {
            Ok(serial) => self.revoked.iter().any(|r| r.serial_hex == serial),
            Err(_) => false,
        }
    }

    /// All entries, in revocation order.
    pub fn entries(&self) -> &[RevokedCert] {
        &self.revoked
    }

    /// Adds an entry unless the serial is already revoked; returns whether it was added (the
    /// first revocation's time and reason are kept, so the record of when it happened holds).
    pub(crate) fn add(&mut self, entry: RevokedCert) -> bool {
        if self
            .revoked
            .iter()
            .any(|r| r.serial_hex == entry.serial_hex)
        {
            return false;
        }
        self.revoked.push(entry);
        true
    }

    pub(crate) fn to_json(&self) -> Result<Vec<u8>, PkiError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| PkiError::CaStore {
            path: "revoked.json".into(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        Ok(json)
    }
}

/// Normalizes a serial written in hex (case-insensitive, optional `:` separators and
/// `0x` prefix, leading zeros allowed) to the crate's one form.
pub fn normalize_serial(serial: &str) -> Result<String, PkiError> {
    let invalid = || PkiError::InvalidSerial(serial.to_owned());
    let trimmed = serial.trim();
    let digits: String = trimmed
        .strip_prefix("0x")
        .unwrap_or(trimmed)
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if digits.is_empty() || digits.len() > 80 {
        return Err(invalid());
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = hex::decode(padded).map_err(|_| invalid())?;
    Ok(normalize_serial_bytes(&bytes))
}

/// One line of `issued.jsonl`: a certificate the CA handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedRecord {
    /// Serial, normalized.
    pub serial_hex: String,
    /// The principal the gateway will see (`alice`, `service/billing`), or `server/<name>`
    /// for server certificates.
    pub identity: String,
    /// `user`, `service` or `server`.
    pub kind: String,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// When it expires.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Ids of the grants it carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
    /// SHA-256 fingerprint of the certificate DER, hex.
    pub fingerprint_sha256: String,
}

/// Parses `issued.jsonl`. A final line without its newline is a torn append from a crash
/// and is ignored (that certificate was never handed out: issuance returns only after the
/// line is synced); any other malformed line is an error.
pub(crate) fn parse_index(path: &Path, text: &str) -> Result<Vec<IssuedRecord>, PkiError> {
    let complete = match text.rfind('\n') {
        Some(i) => text.get(..i).unwrap_or_default(),
        None => "",
    };
    complete
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| PkiError::CaStore {
                path: path.to_owned(),
                reason: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn serial_forms_normalize_to_one() {
        for s in ["0A:BC", "0abc", "abc", "0x0ABC", "00:0a:bc"] {
            assert_eq!(normalize_serial(s).unwrap(), "0abc", "{s}");
        }
        assert!(normalize_serial("").is_err());
        assert!(normalize_serial("xyz").is_err());
    }

    #[test]
    fn revoking_twice_keeps_the_first_record() {
        let mut list = RevocationList::new();
        let entry = |reason| RevokedCert {
            serial_hex: "0abc".into(),
            reason,
            revoked_at: datetime!(2026-03-01 12:00 UTC),
            identity: None,
            not_after: None,
        };
        assert!(list.add(entry(RevocationReason::KeyCompromise)));
        assert!(!list.add(entry(RevocationReason::Superseded)));
        assert_eq!(list.entries().len(), 1);
        assert_eq!(list.entries()[0].reason, RevocationReason::KeyCompromise);
        assert!(list.is_revoked("0A:BC"));
        assert!(!list.is_revoked("0abd"));
        assert!(!list.is_revoked("not hex"));
    }

    #[test]
    fn torn_last_index_line_is_ignored_but_corruption_is_not() {
        let rec = IssuedRecord {
            serial_hex: "01".into(),
            identity: "alice".into(),
            kind: "user".into(),
            issued_at: datetime!(2026-03-01 12:00 UTC),
            not_after: datetime!(2026-03-01 20:00 UTC),
            grants: Vec::new(),
            fingerprint_sha256: "00".into(),
        };
        let line = serde_json::to_string(&rec).unwrap();
        let path = Path::new("issued.jsonl");
        let text = format!("{line}\n{}", &line[..10]);
        assert_eq!(parse_index(path, &text).unwrap(), vec![rec]);
        let text = format!("{}\n{line}\n", &line[..10]);
        assert!(parse_index(path, &text).is_err());
    }
}
