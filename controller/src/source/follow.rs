//! `edgemq run --git URL`: follows a branch of a repository into the state directory.
//!
//! Layout of `<state>/git` (mode 0700; nothing in it is edited by people):
//!
//! ```text
//!  mirror.git/        bare mirror (refs/edgemq/remote: the remote's head as fetched,
//!                     refs/edgemq/applied: the commit running)
//!  trees/<commit>/    the tree of a commit, checked out once, never changed
//!  current -> trees/<commit>     swapped with one rename; --config is current/<path>
//!  applied.json       the applied commit, its signer and time (survives restarts)
//! ```
//!
//! Each poll (and SIGHUP): fetch, check every new commit ([`super::decide`]), write
//! the chosen one's tree into a fresh folder, record it, swap `current`, ask for a
//! reload. The broker starts from `current` without the network.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use super::decide::{self, short, Refusal, RefusalReason};
use super::git::{Credentials, Mirror, APPLIED_REF};

/// Settings of `edgemq run --git`.
#[derive(Clone, Debug)]
pub struct GitOptions {
    /// The repository (any URL or path git accepts), then fallbacks: each poll tries
    /// them in order and takes the branch from the first that answers.
    pub urls: Vec<String>,
    /// The branch followed.
    pub branch: String,
    /// The folder of manifests inside the repository (`.`: its root).
    pub path: PathBuf,
    /// Time between fetches.
    pub interval: Duration,
    /// The allowed-signers file (OpenSSH format) every new commit is checked against.
    pub allowed_signers: PathBuf,
    /// How fetches authenticate (SSH key and known hosts, HTTP basic).
    pub credentials: Credentials,
}

/// The applied commit, as recorded in `applied.json`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// Commit id.
    pub commit: String,
    /// The principal whose signature was accepted.
    pub signer: String,
    /// Committer time, Unix seconds.
    pub commit_time: i64,
    /// When it was switched to (RFC 3339).
    pub applied_at: String,
}

/// What `edgemq status` and `/status` show about the repository.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitStatus {
    /// The repository (the first remote), without any password in its URL.
    pub url: String,
    /// Every remote, in the order tried (with fallbacks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<String>,
    /// The remote that answered the last successful fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_from: Option<String>,
    /// Remotes that failed in the last poll before one answered (`url: error`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_errors: Vec<String>,
    /// The branch followed.
    pub branch: String,
    /// The folder inside the repository.
    pub path: String,
    /// The commit running, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    /// The remote's head at the last successful fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_head: Option<String>,
    /// When the last fetch ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_at: Option<String>,
    /// Why the last fetch failed (none: it worked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_error: Option<String>,
    /// The commit that stops the update now, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

/// Label of the refusal counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `not_fast_forward`, `unsigned`, `unknown_signer`, `bad_signature` or `checkout`.
    pub reason: String,
}

/// Metrics of the followed repository.
#[derive(Default)]
pub struct GitMetrics {
    /// Committer time of the applied commit, Unix seconds.
    pub applied_commit_timestamp: Gauge,
    /// Fetches attempted.
    pub fetches: Counter,
    /// Fetches that failed (every remote failed).
    pub fetch_failures: Counter,
    /// Remotes that failed, fallbacks tried after them or not.
    pub remote_failures: Counter,
    /// Commits refused, by reason (counted once per remote head).
    pub refusals: Family<ReasonLabel, Counter>,
}

