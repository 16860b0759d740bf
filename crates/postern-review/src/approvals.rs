//! Approvals: `<config>.approvals`, one JSON object per line:
//!
//! ```json
//! {"reviewer":"alice","digest":"sha256:…","time":"2026-11-22T10:00:00Z","signature":"<128 hex>"}
//! ```
//!
//! The signature is ed25519 over `postern-policy-approval-v1\n<digest>`.
//! Verification counts distinct, known, active reviewers whose signature
//! verifies over the *current* digest; everything else is listed with the
//! reason it does not count.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::reviewers::Reviewers;
use crate::ReviewError;

/// Domain separation for approval signatures.
pub const APPROVAL_CONTEXT: &str = "postern-policy-approval-v1";

/// The bytes a reviewer signs.
pub fn signed_message(digest: &str) -> Vec<u8> {
    format!("{APPROVAL_CONTEXT}\n{digest}").into_bytes()
}

/// One line of the approvals file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub reviewer: String,
    pub digest: String,
    /// RFC 3339 UTC; informational (not signed).
    pub time: String,
    /// 128 hex characters.
    pub signature: String,
}

impl Approval {
    /// Sign `digest` as `reviewer`.
    pub fn sign(key: &SigningKey, reviewer: &str, digest: &str, now: OffsetDateTime) -> Approval {
        let sig = key.sign(&signed_message(digest));
        Approval {
            reviewer: reviewer.to_string(),
            digest: digest.to_string(),
            time: now
                .replace_nanosecond(0)
                .unwrap_or(now)
                .format(&Rfc3339)
                .unwrap_or_default(),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The approvals file beside a config: `<config>.approvals`.
pub fn approvals_path(config_path: &Path) -> PathBuf {
    let mut p = config_path.as_os_str().to_owned();
    p.push(".approvals");
    PathBuf::from(p)
}

/// A line of the approvals file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

/// Approvals with their 1-based line numbers, and the lines that are not approvals.
pub type ParsedApprovals = (Vec<(usize, Approval)>, Vec<BadLine>);

/// Parse approvals text. Blank lines and `#` comments are skipped; a line
/// that is not an approval is reported, never fatal (it simply does not count).
pub fn parse_approvals(text: &str) -> ParsedApprovals {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        match serde_json::from_str::<Approval>(t) {
            Ok(a) => ok.push((i + 1, a)),
            Err(e) => bad.push(BadLine {
                line: i + 1,
                message: format!("not an approval: {e}"),
            }),
        }
    }
    (ok, bad)
}

/// Read the approvals file; a missing file is no approvals.
pub fn load_approvals(path: &Path) -> Result<ParsedApprovals, ReviewError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_approvals(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Vec::new(), Vec::new())),
        Err(e) => Err(ReviewError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// Append one approval (creating the file).
pub fn append_approval(path: &Path, approval: &Approval) -> Result<(), ReviewError> {
    use std::io::Write;
    let io = |e: std::io::Error| ReviewError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    f.write_all(format!("{}\n", approval.to_line()).as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)
}

/// The outcome of checking approvals against a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub digest: String,
    pub quorum: usize,
    /// Distinct active reviewers with a valid signature over `digest`, sorted.
    pub approvers: Vec<String>,
    /// Approvals that do not count, with why (line: reason).
    pub ignored: Vec<String>,
}

impl Verification {
    pub fn holds(&self) -> bool {
        self.approvers.len() >= self.quorum
    }

