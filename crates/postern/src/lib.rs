//! The `postern` binary's library half: subcommands that tests drive
//! in-process (`demo`, `explain`) and the shared config loading.

pub mod ca_cmd;
pub mod demo;
pub mod explain;
pub mod policy_cmd;

use std::path::Path;

use anyhow::bail;
use postern_policy::{Config, Diagnostic, Policy, Severity};
use time::OffsetDateTime;

/// Load and compile a config, printing every diagnostic; refuse on any error.
pub fn load_policy(path: &Path) -> anyhow::Result<(Config, Policy)> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(diags) => {
            print_diagnostics(&diags);
            bail!(
                "`{}` cannot be parsed ({} problem(s) above)",
                path.display(),
                diags.len()
            );
        }
    };
    match Policy::compile(&config, OffsetDateTime::now_utc()) {
        Ok((policy, warnings)) => {
            print_diagnostics(&warnings);
            if let Some(status) = policy_cmd::enforce(&config)? {
                tracing::info!("{}", status.verification.summary());
            }
            Ok((config, policy))
        }
        Err(diags) => {
            print_diagnostics(&diags);
            let errors = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            bail!("`{}` is refused: {errors} error(s) above", path.display());
        }
    }
}

pub fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