impl GitMetrics {
    /// Registers under the `edgemq_git_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("edgemq_git");
        r.register(
            "applied_commit_timestamp",
            "Committer time of the applied commit, Unix seconds",
            self.applied_commit_timestamp.clone(),
        );
        r.register(
            "fetches",
            "Fetches of the remote attempted",
            self.fetches.clone(),
        );
        r.register(
            "fetch_failures",
            "Fetches that failed on every remote",
            self.fetch_failures.clone(),
        );
        r.register(
            "remote_failures",
            "Fetches from one remote that failed (a fallback may have answered)",
            self.remote_failures.clone(),
        );
        r.register(
            "refusals",
            "Commits refused (not a fast-forward, unsigned, unknown signer, bad signature, checkout), once per remote head",
            self.refusals.clone(),
        );
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `scheme://user:password@host/...` without the password.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// Makes `dir` (and its parents) and restricts it to the owner.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Points `link` at `target` with one rename: a reader sees the old or the new tree.
fn swap_symlink(link: &Path, target: &Path) -> std::io::Result<()> {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

/// Follows a repository into the state directory.
pub struct Follower {
    opts: GitOptions,
    dir: PathBuf,
    mirror: Mirror,
    status: Arc<Mutex<GitStatus>>,
    metrics: Arc<GitMetrics>,
    /// The remote head of the last decision (a poll with the same head decides nothing).
    decided: Option<String>,
}

/// A failure to set the follower up.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The state directory.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// git.
    #[error(transparent)]
    Git(#[from] super::git::GitError),
    /// The allowed-signers file.
    #[error("allowed signers {0}: {1}")]
    Signers(PathBuf, std::io::Error),
    /// A credentials file.
    #[error("{0}")]
    Credentials(String),
}

impl Follower {
    /// Sets up `<state>/git` and restores the applied revision (no network).
    pub async fn open(
        state_dir: &Path,
        opts: GitOptions,
        metrics: Arc<GitMetrics>,
    ) -> Result<Follower, FollowError> {
        let dir = state_dir.join("git");
        private_dir(&dir.join("trees")).map_err(|e| FollowError::Io(dir.clone(), e))?;
        private_dir(&dir).map_err(|e| FollowError::Io(dir.clone(), e))?;
        let signers = std::fs::canonicalize(&opts.allowed_signers)
            .map_err(|e| FollowError::Signers(opts.allowed_signers.clone(), e))?;
        std::fs::read(&signers).map_err(|e| FollowError::Signers(signers.clone(), e))?;
        opts.credentials.check().map_err(FollowError::Credentials)?;
        let mirror = Mirror::new(dir.join("mirror.git"), signers);
        mirror.init().await?;
        let applied: Option<Applied> = std::fs::read(dir.join("applied.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let f = Follower {
            status: Arc::new(Mutex::new(GitStatus {
                url: opts.urls.first().map(|u| redact(u)).unwrap_or_default(),
                remotes: if opts.urls.len() > 1 {
                    opts.urls.iter().map(|u| redact(u)).collect()
                } else {
                    Vec::new()
                },
                branch: opts.branch.clone(),
                path: opts.path.display().to_string(),
                applied: applied.clone(),
                ..Default::default()
            })),
            opts,
            dir,
            mirror,
            metrics,
            decided: None,
        };
        match applied {
            Some(a) => {
                f.restore(&a).await?;
                f.metrics.applied_commit_timestamp.set(a.commit_time);
                tracing::info!(commit = %a.commit, signer = %a.signer, "starting from the applied git revision");
            }
            None => {
                // Nothing applied yet: an empty folder until the first good commit.
                let empty = f.dir.join("trees").join("empty");
                let folder = empty.join(&f.opts.path);
                std::fs::create_dir_all(&folder).map_err(|e| FollowError::Io(folder, e))?;
                swap_symlink(&f.dir.join("current"), Path::new("trees/empty"))
                    .map_err(|e| FollowError::Io(f.dir.join("current"), e))?;
            }
        }
        Ok(f)
    }

    /// Makes `current` lead to the applied commit's tree (checked out again from the
    /// mirror if it went missing, as after a crash between recording and swapping).
    async fn restore(&self, a: &Applied) -> Result<(), FollowError> {
        let tree = self.dir.join("trees").join(&a.commit);
        if !tree.is_dir() {
            let tmp = self.dir.join("trees").join(format!("{}.tmp", a.commit));
            let _ = std::fs::remove_dir_all(&tmp);
            self.mirror.checkout(&a.commit, &tmp).await?;
            std::fs::rename(&tmp, &tree).map_err(|e| FollowError::Io(tree.clone(), e))?;
        }
        let target = Path::new("trees").join(&a.commit);
        if std::fs::read_link(self.dir.join("current")).ok().as_deref() != Some(&target) {
            swap_symlink(&self.dir.join("current"), &target)
                .map_err(|e| FollowError::Io(self.dir.join("current"), e))?;
        }
        Ok(())
    }

    /// The folder `edgemq run` reads: `<state>/git/current/<path>`.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("current").join(&self.opts.path)
    }

    /// The status shown in reports.
    pub fn status(&self) -> Arc<Mutex<GitStatus>> {
        self.status.clone()
    }

    fn update(&self, f: impl FnOnce(&mut GitStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn applied(&self) -> Option<Applied> {
        self.status.lock().ok().and_then(|s| s.applied.clone())
    }

    /// Fetches from the first remote that answers: its head and URL, and the errors
    /// of the remotes tried before it (all errors when none answered).
    async fn fetch(&self) -> (Option<(String, String)>, Vec<String>) {
        let mut errors = Vec::new();
        for url in &self.opts.urls {
            match self
                .mirror
                .fetch(url, &self.opts.branch, &self.opts.credentials)
                .await
            {
                Ok(head) => return (Some((head, redact(url))), errors),
                Err(e) => {
                    self.metrics.remote_failures.inc();
                    let e = e.to_string().replace(url.as_str(), &redact(url));
                    let e = if self.opts.urls.len() > 1 {
                        format!("{}: {e}", redact(url))
                    } else {
                        e
                    };
                    tracing::warn!(error = %e, "git fetch failed");
                    errors.push(e);
                }
            }
        }
        (None, errors)
    }

    /// One poll: fetch, decide, switch. True when a new revision was switched to.
    pub async fn sync(&mut self) -> bool {
        self.metrics.fetches.inc();
        let (fetched, errors) = self.fetch().await;
        let now = now_rfc3339();
        let Some((head, from)) = fetched else {
            self.metrics.fetch_failures.inc();
            tracing::warn!("git fetch failed on every remote; the applied revision keeps running");
            self.update(|s| {
                s.last_fetch_at = Some(now);
                s.last_fetch_error = Some(errors.join("; "));
                s.remote_errors = Vec::new();
            });
            return false;
        };
        self.update(|s| {
            s.last_fetch_at = Some(now);
            s.last_fetch_error = None;
            s.remote_head = Some(head.clone());
            s.fetched_from = Some(from);
            s.remote_errors = errors;
        });
        if self.decided.as_deref() == Some(head.as_str()) {
            return false;
        }
        let (switched, settled) = match self.decide_and_apply(&head).await {
            Ok(s) => s,
            Err(e) => {
                // Not a verdict on the commit: tried again at the next poll.
                tracing::warn!(error = %e, "git: could not check the new commits");
                return false;
            }
        };
        // A checkout that failed (a git error, a full disk) is tried again at the next
        // poll; a verdict on the commits is not.
        if settled {
            self.decided = Some(head);
        }
        switched
    }

    /// Whether it switched, and whether the head is settled (applied or refused for
    /// what its commits are, not for a failed checkout).
    async fn decide_and_apply(&mut self, head: &str) -> Result<(bool, bool), FollowError> {
        let applied = self.applied().map(|a| a.commit);
        let descends = match &applied {
            Some(a) => self.mirror.descends(a, head).await?,
            None => false,
        };
        let new = if applied.is_none() || descends {
            self.mirror.new_commits(applied.as_deref(), head).await?
        } else {
            Vec::new()
        };
        let decision = decide::decide(applied.as_deref(), head, descends, &new);
        let mut refused = decision.refused;
        let mut switched = false;
        let mut settled = true;
        if let Some((commit, signer, time)) = decision.apply {
            match self.switch(&commit, &signer, time).await {
                Ok(()) => switched = true,
                Err(why) => {
                    settled = false;
                    refused = Some(Refusal {
                        commit: commit.clone(),
                        reason: RefusalReason::Checkout,
                        message: format!("commit {} not applied: {why}", short(&commit)),
                    })
                }
            }
        }
        if let Some(r) = &refused {
            self.metrics
                .refusals
                .get_or_create(&ReasonLabel {
                    reason: r.reason.label().into(),
                })
                .inc();
            tracing::error!(commit = %r.commit, reason = r.reason.label(), "{}", r.message);
        }
        self.update(|s| s.refused = refused);
        Ok((switched, settled))
    }

    /// Checks `commit` out into a fresh folder, records it, then swaps `current`.
    async fn switch(&self, commit: &str, signer: &str, time: i64) -> Result<(), String> {
        let trees = self.dir.join("trees");
        let tree = trees.join(commit);
        let tmp = trees.join(format!("{commit}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        self.mirror
            .checkout(commit, &tmp)
            .await
            .map_err(|e| e.to_string())?;
        if !tmp.join(&self.opts.path).is_dir() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(format!(
                "folder {} is not in this commit",
                self.opts.path.display()
            ));
        }
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::rename(&tmp, &tree).map_err(|e| e.to_string())?;
        let applied = Applied {
            commit: commit.to_string(),
            signer: signer.to_string(),
            commit_time: time,
            applied_at: now_rfc3339(),
        };
        // Recorded before the swap: a crash in between is repaired by `restore`.
        let record = self.dir.join("applied.json");
        let json = serde_json::to_vec_pretty(&applied).map_err(|e| e.to_string())?;
        std::fs::write(record.with_extension("tmp"), json)
            .and_then(|_| std::fs::rename(record.with_extension("tmp"), &record))
            .map_err(|e| format!("{}: {e}", record.display()))?;
        let previous = std::fs::read_link(self.dir.join("current")).ok();
        swap_symlink(&self.dir.join("current"), &Path::new("trees").join(commit))
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.mirror.set_ref(APPLIED_REF, commit).await {
            tracing::warn!(error = %e, "git: could not record the applied commit in the mirror");
        }
        self.metrics.applied_commit_timestamp.set(time);
        tracing::info!(commit = %commit, signer = %signer, "switched to a new git revision");
        self.update(|s| s.applied = Some(applied));
        // Trees older than the previous one are read by no one (a reload that started
        // before the swap may still be reading the previous one).
        let previous = previous.and_then(|p| p.file_name().map(|n| n.to_owned()));
        if let Ok(entries) = std::fs::read_dir(&trees) {
            for e in entries.flatten() {
                if e.file_name() != *commit && Some(e.file_name()) != previous {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    /// Polls every interval and whenever `now` is notified; asks for a reload after
    /// each switch.
    pub async fn run(mut self, now: Arc<Notify>, reload: mpsc::UnboundedSender<()>) {
        loop {
            if self.sync().await {
                let _ = reload.send(());
            }
            tokio::select! {
                _ = tokio::time::sleep(self.opts.interval) => {}
                _ = now.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_not_shown() {
        assert_eq!(
            redact("https://bot:s3cret@git.example.com/fleet.git"),
            "https://bot:***@git.example.com/fleet.git"
        );
        assert_eq!(redact("git@github.com:o/r.git"), "git@github.com:o/r.git");
        assert_eq!(redact("file:///srv/r.git"), "file:///srv/r.git");
    }
}
