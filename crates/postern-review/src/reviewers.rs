//! The reviewers file (`reviewers.toml`) and reviewer keys.
//!
//! ```toml
//! quorum = 2
//!
//! [[reviewer]]
//! id = "alice"
//! name = "Alice Example"
//! public_key = "3b6a27bc…"          # 64 hex characters, or a PEM SPKI block
//!
//! [[reviewer]]
//! id = "bob"
//! name = "Bob Example"
//! public_key = """
//! -----BEGIN PUBLIC KEY-----
//! …
//! -----END PUBLIC KEY-----
//! """
//! removed = true                      # kept for history; no longer counts
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Deserialize;
use toml::Spanned;

use crate::ReviewError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    quorum: Spanned<i64>,
    #[serde(default, rename = "reviewer")]
    reviewers: Vec<Spanned<RawReviewer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReviewer {
    id: Spanned<String>,
    #[serde(default)]
    name: String,
    public_key: Spanned<String>,
    #[serde(default)]
    removed: bool,
}

/// One reviewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewer {
    pub id: String,
    pub name: String,
    pub key: VerifyingKey,
    /// A removed reviewer's approvals no longer count.
    pub removed: bool,
}

/// The parsed, validated reviewers file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewers {
    pub path: PathBuf,
    /// Distinct active reviewers needed (M); `1 <= quorum <= active reviewers`.
    pub quorum: usize,
    pub reviewers: Vec<Reviewer>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(0, |s| s.matches('\n').count())
        + 1
}

impl Reviewers {
    /// Read and validate a reviewers file.
    pub fn load(path: &Path) -> Result<Reviewers, ReviewError> {
        let text = std::fs::read_to_string(path).map_err(|e| ReviewError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Reviewers::parse(path, &text)
    }

    /// Parse and validate reviewers-file text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Reviewers, ReviewError> {
        let bad = |offset: usize, field: &str, message: String| ReviewError::File {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            field: field.to_string(),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            bad(offset, "", e.message().trim().to_string())
        })?;
        let mut reviewers = Vec::new();
        let mut ids = HashSet::new();
        let mut keys = HashSet::new();
        for (i, r) in raw.reviewers.iter().enumerate() {
            let r = r.get_ref();
            let id = r.id.get_ref().trim();
            let field = |k: &str| format!("reviewer[{i}].{k}");
            if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(
                    r.id.span().start,
                    &field("id"),
                    format!("`{id}` is not a valid reviewer id (non-empty, no spaces)"),
                ));
            }
            if !ids.insert(id.to_string()) {
                return Err(bad(
                    r.id.span().start,
                    &field("id"),
                    format!("duplicate reviewer id `{id}`"),
                ));
            }
            let key = parse_public_key(r.public_key.get_ref())
                .map_err(|m| bad(r.public_key.span().start, &field("public_key"), m))?;
            if !keys.insert(key.to_bytes()) {
                return Err(bad(
                    r.public_key.span().start,
                    &field("public_key"),
                    format!("reviewer `{id}` has the same key as another reviewer: one person, one vote"),
                ));
            }
            reviewers.push(Reviewer {
                id: id.to_string(),
                name: r.name.clone(),
                key,
                removed: r.removed,
            });
        }
        let active = reviewers.iter().filter(|r| !r.removed).count();
        let q = *raw.quorum.get_ref();
        if q < 1 {
            return Err(bad(
                raw.quorum.span().start,
                "quorum",
                format!("quorum {q}: at least one approval must be required"),
            ));
        }
        let quorum = usize::try_from(q).unwrap_or(usize::MAX);
        if quorum > active {
            return Err(bad(
                raw.quorum.span().start,
                "quorum",
                format!(
                    "quorum {q} exceeds the {active} active reviewer(s): no policy could ever load"
                ),
            ));
        }
        Ok(Reviewers {
            path: path.to_path_buf(),
            quorum,
            reviewers,
        })
    }

    /// An active (not removed) reviewer by id.
    pub fn active(&self, id: &str) -> Option<&Reviewer> {
        self.reviewers.iter().find(|r| r.id == id && !r.removed)
    }

    /// Any reviewer (active or removed) by id.
    pub fn get(&self, id: &str) -> Option<&Reviewer> {
        self.reviewers.iter().find(|r| r.id == id)
    }

    /// The reviewer holding `key`, if any.
    pub fn by_key(&self, key: &VerifyingKey) -> Option<&Reviewer> {
        self.reviewers.iter().find(|r| &r.key == key)
    }

    /// Active reviewers: id → key bytes.
    pub fn active_keys(&self) -> BTreeMap<String, [u8; 32]> {
        self.reviewers
            .iter()
            .filter(|r| !r.removed)
            .map(|r| (r.id.clone(), r.key.to_bytes()))
            .collect()
    }

    /// May a running gateway that trusts `self` switch to `new` at reload?
    /// Only if `new` gives no one more power: the quorum does not drop and
    /// every active reviewer of `new` is an active reviewer of `self` with
    /// the same key. Adding reviewers or lowering the quorum takes a restart
    /// (like replacing a CA root), so whoever can write the files cannot
    /// appoint themselves and approve their own change on a live gateway.
    pub fn may_be_replaced_by(&self, new: &Reviewers) -> Result<(), String> {
        if new.quorum < self.quorum {
            return Err(format!(
                "the reviewers file lowers the quorum from {} to {}; restart the gateway to take it",
                self.quorum, new.quorum
            ));
        }
        let old = self.active_keys();
        for (id, key) in new.active_keys() {
            if old.get(&id) != Some(&key) {
                return Err(format!(
                    "the reviewers file adds or re-keys reviewer `{id}`; restart the gateway to take it"
                ));
            }
        }
        Ok(())
    }
}

