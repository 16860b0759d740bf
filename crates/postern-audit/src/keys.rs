//! Checkpoint signing keys: generation, PEM files, key ids.
//!
//! The signing key is stored as PKCS#8 PEM with mode 0600 and is never
//! overwritten: replacing the key that signed existing logs would make them
//! unverifiable with the published public key, so [`write_signing_key`] refuses
//! an existing path. Public keys are SPKI PEM (`-----BEGIN PUBLIC KEY-----`).

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors reading or writing key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Writing would replace an existing key file.
    #[error("key file {path} already exists; refusing to overwrite it")]
    AlreadyExists { path: PathBuf },
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a PKCS#8 PEM ed25519 private key.
    #[error("key file {path} is not a PKCS#8 PEM ed25519 private key: {reason}")]
    BadPrivateKey { path: PathBuf, reason: String },
    /// The file (or string) is not an SPKI PEM / 64-hex ed25519 public key.
    #[error("`{input}` is not an ed25519 public key (SPKI PEM file or 64 hex digits): {reason}")]
    BadPublicKey { input: String, reason: String },
    /// PEM encoding failed (not expected for valid keys).
    #[error("cannot encode key as PEM: {0}")]
    Encode(String),
}

/// A fresh signing key from the operating system's CSPRNG.
pub fn generate_signing_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// Writes `key` as PKCS#8 PEM to a new file with mode 0600 and fsyncs it.
/// Refuses to overwrite an existing file.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))?;
    write_new(path, pem.as_bytes(), 0o600)
}

/// Reads a PKCS#8 PEM ed25519 private key.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::BadPrivateKey {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes `key` as SPKI PEM (`-----BEGIN PUBLIC KEY-----`) with mode 0644.
/// Refuses to overwrite an existing file.
pub fn write_verifying_key(path: &Path, key: &VerifyingKey) -> Result<(), KeyError> {
    let pem = key
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))?;
    write_new(path, pem.as_bytes(), 0o644)
}

/// Reads a public key given either as 64 hex digits or as the path of an SPKI
/// PEM file.
pub fn read_verifying_key(path_or_hex: &str) -> Result<VerifyingKey, KeyError> {
    let bad = |reason: String| KeyError::BadPublicKey {
        input: path_or_hex.to_owned(),
        reason,
    };
    let trimmed = path_or_hex.trim();
    if trimmed.len() == 64 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(trimmed, &mut bytes).map_err(|e| bad(e.to_string()))?;
        return VerifyingKey::from_bytes(&bytes).map_err(|e| bad(e.to_string()));
    }
    let path = Path::new(path_or_hex);
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| bad(e.to_string()))
}

/// The key id written into checkpoints: the first 8 bytes of SHA-256 over the
/// 32-byte public key, as 16 lowercase hex digits.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |source: std::io::Error| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::AlreadyExists {
                    path: path.to_owned(),
                }
            } else {
                io(source)
            }
        })?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "tests panic on unexpected failures by design"
)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn signing_key_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let key = generate_signing_key();
        write_signing_key(&path, &key).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_signing_key(&path).unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn existing_key_file_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        write_signing_key(&path, &generate_signing_key()).unwrap();
        let err = write_signing_key(&path, &generate_signing_key()).unwrap_err();
        assert!(matches!(err, KeyError::AlreadyExists { .. }), "{err}");
    }

    #[test]
    fn verifying_key_reads_from_pem_file_or_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.pub");
        let key = generate_signing_key().verifying_key();
        write_verifying_key(&path, &key).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(read_verifying_key(path.to_str().unwrap()).unwrap(), key);
        assert_eq!(
            read_verifying_key(&hex::encode(key.as_bytes())).unwrap(),
            key
        );
        assert!(read_verifying_key("zz").is_err());
    }

    #[test]
    fn key_id_is_16_hex_digits_of_the_public_key_hash() {
        let key = generate_signing_key().verifying_key();
        let id = key_id(&key);
        assert_eq!(id.len(), 16);
        assert_eq!(id, hex::encode(&Sha256::digest(key.as_bytes())[..8]));
    }
}
