//! Invariant 6: changing an opt-out is as hard as changing a CA root.
//!
//! - [`digest`]: a canonical digest of everything that decides what the
//!   opt-outs let through (reformatting, reordering, comments and upstream
//!   addresses do not change it; any widening does);
//! - [`reviewers`]: the reviewers file (`quorum = M`, reviewers with ed25519
//!   keys, removable) and reviewer key files;
//! - [`approvals`]: signatures over the digest, and their verification
//!   (M distinct, known, active reviewers over the *current* digest);
//! - [`diff`]: what changed between two configs' opt-outs, in words an
//!   approver can judge.
//!
//! Pure except for the thin `load`/`write` functions and [`check_config`].

pub mod approvals;
pub mod diff;
pub mod digest;
pub mod reviewers;

use std::path::PathBuf;

pub use approvals::{approvals_path, Approval, Verification};
pub use digest::{digest, Canonical};
pub use reviewers::{Reviewer, Reviewers};

use postern_policy::Config;

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{}:{line}: `{field}`: {message}", path.display())]
    File {
        path: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
}

/// What a config's `[review]` section says about it.
#[derive(Debug, Clone)]
pub struct ReviewStatus {
    pub reviewers: Reviewers,
    pub verification: Verification,
}

/// For a config with `[review]`: load its reviewers file and approvals
/// (`<config>.approvals`) and count the approvals of its current opt-out
/// digest. `Ok(None)` when the config has no `[review]` section.
pub fn check_config(config: &Config) -> Result<Option<ReviewStatus>, ReviewError> {
    let Some(review) = &config.review else {
        return Ok(None);
    };
    let reviewers = Reviewers::load(&config.resolve(&review.reviewers))?;
    let (approvals, bad) = approvals::load_approvals(&approvals_path(&config.source.path))?;
    let verification = approvals::verify(&reviewers, &approvals, &bad, &digest(config));
    Ok(Some(ReviewStatus {
        reviewers,
        verification,
    }))
}
