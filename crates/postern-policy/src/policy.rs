//! The compiled policy: validated, typed rules and a matcher that does not
//! scan rules linearly.

use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::config::{Config, Diagnostic};

/// A webhook check, with its secret loaded.
pub struct WebhookSpec {
    pub rule: Arc<str>,
    pub signature_header: String,
    pub timestamp_header: String,
    pub tolerance_secs: u64,
    pub secret: Vec<u8>,
}

impl fmt::Debug for WebhookSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSpec")
            .field("rule", &self.rule)
            .field("signature_header", &self.signature_header)
            .field("timestamp_header", &self.timestamp_header)
            .field("tolerance_secs", &self.tolerance_secs)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The compiled, validated policy. Built once per load; shared behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    // private: routes, rules, matcher index
}

impl Policy {
    /// Validate a parsed config and compile it. `now` is the load time (for
    /// expiry checks: past expiry, expiry beyond `max_optout_days`). Reads
    /// webhook secrets (files / environment). Returns every error found, not
    /// just the first; warnings are returned alongside a successful policy.
    pub fn compile(
        config: &Config,
        now: OffsetDateTime,
    ) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
        todo!("{config:?} {now}")
    }

    /// Lint only: every diagnostic (errors and warnings), for `postern check`.
    pub fn check(config: &Config, now: OffsetDateTime) -> Vec<Diagnostic> {
        todo!("{config:?} {now}")
    }
}
