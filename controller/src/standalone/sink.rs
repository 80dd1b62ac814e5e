//! The status file sink of standalone mode: each object's typed status (worked out
//! in [`crate::status::kinds`], the same words as on a cluster) as a record of the
//! report, and the report written to `status.json` in the state directory, which
//! `edgemq status` reads (`/status` serves the same report).

use std::collections::BTreeMap;
use std::path::Path;

use crate::load;
use crate::status::kinds::{self, reason};
use crate::status::{ready_condition, ResourceStatus, StatusReport};

/// Name of the status file in the state directory, read by `edgemq status`.
pub const STATUS_FILE: &str = "status.json";

/// Writes `report` to the status file of `state_dir` (owner-only, atomically).
pub(super) fn write(state_dir: &Path, report: &StatusReport) {
    let path = state_dir.join(STATUS_FILE);
    match serde_json::to_vec_pretty(report) {
        Ok(json) => {
            if let Err(e) = crate::private_fs::write(&path, &json) {
                tracing::warn!(path = %path.display(), error = %e, "could not write the status file");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not encode the status"),
    }
}

/// The status of every object left out because of its mistakes (it never had a good
/// version): not in the effective set, so not reported with the others.
pub(super) fn left_out(
    held: &BTreeMap<load::ObjectKey, load::Held>,
    previous: &BTreeMap<String, crate::api::Condition>,
    now: &str,
) -> Vec<ResourceStatus> {
    held.iter()
        .filter(|(k, h)| !h.kept && k.0 != load::Kind::Secret)
        .map(|((kind, ns, name), h)| {
            let mut obj = load::ObjectRef::new(*kind, ns, name);
            obj.location = h.errors.iter().find_map(|e| e.location.clone());
            status_of(
                kind.as_str(),
                &obj,
                (false, reason::INVALID_SPEC, h.message()),
                serde_json::Value::Null,
                previous,
                now,
            )
        })
        .collect()
}

/// The status file sink's record of one object.
pub(super) fn status_of(
    kind: &str,
    obj: &load::ObjectRef,
    ready: kinds::Ready,
    details: serde_json::Value,
    previous: &BTreeMap<String, crate::api::Condition>,
    now: &str,
) -> ResourceStatus {
    let key = format!("{kind}/{}/{}", obj.namespace, obj.name);
    let cond = ready_condition(
        ready.0,
        ready.1,
        &ready.2,
        obj.generation,
        previous.get(&key),
        now,
    );
    ResourceStatus {
        kind: kind.into(),
        namespace: obj.namespace.clone(),
        name: obj.name.clone(),
        origin: obj.location.as_ref().map(|l| l.to_string()),
        observed_generation: obj.generation,
        conditions: vec![cond],
        details,
    }
}