/// An ed25519 public key: 64 hex characters, or a PEM `PUBLIC KEY` (SPKI).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(t)
            .map_err(|e| format!("not an ed25519 SPKI PEM public key: {e}"));
    }
    let bytes = hex::decode(t).map_err(|_| {
        "expected 64 hex characters or a `-----BEGIN PUBLIC KEY-----` block".to_string()
    })?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("an ed25519 key is 32 bytes, got {}", bytes.len()))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| format!("not a valid ed25519 key: {e}"))
}

/// A fresh reviewer key pair.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// PKCS#8 PEM of a private key.
pub fn private_key_pem(key: &SigningKey) -> Result<String, String> {
    key.to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map(|p| p.as_str().to_string())
        .map_err(|e| e.to_string())
}

/// SPKI PEM of a public key.
pub fn public_key_pem(key: &VerifyingKey) -> Result<String, String> {
    key.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| e.to_string())
}

/// Write `<base>.key` (PKCS#8 PEM, mode 0600, never overwritten) and
/// `<base>.pub` (SPKI PEM). Returns both paths.
pub fn write_keypair(base: &Path, key: &SigningKey) -> Result<(PathBuf, PathBuf), ReviewError> {
    let mut key_path = base.as_os_str().to_owned();
    key_path.push(".key");
    let key_path = PathBuf::from(key_path);
    let mut pub_path = base.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| ReviewError::Io {
            path,
            message: e.to_string(),
        }
    };
    let pem = private_key_pem(key).map_err(|message| ReviewError::Io {
        path: key_path.clone(),
        message,
    })?;
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&key_path).map_err(io(&key_path))?;
        f.write_all(pem.as_bytes()).map_err(io(&key_path))?;
        f.sync_all().map_err(io(&key_path))?;
    }
    let public = public_key_pem(&key.verifying_key()).map_err(|message| ReviewError::Io {
        path: pub_path.clone(),
        message,
    })?;
    std::fs::write(&pub_path, public).map_err(io(&pub_path))?;
    Ok((key_path, pub_path))
}

