//! Path normalization: one form, used for matching AND forwarding.
//!
//! The path that matched a rule is exactly the path sent upstream, so no
//! parser differential can exist between postern and the upstream.

use std::fmt;

/// A path in postern's one normal form: starts with `/`, no empty or dot
/// segments, unreserved characters decoded, every other percent-escape kept
/// with upper-case hex, valid UTF-8. Case is preserved (paths are
/// case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NormalizedPath(String);

impl NormalizedPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a path was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("the path is empty or does not start with `/`")]
    NotOriginForm,
    #[error("the request target contains a raw `#`")]
    Fragment,
    #[error("the path contains an encoded `/` or `\\` (possibly double-encoded)")]
    EncodedSeparator,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a NUL or control character")]
    ControlCharacter,
    #[error("the path contains a malformed percent-escape")]
    BadPercentEncoding,
    #[error("the path decodes to invalid UTF-8")]
    InvalidUtf8,
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
    #[error("a path segment is a dot segment with parameters (`..;`)")]
    DotSegmentWithParams,
    #[error("the path contains a character not allowed in a URI path")]
    InvalidCharacter,
}

/// Normalize the path part of a request target (no query).
pub fn normalize_path(raw: &str) -> Result<NormalizedPath, PathError> {
    todo!("{raw}")
}

/// Split an origin-form request target into normalized path and raw query
/// (the query is forwarded unchanged and never takes part in path matching).
pub fn split_target(target: &str) -> Result<(NormalizedPath, Option<&str>), PathError> {
    todo!("{target}")
}
