//! The `git` command, at the edge: a bare mirror fetched from the remote, the new
//! commits with their signature checks, and a tree checked out into a fresh folder.
//!
//! Why the `git` command: it is what users have, it speaks every transport (HTTPS,
//! SSH, git://, file://) with the user's credential helpers and SSH configuration, and
//! its `%G?` check of SSH signatures runs OpenSSH's `ssh-keygen -Y verify` against the
//! allowed-signers file: a maintained implementation, no crypto of our own.
//!
//! Every invocation pins the settings that decide safety, whatever the user's git
//! configuration says: OpenPGP and X.509 verifiers are disabled (only SSH signatures
//! from the allowed signers count), objects are checked on fetch, hooks never run, and
//! symlinks in a tree are checked out as plain files (a revision cannot reach files
//! outside its own tree).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::decide::{NewCommit, Signature};

/// A failed git invocation.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// git could not be started.
    #[error("cannot run git: {0} (is git installed?)")]
    Spawn(#[from] std::io::Error),
    /// git ran and failed.
    #[error("git {command}: {stderr}")]
    Failed {
        /// The subcommand.
        command: String,
        /// The last lines git printed.
        stderr: String,
    },
    /// git did not finish in time.
    #[error("git {0}: no answer within {1:?}")]
    Timeout(String, Duration),
}

/// How long a fetch may take before it is abandoned (and retried at the next poll).
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a local git command may take.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(120);

/// The ref the remote's branch is fetched into.
pub const REMOTE_REF: &str = "refs/edgemq/remote";
/// The ref that keeps the applied commit reachable in the mirror.
pub const APPLIED_REF: &str = "refs/edgemq/applied";

/// A bare mirror and the allowed signers its commits are checked against.
#[derive(Clone, Debug)]
pub struct Mirror {
    git_dir: PathBuf,
    allowed_signers: PathBuf,
}

impl Mirror {
    /// The mirror at `git_dir` (made by [`Mirror::init`]).
    pub fn new(git_dir: PathBuf, allowed_signers: PathBuf) -> Mirror {
        Mirror {
            git_dir,
            allowed_signers,
        }
    }

