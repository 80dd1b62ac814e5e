//! The state directory is the owner's only: folders 0700 and files 0600, set
//! explicitly whatever the umask, and put right at start for a directory that already
//! exists (a state directory written by an older edgemq, or created by hand).
//!
//! It holds retained messages, persistent sessions, bridge queues (message payloads),
//! `status.json` and certificate keys: nothing another local user should read.

use std::io::Write;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

/// Mode of folders in the state directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of files in the state directory.
pub const FILE_MODE: u32 = 0o600;

/// Creates folder `path` and its missing parents with mode 0700, and sets 0700 on
/// `path` itself if it existed.
pub fn create_dir(path: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    b.mode(DIR_MODE);
    b.create(path)?;
    set_mode(path, DIR_MODE)
}

/// Creates file `path` (and its folder) with mode 0600 if it does not exist, and sets
/// 0600 if it does; its content is left alone. Call before handing the path to a
/// store that creates the file itself.
pub fn create_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(false);
    #[cfg(unix)]
    o.mode(FILE_MODE);
    o.open(path)?;
    set_mode(path, FILE_MODE)
}

/// Writes `data` to `path` atomically (a 0600 temporary file renamed over it).
pub fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(FILE_MODE);
    let mut f = o.open(&tmp)?;
    // An existing temporary file keeps its mode through `open`.
    set_mode(&tmp, FILE_MODE)?;
    f.write_all(data)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Prepares the state directory at start: creates it (0700) and sets every folder in
/// it to 0700 and every file to 0600. Symbolic links are not followed. A path whose
/// mode cannot be changed (owned by someone else, as the root of a mounted volume can
/// be) is logged and skipped. Returns how many modes were changed.
pub fn prepare_state_dir(root: &Path) -> std::io::Result<usize> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    b.mode(DIR_MODE);
    b.create(root)?;
    let mut changed = 0;
    match std::fs::metadata(root) {
        #[cfg(unix)]
        Ok(meta) if meta.permissions().mode() & 0o7777 == DIR_MODE => {}
        _ => match set_mode(root, DIR_MODE) {
            Ok(()) => changed += 1,
            Err(e) => {
                tracing::warn!(path = %root.display(), error = %e, "state directory: cannot make this private to its owner")
            }
        },
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "state directory: cannot read this folder");
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let mode = if meta.is_dir() {
                stack.push(path.clone());
                DIR_MODE
            } else if meta.is_file() {
                FILE_MODE
            } else {
                continue;
            };
            #[cfg(unix)]
            if meta.permissions().mode() & 0o7777 == mode {
                continue;
            }
            match set_mode(&path, mode) {
                Ok(()) => changed += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "state directory: cannot make this private to its owner")
                }
            }
        }
    }
    if changed > 0 {
        tracing::info!(path = %root.display(), changed, "state directory: made folders 0700 and files 0600");
    }
    Ok(changed)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_existing_open_state_directory_is_made_private_to_its_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let sub = root.join("bridges");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(root.join("status.json"), "{}").unwrap();
        std::fs::write(sub.join("queue.redb"), "x").unwrap();
        for (p, m) in [
            (&root, 0o755),
            (&sub, 0o775),
            (&root.join("status.json"), 0o644),
            (&sub.join("queue.redb"), 0o666),
        ] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "not ours").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

        assert_eq!(prepare_state_dir(&root).unwrap(), 4);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&root.join("status.json")), 0o600);
        assert_eq!(mode(&sub.join("queue.redb")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a symbolic link was followed");
        assert_eq!(prepare_state_dir(&root).unwrap(), 0);
    }

    #[test]
    fn files_and_folders_are_created_private_whatever_the_umask_lets_through() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a/b/retained.redb");
        create_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        let status = tmp.path().join("status.json");
        std::fs::write(&status, "old").unwrap();
        std::fs::set_permissions(&status, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&status, b"new").unwrap();
        assert_eq!(mode(&status), 0o600);
        assert_eq!(std::fs::read(&status).unwrap(), b"new");
    }
}
