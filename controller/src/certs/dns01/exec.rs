//! The exec provider: a user command sets and clears the TXT record, like the manual
//! hooks of other ACME clients. It is run directly (no shell) with the action and
//! the record in its environment:
//!
//! | variable | value |
//! |---|---|
//! | `EDGEMQ_ACME_ACTION` | `set` or `clear` |
//! | `EDGEMQ_ACME_DOMAIN` | the name being validated (`*.` of a wildcard kept) |
//! | `EDGEMQ_ACME_RECORD` | `_acme-challenge.<domain>` |
//! | `EDGEMQ_ACME_VALUE` | the TXT value |
//!
//! Exit status 0 means done; anything else, or running past the timeout, is an error
//! carrying the end of its standard error. The command runs in a process group of its
//! own, and past the timeout the whole group is killed, background children too.

use std::process::Stdio;
use std::time::Duration;

use crate::api::certificate::ExecProvider;

/// What the command is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add the TXT value.
    Set,
    /// Remove the TXT value.
    Clear,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Set => "set",
            Action::Clear => "clear",
        }
    }
}

/// The command and its time limit.
pub struct Exec {
    command: Vec<String>,
    timeout: Duration,
}

/// Characters of the command's standard error kept in an error message.
const STDERR_TAIL: usize = 600;

/// Why the hook could not be used or did not succeed. `hook` names the command, the
/// action and the record: ``exec hook `cmd args` (set _acme-challenge.name)``.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings name no command.
    #[error("exec: command is empty")]
    EmptyCommand,
    /// The command could not be started.
    #[error("{hook}: could not be started: {source}")]
    Start {
        /// The hook and what it was asked.
        hook: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the command or reading its output failed.
    #[error("{hook}: {source}")]
    Wait {
        /// The hook and what it was asked.
        hook: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The command ran past its time limit; its process group was killed.
    #[error("{hook}: did not finish within {seconds}s and was killed")]
    Timeout {
        /// The hook and what it was asked.
        hook: String,
        /// The limit.
        seconds: u64,
    },
    /// The command exited with a non-zero status or was killed by a signal.
    #[error("{hook}: {}", failed_text(*.code, .stderr))]
    Failed {
        /// The hook and what it was asked.
        hook: String,
        /// Exit status; `None` when a signal killed it.
        code: Option<i32>,
        /// The end of its standard error, trimmed (at most 600 characters).
        stderr: String,
    },
}

fn failed_text(code: Option<i32>, stderr: &str) -> String {
    let status = match code {
        Some(c) => format!("exited with status {c}"),
        None => "was killed by a signal".to_string(),
    };
    if stderr.is_empty() {
        status
    } else {
        format!("{status}: {stderr}")
    }
}

impl Exec {
    /// Checks the settings.
    pub fn new(p: &ExecProvider) -> Result<Exec, Error> {
        match p.command.first() {
            Some(c) if !c.is_empty() => {}
            _ => return Err(Error::EmptyCommand),
        }
        Ok(Exec {
            command: p.command.clone(),
            timeout: Duration::from_secs(p.timeout_seconds.unwrap_or(60).into()),
        })
    }

    /// Runs the command for `action` on record `record` (for `domain`) with `value`.
    pub async fn run(
        &self,
        action: Action,
        domain: &str,
        record: &str,
        value: &str,
    ) -> Result<(), Error> {
        let hook = format!(
            "exec hook `{}` ({} {record})",
            self.command.join(" "),
            action.as_str()
        );
        let child = tokio::process::Command::new(&self.command[0])
            .args(&self.command[1..])
            .env("EDGEMQ_ACME_ACTION", action.as_str())
            .env("EDGEMQ_ACME_DOMAIN", domain)
            .env("EDGEMQ_ACME_RECORD", record)
            .env("EDGEMQ_ACME_VALUE", value)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Start {
                hook: hook.clone(),
                source,
            })?;
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw);
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(source)) => return Err(Error::Wait { hook, source }),
            Err(_) => {
                if let Some(g) = group {
                    // The group is ours: the child leads it, so it exists until reaped.
                    let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
                }
                return Err(Error::Timeout {
                    hook,
                    seconds: self.timeout.as_secs(),
                });
            }
        };
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let tail: String = if stderr.chars().count() > STDERR_TAIL {
            let skip = stderr.chars().count() - STDERR_TAIL;
            format!("…{}", stderr.chars().skip(skip).collect::<String>())
        } else {
            stderr.to_string()
        };
        Err(Error::Failed {
            hook,
            code: out.status.code(),
            stderr: tail,
        })
    }
}
