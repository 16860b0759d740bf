//! File writing with the two properties CA state needs: secrets are never readable by
//! others, even for an instant, and readers never see a half-written file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::error::PkiError;

/// Writes a private key (PEM) to `path` with mode 0600, atomically.
///
/// The file is created 0600 from the start (never chmod-ed after the fact, which would leave
/// a window where the key is world-readable), written to a temporary sibling, synced, then
/// renamed over `path`; a crash leaves either the old file or the new one, never a torn key.
pub fn write_private_key(path: impl AsRef<Path>, pem: &str) -> Result<(), PkiError> {
    write_atomic(path.as_ref(), pem.as_bytes(), 0o600)
}

/// Atomically replaces `path` with `contents` (temp file + fsync + rename + directory fsync),
/// creating it with `mode` on Unix.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| PkiError::io(path, std::io::Error::other("the path has no file name")))?;
    let mut suffix = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        hex::encode(suffix)
    ));
    let result = (|| {
        let mut file = create_new(&tmp, mode)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        // Best effort: the temp name is random, so a leftover harms nothing but tidiness.
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| PkiError::io(path, e))
}

/// Creates `path` exclusively (fails with `AlreadyExists` if anything is there) with `mode`,
/// writes `contents` and syncs file and directory. Used for files that must never replace
/// an existing one, such as a new CA's key.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let run = || -> std::io::Result<()> {
        let mut file = create_new(path, mode)?;
        file.write_all(contents)?;
        file.sync_all()?;
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
            _ => Ok(()),
        }
    };
    run().map_err(|e| PkiError::io(path, e))
}

/// Appends one line to `path` (created with `mode` if absent) and syncs it, so an issuance
/// recorded in the index survives a crash right after the certificate is handed out.
pub(crate) fn append_line(path: &Path, line: &str, mode: u32) -> Result<(), PkiError> {
    let run = || -> std::io::Result<()> {
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        set_mode(&mut options, mode);
        let mut file = options.open(path)?;
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        file.write_all(&buf)?;
        file.sync_all()
    };
    run().map_err(|e| PkiError::io(path, e))
}

fn create_new(path: &Path, mode: u32) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    set_mode(&mut options, mode);
    options.open(path)
}

#[cfg(unix)]
fn set_mode(options: &mut OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(mode);
}

#[cfg(not(unix))]
fn set_mode(_options: &mut OpenOptions, _mode: u32) {}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn private_key_file_is_mode_0600_even_when_replacing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private_key(&path, "new").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
