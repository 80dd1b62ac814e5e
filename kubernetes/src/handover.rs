//! Hand-over of a Broker's stores from the old pod to its replacement, when both run
//! on one node and share the volume (a rolling update with a node-local volume):
//!
//! ```text
//!  new pod: opens the stores ──► held (the old pod has them) ──► writes `handover`
//!                                                                    │ (every second,
//!  old pod: sees a fresh request from another pod ◄──────────────────┘  while waiting)
//!           stops accepting, tells clients (DISCONNECT 0x8B, paced), saves sessions,
//!           retained messages and bridge queues, closes the stores, turns not ready
//!  new pod: opens the stores (tried every 100 ms while it waits), starts its
//!           listeners, turns ready ──► the Deployment ends the old pod
//! ```
//!
//! The request is a file on the shared volume: no network path or RBAC between the two
//! pods is needed, and only pods that mount the volume can ask. The stores' own locks
//! (redb's file lock) keep two processes from opening one store whatever happens; the
//! request only says "let go now" instead of at the old pod's SIGTERM.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Name of the request file in the state directory.
pub const REQUEST_FILE: &str = "handover";

/// A request older than this is left over (its pod is gone): never acted on.
pub const FRESH: Duration = Duration::from_secs(3);

/// How often a waiting pod writes its request again (keeping it fresh).
pub const RENEW: Duration = Duration::from_secs(1);

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(REQUEST_FILE)
}

/// Asks whoever holds the stores to hand them to pod `me`.
pub fn request(state_dir: &Path, me: &str) -> std::io::Result<()> {
    let tmp = state_dir.join(format!(".{REQUEST_FILE}.{}", std::process::id()));
    std::fs::write(&tmp, me)?;
    std::fs::rename(&tmp, path(state_dir))
}

/// The pod asking for the stores, if another pod than `me` asked within [`FRESH`] of
/// `now`.
pub fn requested_by(state_dir: &Path, me: &str, now: SystemTime) -> Option<String> {
    let p = path(state_dir);
    let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
    if now.duration_since(modified).unwrap_or_default() > FRESH {
        return None;
    }
    let who = std::fs::read_to_string(&p).ok()?;
    let who = who.trim();
    (!who.is_empty() && who != me).then(|| who.chars().take(253).collect())
}

/// Removes a request (the stores are open here now, or the request was served).
pub fn clear(state_dir: &Path) {
    let _ = std::fs::remove_file(path(state_dir));
}

/// Whether an apply error says another process holds a store.
pub fn store_held(error: &str) -> bool {
    error.contains("Cannot acquire lock")
}

/// This pod's name (the hostname Kubernetes gives it).
pub fn pod_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("edgemq-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_request_from_another_pod_is_seen_and_its_own_or_a_stale_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        assert_eq!(requested_by(dir.path(), "old", now), None);
        request(dir.path(), "new").unwrap();
        assert_eq!(requested_by(dir.path(), "old", now), Some("new".into()));
        assert_eq!(
            requested_by(dir.path(), "new", now),
            None,
            "a pod does not hand over to itself"
        );
        // Left over by a pod that is gone: ignored, so a running broker never stops
        // for it.
        assert_eq!(
            requested_by(dir.path(), "old", now + FRESH + Duration::from_secs(1)),
            None
        );
        clear(dir.path());
        assert_eq!(requested_by(dir.path(), "old", now), None);
    }

    #[test]
    fn a_store_held_by_another_process_is_told_apart_from_other_errors() {
        assert!(store_held(
            "retained store /var/lib/edgemq/brokers/iot_home/retained.redb: Database already open. Cannot acquire lock."
        ));
        assert!(!store_held("listener lan: cannot listen on 0.0.0.0:1883"));
    }
}
