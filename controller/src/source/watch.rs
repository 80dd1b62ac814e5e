//! Watching the configuration folders, including paths that change atomically.
//!
//! A kernel watch (inotify) is attached to a directory, not to a path: when
//! `--config /srv/mqtt/current` is a symlink replaced by `ln -s new tmp && mv -T tmp
//! current`, or a parent directory is swapped, the watch stays on the old directory and
//! sees nothing. So each root is watched three ways:
//!
//! - the directory the path resolves to, recursively (edits, renames, git checkouts);
//! - the directory holding the path itself, for events on that one name (the swap of
//!   the symlink or of the folder), so the common swap is seen at once;
//! - a periodic [`FolderWatch::refresh`] that resolves the path again and compares the
//!   directory it reaches (device and inode) with the one watched: a swap anywhere
//!   above is seen within the check interval.
//!
//! Whenever a root leads to another directory, its watch moves there and a reload is
//! asked for.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// The directory a path leads to now: its canonical path and identity.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Resolved {
    canonical: PathBuf,
    dev: u64,
    ino: u64,
}

fn resolve(path: &Path) -> Option<Resolved> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&canonical).ok()?;
    meta.is_dir().then(|| Resolved {
        canonical,
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

struct Root {
    /// The path as given (may hold symlinks).
    path: PathBuf,
    /// What is watched recursively now.
    watched: Option<Resolved>,
    /// The directory holding `path`, watched for events on `path`'s name.
    parent: Option<PathBuf>,
}

/// Which events ask for a reload: anything under a watched directory, or an event on
/// the name of a root inside its parent.
#[derive(Default)]
struct Filter {
    trees: Vec<PathBuf>,
    names: Vec<PathBuf>,
}

impl Filter {
    fn wants(&self, ev: &notify::Event) -> bool {
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return false;
        }
        // Events without paths (a queue overflow) are a reason to look again.
        ev.paths.is_empty()
            || ev.paths.iter().any(|p| {
                self.trees.iter().any(|t| p.starts_with(t)) || self.names.iter().any(|n| p == n)
            })
    }
}

/// The watches of the configuration (and secrets) folders.
pub struct FolderWatch {
    watcher: notify::RecommendedWatcher,
    roots: Vec<Root>,
    filter: Arc<RwLock<Filter>>,
}

impl FolderWatch {
    /// Watches every root; each relevant event sends `()` on `tx`.
    pub fn new(roots: &[PathBuf], tx: mpsc::UnboundedSender<()>) -> notify::Result<FolderWatch> {
        let filter = Arc::new(RwLock::new(Filter::default()));
        let f = filter.clone();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let wanted = match &ev {
                Ok(ev) => f.read().map(|f| f.wants(ev)).unwrap_or(true),
                Err(_) => true,
            };
            if wanted {
                let _ = tx.send(());
            }
        })?;
        let mut w = FolderWatch {
            watcher,
            roots: roots
                .iter()
                .map(|p| Root {
                    path: p.clone(),
                    watched: None,
                    parent: None,
                })
                .collect(),
            filter,
        };
        for i in 0..w.roots.len() {
            w.watch_parent(i);
            if !w.rewatch(i)? {
                return Err(notify::Error::path_not_found().add_path(w.roots[i].path.clone()));
            }
        }
        w.update_filter();
        Ok(w)
    }

    fn watch_parent(&mut self, i: usize) {
        let root = &mut self.roots[i];
        let Some(parent) = root.path.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return;
        };
        let Ok(parent) = std::fs::canonicalize(parent) else {
            return;
        };
        if root.parent.as_ref() == Some(&parent) {
            return;
        }
        if let Some(old) = root.parent.take() {
            let _ = self.watcher.unwatch(&old);
        }
        match self.watcher.watch(&parent, RecursiveMode::NonRecursive) {
            Ok(()) => root.parent = Some(parent),
            Err(e) => {
                tracing::debug!(path = %parent.display(), error = %e, "cannot watch the parent folder")
            }
        }
    }

    /// Watches what root `i` leads to now, if that changed. Ok(false): the path leads
    /// to no directory (it stays unwatched until it does).
    fn rewatch(&mut self, i: usize) -> notify::Result<bool> {
        let now = resolve(&self.roots[i].path);
        if now == self.roots[i].watched {
            return Ok(now.is_some());
        }
        if let Some(old) = self.roots[i].watched.take() {
            // The old directory may be gone already; its watch then went with it.
            let _ = self.watcher.unwatch(&old.canonical);
        }
        let Some(now) = now else {
            return Ok(false);
        };
        self.watcher
            .watch(&now.canonical, RecursiveMode::Recursive)?;
        tracing::info!(
            path = %self.roots[i].path.display(),
            target = %now.canonical.display(),
            "watching the configuration folder"
        );
        self.roots[i].watched = Some(now);
        Ok(true)
    }

    fn update_filter(&self) {
        let f = Filter {
            trees: self
                .roots
                .iter()
                .filter_map(|r| r.watched.as_ref().map(|w| w.canonical.clone()))
                .collect(),
            names: self
                .roots
                .iter()
                .filter_map(|r| Some(r.parent.as_ref()?.join(r.path.file_name()?)))
                .collect(),
        };
        if let Ok(mut w) = self.filter.write() {
            *w = f;
        }
    }

    /// Resolves every root again; moves the watch of a root that now leads to another
    /// directory. True when one did (the folder must be read again).
    pub fn refresh(&mut self) -> bool {
        let mut moved = false;
        for i in 0..self.roots.len() {
            self.watch_parent(i);
            let before = self.roots[i].watched.clone();
            if let Err(e) = self.rewatch(i) {
                tracing::warn!(path = %self.roots[i].path.display(), error = %e, "cannot watch the configuration folder");
            }
            moved |= before != self.roots[i].watched;
        }
        if moved {
            self.update_filter();
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swap_symlink(link: &Path, target: &Path) {
        let tmp = link.with_extension("tmp");
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, link).unwrap();
    }

    #[test]
    fn a_swapped_symlink_moves_the_watch_and_asks_for_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let current = dir.path().join("current");
        swap_symlink(&current, &a);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut w = FolderWatch::new(std::slice::from_ref(&current), tx).unwrap();
        assert!(!w.refresh(), "nothing moved yet");
        swap_symlink(&current, &b);
        assert!(w.refresh(), "the swap is seen by resolving the path again");
        assert_eq!(
            w.roots[0].watched.as_ref().unwrap().canonical,
            std::fs::canonicalize(&b).unwrap()
        );
        // An edit inside the new target is an event.
        while rx.try_recv().is_ok() {}
        std::fs::write(b.join("x.yaml"), "a: 1\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if rx.try_recv().is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no event from the new target"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn a_directory_replaced_under_the_same_name_is_a_new_target() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut w = FolderWatch::new(std::slice::from_ref(&conf), tx).unwrap();
        std::fs::rename(&conf, dir.path().join("old")).unwrap();
        std::fs::create_dir(&conf).unwrap();
        assert!(w.refresh(), "same path, another directory");
    }

    #[test]
    fn only_events_on_the_roots_name_count_in_its_parent() {
        let f = Filter {
            trees: vec![PathBuf::from("/srv/a")],
            names: vec![PathBuf::from("/srv/current")],
        };
        let ev = |p: &str| {
            notify::Event::new(notify::EventKind::Create(notify::event::CreateKind::Any))
                .add_path(PathBuf::from(p))
        };
        assert!(f.wants(&ev("/srv/current")));
        assert!(f.wants(&ev("/srv/a/users.yaml")));
        assert!(!f.wants(&ev("/srv/unrelated.log")));
    }
}