    /// One line for logs and errors.
    pub fn summary(&self) -> String {
        let who = if self.approvers.is_empty() {
            "nobody".to_string()
        } else {
            self.approvers.join(", ")
        };
        format!(
            "opt-out digest {} approved by {} of {} required ({who})",
            self.digest,
            self.approvers.len(),
            self.quorum
        )
    }
}

/// Count the approvals of `digest`. Pure.
pub fn verify(
    reviewers: &Reviewers,
    approvals: &[(usize, Approval)],
    bad_lines: &[BadLine],
    digest: &str,
) -> Verification {
    let mut approvers = BTreeSet::new();
    let mut ignored: Vec<String> = bad_lines
        .iter()
        .map(|b| format!("line {}: {}", b.line, b.message))
        .collect();
    let message = signed_message(digest);
    for (line, a) in approvals {
        let why = |m: String| format!("line {line}: reviewer `{}`: {m}", a.reviewer);
        if a.digest != digest {
            ignored.push(why(format!("signed another digest {}", a.digest)));
            continue;
        }
        let Some(r) = reviewers.get(&a.reviewer) else {
            ignored.push(why("unknown reviewer".into()));
            continue;
        };
        if r.removed {
            ignored.push(why("removed reviewer".into()));
            continue;
        }
        let sig = hex::decode(&a.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .map(|b| Signature::from_bytes(&b));
        let Some(sig) = sig else {
            ignored.push(why("signature is not 128 hex characters".into()));
            continue;
        };
        if r.key.verify(&message, &sig).is_err() {
            ignored.push(why(
                "signature does not verify with the reviewer's key".into()
            ));
            continue;
        }
        if !approvers.insert(a.reviewer.clone()) {
            ignored.push(why("already counted (one approval per reviewer)".into()));
        }
    }
    Verification {
        digest: digest.to_string(),
        quorum: reviewers.quorum,
        approvers: approvers.into_iter().collect(),
        ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reviewers::{generate_key, tests::file};

    const D: &str = "sha256:aaaa";
    const OTHER: &str = "sha256:bbbb";

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    struct Setup {
        keys: Vec<SigningKey>,
        reviewers: Reviewers,
    }

    fn setup(quorum: i64, removed: &[bool]) -> Setup {
        let keys: Vec<SigningKey> = removed.iter().map(|_| generate_key()).collect();
        let vks: Vec<_> = keys.iter().map(|k| k.verifying_key()).collect();
        let ids = ["r1", "r2", "r3", "r4"];
        let entries: Vec<_> = removed
            .iter()
            .enumerate()
            .map(|(i, r)| (ids[i], &vks[i], *r))
            .collect();
        let reviewers = Reviewers::parse(Path::new("r"), &file(quorum, &entries)).unwrap();
        Setup { keys, reviewers }
    }

    fn check(s: &Setup, approvals: Vec<Approval>) -> Verification {
        let text: String = approvals.iter().map(|a| a.to_line() + "\n").collect();
        let (ok, bad) = parse_approvals(&text);
        verify(&s.reviewers, &ok, &bad, D)
    }

    #[test]
    fn quorum_of_distinct_reviewers_holds() {
        let s = setup(2, &[false, false, false]);
        let v = check(
            &s,
            vec![
                Approval::sign(&s.keys[0], "r1", D, now()),
                Approval::sign(&s.keys[2], "r3", D, now()),
            ],
        );
        assert!(v.holds(), "{v:?}");
        assert_eq!(v.approvers, ["r1", "r3"]);
        assert!(v.summary().contains("2 of 2"));
    }

    #[test]
    fn m_minus_one_does_not_hold() {
        let s = setup(2, &[false, false]);
        let v = check(&s, vec![Approval::sign(&s.keys[0], "r1", D, now())]);
        assert!(!v.holds());
    }

    #[test]
    fn the_same_reviewer_twice_counts_once() {
        let s = setup(2, &[false, false]);
        let a = Approval::sign(&s.keys[0], "r1", D, now());
        let v = check(&s, vec![a.clone(), a]);
        assert!(!v.holds());
        assert_eq!(v.approvers, ["r1"]);
        assert!(
            v.ignored.iter().any(|i| i.contains("already counted")),
            "{v:?}"
        );
    }

    #[test]
    fn another_digest_an_unknown_key_or_a_removed_reviewer_do_not_count() {
        let s = setup(1, &[false, true]);
        let stranger = generate_key();
        for (a, why) in [
            (
                Approval::sign(&s.keys[0], "r1", OTHER, now()),
                "another digest",
            ),
            (Approval::sign(&stranger, "r1", D, now()), "does not verify"),
            (
                Approval::sign(&stranger, "mallory", D, now()),
                "unknown reviewer",
            ),
            (
                Approval::sign(&s.keys[1], "r2", D, now()),
                "removed reviewer",
            ),
        ] {
            let v = check(&s, vec![a]);
            assert!(!v.holds(), "{why}");
            assert!(v.ignored.iter().any(|i| i.contains(why)), "{why}: {v:?}");
        }
        // A signature over another digest, relabelled with the current one.
        let mut a = Approval::sign(&s.keys[0], "r1", OTHER, now());
        a.digest = D.to_string();
        assert!(!check(&s, vec![a]).holds());
    }

    #[test]
    fn garbage_lines_are_reported_not_fatal() {
        let s = setup(1, &[false]);
        let good = Approval::sign(&s.keys[0], "r1", D, now()).to_line();
        let (ok, bad) = parse_approvals(&format!("# comment\n\n{{nope\n{good}\n"));
        let v = verify(&s.reviewers, &ok, &bad, D);
        assert!(v.holds());
        assert!(v.ignored[0].starts_with("line 3:"), "{v:?}");
    }

    #[test]
    fn file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("postern.toml");
        let path = approvals_path(&cfg);
        assert_eq!(path, dir.path().join("postern.toml.approvals"));
        assert_eq!(load_approvals(&path).unwrap().0.len(), 0);
        let s = setup(1, &[false]);
        append_approval(&path, &Approval::sign(&s.keys[0], "r1", D, now())).unwrap();
        append_approval(&path, &Approval::sign(&s.keys[0], "r1", OTHER, now())).unwrap();
        let (ok, bad) = load_approvals(&path).unwrap();
        assert_eq!((ok.len(), bad.len()), (2, 0));
        assert_eq!(ok[1].0, 2);
    }
}