    async fn git(
        &self,
        args: &[&str],
        env: &[(&str, &OsStr)],
        timeout: Duration,
    ) -> Result<String, GitError> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("--git-dir")
            .arg(&self.git_dir)
            .arg("-c")
            .arg(format!(
                "gpg.ssh.allowedSignersFile={}",
                self.allowed_signers.display()
            ));
        for c in [
            "gpg.ssh.program=ssh-keygen",
            "gpg.openpgp.program=false",
            "gpg.x509.program=false",
            "log.showSignature=false",
            "transfer.fsckObjects=true",
            "core.hooksPath=/dev/null",
            "core.symlinks=false",
        ] {
            cmd.arg("-c").arg(c);
        }
        cmd.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let name = args.first().copied().unwrap_or_default().to_string();
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| GitError::Timeout(name.clone(), timeout))??;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            // From the first error line on (progress and hints before it say little).
            let first = lines
                .iter()
                .position(|l| l.starts_with("fatal:") || l.starts_with("error:"))
                .unwrap_or(0);
            return Err(GitError::Failed {
                command: name,
                stderr: lines[first..]
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Makes the bare mirror if it is not there yet.
    pub async fn init(&self) -> Result<(), GitError> {
        if self.git_dir.join("HEAD").is_file() {
            return Ok(());
        }
        let mut cmd = tokio::process::Command::new("git");
        let out = cmd
            .args(["init", "--quiet", "--bare"])
            .arg(&self.git_dir)
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            return Err(GitError::Failed {
                command: "init".into(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Fetches `branch` of `url` into [`REMOTE_REF`] (forced: a rewound remote is seen,
    /// and refused by the caller) and returns the commit it points to. `credentials`
    /// reach git through its environment only (never argv, never the URL).
    pub async fn fetch(
        &self,
        url: &str,
        branch: &str,
        credentials: &Credentials,
    ) -> Result<String, GitError> {
        let refspec = format!("+refs/heads/{branch}:{REMOTE_REF}");
        let env = credentials.env(url).map_err(|stderr| GitError::Failed {
            command: "fetch".into(),
            stderr,
        })?;
        let env: Vec<(&str, &OsStr)> = env
            .iter()
            .map(|(k, v)| (*k, OsStr::new(v.as_str())))
            .collect();
        self.git(
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--",
                url,
                &refspec,
            ],
            &env,
            FETCH_TIMEOUT,
        )
        .await?;
        self.resolve(REMOTE_REF)
            .await?
            .ok_or_else(|| GitError::Failed {
                command: "fetch".into(),
                stderr: format!("branch {branch} not found"),
            })
    }

    /// The commit a ref points to, if it exists.
    pub async fn resolve(&self, name: &str) -> Result<Option<String>, GitError> {
        match self
            .git(
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("{name}^{{commit}}"),
                ],
                &[],
                LOCAL_TIMEOUT,
            )
            .await
        {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(GitError::Failed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Points `name` at `commit`.
    pub async fn set_ref(&self, name: &str, commit: &str) -> Result<(), GitError> {
        self.git(&["update-ref", name, commit], &[], LOCAL_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// Whether `descendant` descends from (or is) `ancestor`.
    pub async fn descends(&self, ancestor: &str, descendant: &str) -> Result<bool, GitError> {
        match self
            .git(
                &["merge-base", "--is-ancestor", ancestor, descendant],
                &[],
                LOCAL_TIMEOUT,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(GitError::Failed { stderr, .. }) if stderr.is_empty() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The commits reachable from `head` but not from `applied`, parents first, each
    /// with its signature checked (with nothing applied: the head alone).
    pub async fn new_commits(
        &self,
        applied: Option<&str>,
        head: &str,
    ) -> Result<Vec<NewCommit>, GitError> {
        let format = "--format=%H%x1f%G?%x1f%GS%x1f%GK%x1f%ct%x1e";
        let out = match applied {
            Some(a) => {
                let range = format!("{a}..{head}");
                self.git(
                    &["log", "--topo-order", "--reverse", format, &range, "--"],
                    &[],
                    LOCAL_TIMEOUT,
                )
                .await?
            }
            None => {
                self.git(
                    &["log", "--no-walk", format, head, "--"],
                    &[],
                    LOCAL_TIMEOUT,
                )
                .await?
            }
        };
        let descendants: BTreeSet<String> = match applied {
            Some(a) => self
                .git(
                    &["rev-list", "--ancestry-path", &format!("{a}..{head}"), "--"],
                    &[],
                    LOCAL_TIMEOUT,
                )
                .await?
                .lines()
                .map(str::to_string)
                .collect(),
            None => BTreeSet::new(),
        };
        Ok(parse_log(&out, &descendants))
    }

    /// Writes the tree of `commit` into the new folder `dir` (never a folder in use).
    pub async fn checkout(&self, commit: &str, dir: &Path) -> Result<(), GitError> {
        std::fs::create_dir_all(dir)?;
        let index = dir.with_extension("index");
        let work_tree = dir.display().to_string();
        let r = self
            .git(
                &[
                    "--work-tree",
                    &work_tree,
                    "read-tree",
                    "--reset",
                    "-u",
                    commit,
                ],
                &[("GIT_INDEX_FILE", index.as_os_str())],
                LOCAL_TIMEOUT,
            )
            .await;
        let _ = std::fs::remove_file(&index);
        r.map(|_| ())
    }
}

/// How fetches authenticate: an SSH key and known hosts for SSH remotes, a
/// `username:password` file for HTTP(S) remotes. Files are read at each fetch (a
/// rotated password or key is used at the next poll).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Private key for SSH remotes (`ssh -i`, no other identity, no agent).
    pub ssh_key: Option<PathBuf>,
    /// The only known_hosts file SSH trusts (host keys are always checked).
    pub known_hosts: Option<PathBuf>,
    /// File holding one line `username:password` (a token in place of the password)
    /// sent as HTTP basic authentication to HTTP(S) remotes.
    pub http_basic: Option<PathBuf>,
}

/// Whether git fetches `url` over HTTP(S).
pub fn is_http(url: &str) -> bool {
    let l = url.to_ascii_lowercase();
    l.starts_with("https://") || l.starts_with("http://")
}

/// Whether `url` is plain `http://` to a host other than loopback (a password sent
/// there crosses the network in clear).
pub fn is_plain_http_off_host(url: &str) -> bool {
    let l = url.to_ascii_lowercase();
    let Some(rest) = l.strip_prefix("http://") else {
        return false;
    };
    // The authority ends at the first `/`, `?` or `#` (RFC 3986): a `?@127.0.0.1`
    // further on names no host.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    !matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// `s` quoted for the shell git runs `GIT_SSH_COMMAND` with.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Credentials {
    /// Environment for a fetch of `url` (the error names the file that failed).
    pub fn env(&self, url: &str) -> Result<Vec<(&'static str, String)>, String> {
        let mut env = Vec::new();
        if self.ssh_key.is_some() || self.known_hosts.is_some() {
            let mut cmd = String::from(
                "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UpdateHostKeys=no",
            );
            if let Some(k) = &self.ssh_key {
                cmd.push_str(&format!(
                    " -o IdentitiesOnly=yes -o IdentityAgent=none -i {}",
                    sh_quote(&k.display().to_string())
                ));
            }
            if let Some(h) = &self.known_hosts {
                cmd.push_str(&format!(
                    " -o GlobalKnownHostsFile=/dev/null -o UserKnownHostsFile={}",
                    sh_quote(&h.display().to_string())
                ));
            }
            env.push(("GIT_SSH_COMMAND", cmd));
            env.push(("GIT_SSH_VARIANT", "ssh".to_string()));
        }
        if let (Some(file), true) = (&self.http_basic, is_http(url)) {
            let header = basic_header(file)?;
            // Through the environment (GIT_CONFIG_*): not in argv, not in the URL.
            // Redirects are not followed, so the header reaches only this remote.
            env.push(("GIT_CONFIG_COUNT", "2".into()));
            env.push(("GIT_CONFIG_KEY_0", "http.extraHeader".into()));
            env.push(("GIT_CONFIG_VALUE_0", header));
            env.push(("GIT_CONFIG_KEY_1", "http.followRedirects".into()));
            env.push(("GIT_CONFIG_VALUE_1", "false".into()));
        }
        Ok(env)
    }

    /// Checks that every file named can be read (at start, for a clear error).
    pub fn check(&self) -> Result<(), String> {
        for (flag, f) in [
            ("--git-ssh-key", &self.ssh_key),
            ("--git-known-hosts", &self.known_hosts),
        ] {
            if let Some(f) = f {
                std::fs::File::open(f).map_err(|e| format!("{flag} {}: {e}", f.display()))?;
            }
        }
        if let Some(f) = &self.known_hosts {
            // ssh reads whitespace in UserKnownHostsFile as a list of files.
            if f.display().to_string().contains(char::is_whitespace) {
                return Err(format!(
                    "--git-known-hosts {}: a path without spaces, please",
                    f.display()
                ));
            }
        }
        if let Some(f) = &self.http_basic {
            basic_header(f).map(|_| ())?;
        }
        Ok(())
    }
}

/// `Authorization: Basic …` from a file of one line `username:password`.
fn basic_header(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("--git-credentials {}: {e}", file.display()))?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    match line.and_then(|l| l.split_once(':')) {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )),
        _ => Err(format!(
            "--git-credentials {}: expected one line username:password (a token in place of the password)",
            file.display()
        )),
    }
}

/// Parses `git log` output of [`Mirror::new_commits`]'s format.
fn parse_log(out: &str, descendants: &BTreeSet<String>) -> Vec<NewCommit> {
    out.split('\x1e')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .filter_map(|record| {
            let f: Vec<&str> = record.split('\x1f').collect();
            let [id, code, signer, key, time] = f[..] else {
                return None;
            };
            let code = code.chars().next().unwrap_or('E');
            let signature = match code {
                'G' if !signer.is_empty() => Signature::Good {
                    signer: signer.to_string(),
                },
                'N' => Signature::Unsigned,
                'G' | 'U' => Signature::UnknownKey {
                    key: if key.is_empty() {
                        "(unknown)".into()
                    } else {
                        key.to_string()
                    },
                },
                other => Signature::Bad { code: other },
            };
            Some(NewCommit {
                id: id.to_string(),
                signature,
                descends: descendants.contains(id),
                time: time.parse().unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_reach_git_through_the_environment_only() {
        let dir = std::env::temp_dir().join(format!("edgemq-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cred");
        std::fs::write(&file, "\nbot:s3cr:et\n").unwrap();
        let c = Credentials {
            ssh_key: Some(dir.join("it's key")),
            known_hosts: Some(dir.join("kh")),
            http_basic: Some(file.clone()),
        };
        let env = c.env("https://git.example.com/f.git").unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("GIT_CONFIG_VALUE_0").unwrap(),
            format!(
                "Authorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode("bot:s3cr:et")
            )
        );
        assert_eq!(get("GIT_CONFIG_VALUE_1").unwrap(), "false");
        let ssh = get("GIT_SSH_COMMAND").unwrap();
        assert!(ssh.contains("-o StrictHostKeyChecking=yes"), "{ssh}");
        assert!(ssh.contains("-o IdentitiesOnly=yes"), "{ssh}");
        assert!(
            ssh.contains(&format!("-i '{}/it'\\''s key'", dir.display())),
            "{ssh}"
        );
        assert!(ssh.contains(&format!("UserKnownHostsFile='{}/kh'", dir.display())));
        std::fs::write(dir.join("kh"), "").unwrap();
        std::fs::write(dir.join("it's key"), "").unwrap();
        assert_eq!(c.check(), Ok(()));
        let spaced = Credentials {
            known_hosts: Some(dir.join("it's key")),
            ..Default::default()
        };
        assert!(spaced.check().unwrap_err().contains("without spaces"));
        // Not an HTTP remote: no password header.
        let env = c.env("ssh://git@git.example.com/f.git").unwrap();
        assert!(env.iter().all(|(k, _)| !k.starts_with("GIT_CONFIG")));
        std::fs::write(&file, "token-without-user\n").unwrap();
        let e = c.env("https://h/f.git").unwrap_err();
        assert!(e.contains("expected one line username:password"), "{e}");
        assert!(is_plain_http_off_host("http://git.example.com/f.git"));
        assert!(!is_plain_http_off_host("http://127.0.0.1:8080/f.git"));
        assert!(!is_plain_http_off_host("http://u@[::1]:80/f.git"));
        assert!(!is_plain_http_off_host("https://git.example.com/f.git"));
        assert!(is_plain_http_off_host(
            "http://git.example.com?@127.0.0.1/f.git"
        ));
        assert!(is_plain_http_off_host(
            "http://git.example.com#@localhost/f.git"
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn log_records_become_signature_verdicts() {
        let out = "a\x1fG\x1falice@example.com\x1fSHA256:k\x1f10\x1e\nb\x1fN\x1f\x1f\x1f11\x1e\nc\x1fU\x1f\x1fSHA256:m\x1f12\x1e\nd\x1fB\x1f\x1f\x1f13\x1e\n";
        let desc = ["a".to_string(), "c".to_string()].into_iter().collect();
        let v = parse_log(out, &desc);
        assert_eq!(v.len(), 4);
        assert_eq!(
            v[0].signature,
            Signature::Good {
                signer: "alice@example.com".into()
            }
        );
        assert!(v[0].descends && !v[1].descends);
        assert_eq!(v[0].time, 10);
        assert_eq!(v[1].signature, Signature::Unsigned);
        assert_eq!(
            v[2].signature,
            Signature::UnknownKey {
                key: "SHA256:m".into()
            }
        );
        assert_eq!(v[3].signature, Signature::Bad { code: 'B' });
    }
}