/// Read a reviewer's private key (PKCS#8 PEM).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, ReviewError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReviewError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    SigningKey::from_pkcs8_pem(text.trim()).map_err(|e| ReviewError::Io {
        path: path.to_path_buf(),
        message: format!("not an ed25519 PKCS#8 PEM private key: {e}"),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn file(quorum: i64, keys: &[(&str, &VerifyingKey, bool)]) -> String {
        let mut s = format!("quorum = {quorum}\n");
        for (id, k, removed) in keys {
            s.push_str(&format!(
                "[[reviewer]]\nid = \"{id}\"\nname = \"{id}\"\npublic_key = \"{}\"\nremoved = {removed}\n",
                hex::encode(k.to_bytes())
            ));
        }
        s
    }

    #[test]
    fn parses_hex_and_pem_keys() {
        let a = generate_key().verifying_key();
        let b = generate_key().verifying_key();
        let pem = public_key_pem(&b).unwrap();
        let text = format!(
            "quorum = 2\n[[reviewer]]\nid = \"a\"\nname = \"A\"\npublic_key = \"{}\"\n[[reviewer]]\nid = \"b\"\nname = \"B\"\npublic_key = \"\"\"\n{pem}\"\"\"\n",
            hex::encode(a.to_bytes())
        );
        let r = Reviewers::parse(Path::new("reviewers.toml"), &text).unwrap();
        assert_eq!(r.quorum, 2);
        assert_eq!(r.active("b").unwrap().key, b);
        assert_eq!(r.by_key(&a).unwrap().id, "a");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let a = generate_key().verifying_key();
        let text = file(1, &[("a", &a, false)]).replace(&hex::encode(a.to_bytes()), "zz");
        let e = Reviewers::parse(Path::new("r.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("r.toml:5:"), "{e}");
        assert!(e.contains("reviewer[0].public_key"), "{e}");

        let e = Reviewers::parse(Path::new("r.toml"), &file(2, &[("a", &a, false)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.toml:1:") && e.contains("quorum"), "{e}");

        let b = generate_key().verifying_key();
        let e = Reviewers::parse(
            Path::new("r.toml"),
            &file(1, &[("a", &a, false), ("a", &b, false)]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("duplicate reviewer id"), "{e}");
        let e = Reviewers::parse(
            Path::new("r.toml"),
            &file(1, &[("a", &a, false), ("b", &a, false)]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("same key"), "{e}");
        let e = Reviewers::parse(Path::new("r.toml"), "quorum = 1\nquorom = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.toml:2:"), "{e}");
    }

    #[test]
    fn removed_reviewers_do_not_count_toward_the_possible_quorum() {
        let a = generate_key().verifying_key();
        let b = generate_key().verifying_key();
        assert!(Reviewers::parse(
            Path::new("r"),
            &file(2, &[("a", &a, false), ("b", &b, true)])
        )
        .is_err());
    }

    #[test]
    fn replacement_may_only_narrow() {
        let a = generate_key().verifying_key();
        let b = generate_key().verifying_key();
        let c = generate_key().verifying_key();
        let p = |t: String| Reviewers::parse(Path::new("r"), &t).unwrap();
        let old = p(file(1, &[("a", &a, false), ("b", &b, false)]));
        assert!(old
            .may_be_replaced_by(&p(file(1, &[("a", &a, false), ("b", &b, true)])))
            .is_ok());
        assert!(old
            .may_be_replaced_by(&p(file(2, &[("a", &a, false), ("b", &b, false)])))
            .is_ok());
        assert!(old
            .may_be_replaced_by(&p(file(1, &[("a", &a, false), ("c", &c, false)])))
            .is_err());
        assert!(old
            .may_be_replaced_by(&p(file(1, &[("a", &a, false), ("b", &c, false)])))
            .is_err());
        let two = p(file(2, &[("a", &a, false), ("b", &b, false)]));
        assert!(two.may_be_replaced_by(&old).is_err());
    }

    #[test]
    fn keypair_files() {
        let dir = tempfile::tempdir().unwrap();
        let k = generate_key();
        let (kp, pp) = write_keypair(&dir.path().join("rev"), &k).unwrap();
        assert_eq!(read_signing_key(&kp).unwrap().to_bytes(), k.to_bytes());
        let public = std::fs::read_to_string(&pp).unwrap();
        assert_eq!(parse_public_key(&public).unwrap(), k.verifying_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&kp).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(
            write_keypair(&dir.path().join("rev"), &k).is_err(),
            "never overwrites"
        );
    }
}
