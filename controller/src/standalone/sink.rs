//! The status file sink of standalone mode: each object's typed status (worked out
//! in [`crate::status::kinds`], the same words as on a cluster) as a record of the
//! report, and the report written to `status.json` in the state directory, which
//! `edgemq status` reads (`/status` serves the same report).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::bridge::BridgeRuntimeStatus;
use crate::broker::RuntimeStatus;
use crate::load::{self, Resources};
use crate::status::kinds::{self, reason, BrokerState, UserState};
use crate::status::{ready_condition, ResourceStatus, StatusReport};

/// Name of the status file in the state directory, read by `edgemq status`.
pub const STATUS_FILE: &str = "status.json";

/// Writes `report` to the status file of `state_dir` (owner-only, atomically) unless
/// the file already says it: the report is refreshed every few seconds, and an idle
/// device must not write its flash every few seconds for nothing.
pub(super) fn write(state_dir: &Path, report: &StatusReport) {
    let path = state_dir.join(STATUS_FILE);
    match serde_json::to_vec_pretty(report) {
        Ok(json) => {
            if std::fs::read(&path).is_ok_and(|on_disk| on_disk == json) {
                return;
            }
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

/// What the runtime reports after an apply, by `namespace/name`.
pub(super) struct Running<'a> {
    /// Each Broker's apply: the hash it runs, or why not.
    pub broker_results: &'a BTreeMap<String, Result<String, String>>,
    /// Each Bridge's apply.
    pub bridge_results: &'a BTreeMap<String, Result<(), String>>,
    /// The running brokers.
    pub brokers: &'a BTreeMap<String, RuntimeStatus>,
    /// The running bridges.
    pub bridges: &'a BTreeMap<String, BridgeRuntimeStatus>,
}

/// The records of the Brokers, MqttUsers and Bridges of `res` after an apply, each
/// with the words of [`kinds`]; `held` are the objects with mistakes. Pure.
pub(super) fn runtime_records(
    res: &Resources,
    held: &BTreeMap<load::ObjectKey, load::Held>,
    run: &Running<'_>,
    previous: &BTreeMap<String, crate::api::Condition>,
    now: &str,
) -> Vec<ResourceStatus> {
    let mut resources = Vec::new();
    for b in res.brokers() {
        let key = format!("{}/{}", b.meta.namespace, b.meta.name);
        let st = run.brokers.get(&key);
        let state = match (held.get(&b.meta.key()), run.broker_results.get(&key), st) {
            (Some(h), _, _) => BrokerState::InvalidSpec {
                errors: vec![h.message()],
                running: None,
            },
            (None, Some(Ok(_)), Some(st)) => BrokerState::Running {
                listeners: Some(st.listeners.len()),
            },
            (None, Some(Err(e)), Some(_)) => {
                BrokerState::ApplyFailed(format!("{e}; running the previous configuration"))
            }
            (None, Some(Err(e)), None) => BrokerState::StartFailed(e.clone()),
            _ => BrokerState::Pending,
        };
        let ready = kinds::broker_ready(&state, st.map(|s| s.config_hash.as_str()));
        let details = st
            .map(|st| serde_json::to_value(st).unwrap_or_default())
            .unwrap_or_default();
        resources.push(status_of("Broker", &b.meta, ready, details, previous, now));
    }
    for u in res.users() {
        let broker = &u.object.spec.broker_ref;
        let key = format!("{}/{}", u.meta.namespace, broker);
        let broker_key = (load::Kind::Broker, u.meta.namespace.clone(), broker.clone());
        let state = match (held.get(&u.meta.key()), run.broker_results.get(&key)) {
            (Some(h), _) => UserState::InvalidSpec(h.message()),
            (None, Some(Ok(_))) => UserState::Active,
            (None, Some(Err(_))) => UserState::BrokerNotReady,
            // A Broker left out for its mistakes is not in the effective set.
            (None, None) => match held.get(&broker_key) {
                Some(h) => UserState::BrokerInvalid(h.message()),
                None => UserState::BrokerNotFound,
            },
        };
        resources.push(status_of(
            "MqttUser",
            &u.meta,
            kinds::user_ready(&state, broker),
            serde_json::Value::Null,
            previous,
            now,
        ));
    }
    for br in res.bridges() {
        let key = format!("{}/{}", br.meta.namespace, br.meta.name);
        let (ready, details) = match (
            held.get(&br.meta.key()),
            run.bridge_results.get(&key),
            run.bridges.get(&key),
        ) {
            (Some(h), _, _) => ((false, reason::INVALID_SPEC, h.message()), Value::Null),
            (None, Some(Ok(())), Some(st)) => (
                kinds::bridge_ready(st),
                serde_json::to_value(st).unwrap_or_default(),
            ),
            (None, Some(Err(e)), _) => ((false, reason::CONFIG_ERROR, e.clone()), Value::Null),
            _ => (
                (false, reason::PENDING, "not started yet".to_string()),
                Value::Null,
            ),
        };
        resources.push(status_of("Bridge", &br.meta, ready, details, previous, now));
    }
    resources
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_status_file_is_written_only_when_what_it_says_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATUS_FILE);
        let inode = || std::fs::metadata(&path).unwrap().ino();
        let mut report = StatusReport::default();
        write(dir.path(), &report);
        let first = inode();
        write(dir.path(), &report);
        assert_eq!(inode(), first, "the same report: the file is left as it is");
        report.config.valid = !report.config.valid;
        write(dir.path(), &report);
        assert_ne!(inode(), first, "a new report replaces the file");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["config"]["valid"], report.config.valid);
        std::fs::remove_file(&path).unwrap();
        write(dir.path(), &report);
        assert!(path.exists(), "a removed file is written again");
    }
}
