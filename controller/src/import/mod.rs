//! Importing: another broker's configuration turned into an edgemq folder.
//!
//! ```text
//!  mosquitto.conf ──► mosquitto::conf (read: include_dir, the files it names; parse,
//!   (+ passwd, acl,       │             file:line of every directive)
//!    cert files)          ▼
//!                    mosquitto::map (pure: directives + file contents → Broker,
//!                         │          MqttUsers, Bridges, Secrets, and every loss)
//!                         ▼
//!                    write (YAML: objects into the config folder, Secrets alone into
//!                           the secrets folder, 0600)
//! ```
//!
//! Nothing is written when a file cannot be read or is malformed, and nothing is
//! written when something cannot be carried over unless the caller accepts the loss.

pub mod mosquitto;
pub mod write;

use std::fmt;
use std::path::PathBuf;

/// A place in an input file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// The file, as named (absolute, or relative to the working directory).
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Something the input says that the output cannot say.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Loss {
    /// Where the input says it.
    pub pos: Pos,
    /// The directive or line, as written (secrets masked).
    pub what: String,
    /// Why it is not carried over.
    pub reason: String,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}`: {}", self.pos, self.what, self.reason)
    }
}

/// A file that cannot be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read.
    #[error("{file}: {source}{}", .by.as_ref().map(|p| format!(" (named at {p})")).unwrap_or_default())]
    Read {
        /// The file.
        file: PathBuf,
        /// The directive naming it, if any.
        by: Option<Pos>,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not valid in its file.
    #[error("{pos}: {message}")]
    Malformed {
        /// Where.
        pos: Pos,
        /// What is wrong.
        message: String,
    },
    /// A file holds something it must not (a certificate file without a PEM
    /// certificate, say).
    #[error("{file}: {message}{}", .by.as_ref().map(|p| format!(" (named at {p})")).unwrap_or_default())]
    BadFile {
        /// The file.
        file: PathBuf,
        /// The directive naming it.
        by: Option<Pos>,
        /// What is wrong.
        message: String,
    },
    /// Writing the output failed.
    #[error("{path}: {message}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}
